"""The DeepSpeed JSON: batch sizes derived from the config, contradictions refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.errors import UserError
from pipeline.config.schema import Config
from pipeline.run.ds_config import SHIPPED, engine_settings, find_ds_config, split_batch

REPO = Path(__file__).resolve().parent.parent


def test_split_batch_derives_micro_and_accumulation() -> None:
    assert split_batch(4096, 8, 0, 32) == (32, 16)  # largest micro <= 32 dividing 512
    assert split_batch(48, 2, 0, 32) == (24, 1)
    assert split_batch(48, 2, 8, 32) == (8, 3)
    assert split_batch(7, 1, 0, 4) == (1, 7)  # 7 is prime: micro 1
    with pytest.raises(UserError, match="not divisible by the world size 4"):
        split_batch(6, 4, 0, 32)
    with pytest.raises(UserError, match=r"--micro-batch-size in \[1, 3\]"):
        split_batch(6, 2, 2, 32)


def _cfg(ds: dict | Path, tmp_path: Path, **train: int) -> Config:  # type: ignore[type-arg]
    cfg = Config()
    if isinstance(ds, dict):
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds))
        ds = path
    cfg.train.ds_config = str(ds)
    cfg.train.global_batch_size = 64
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_settings_fill_the_json_from_the_config(tmp_path: Path) -> None:
    es = engine_settings(_cfg(REPO / "ds_configs" / "zero2_bf16.json", tmp_path), 2, "cpu")
    assert (es.micro_batch, es.grad_accum, es.precision) == (32, 1, "bf16")
    assert es.config["train_batch_size"] == 64 and es.config["gradient_clipping"] == 5.0
    fp16 = engine_settings(_cfg(REPO / "ds_configs" / "zero2_fp16.json", tmp_path), 1, "cuda")
    assert fp16.precision == "fp16" and fp16.grad_accum == 2


@pytest.mark.parametrize(
    ("ds", "device", "needles"),
    [
        ({"train_batch_size": 32}, "cpu", ["train_batch_size is 32", "64", "--global-batch-size"]),
        ({"gradient_clipping": 1.0}, "cpu", ["gradient_clipping", "--optim.grad_clip"]),
        ({"optimizer": {"type": "Adam"}}, "cpu", ["remove the 'optimizer' section"]),
        ({"scheduler": {"type": "WarmupLR"}}, "cpu", ["'scheduler'"]),
        ({"zero_optimization": {"stage": 3}}, "cpu", ["stage 3 is not supported"]),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "cuda", ["both enabled"]),
        ({"fp16": {"enabled": True}}, "cpu", ["fp16", "CPU", "zero2_bf16.json"]),
    ],
)
def test_contradictions_are_refused(
    ds: dict,
    device: str,
    needles: list[str],
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    with pytest.raises(UserError) as exc:
        engine_settings(_cfg(ds, tmp_path), 2, device)
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)


def test_unreadable_json_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ds.json"
    bad.write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        engine_settings(_cfg(bad, tmp_path), 1, "cpu")
    with pytest.raises(UserError, match="DeepSpeed config not found"):
        engine_settings(_cfg(tmp_path / "missing.json", tmp_path), 1, "cpu")


def test_bf16_reduces_and_accumulates_gradients_in_fp32_and_saves_without_tag_collectives(
    tmp_path: Path,
) -> None:
    """bf16 sums of up to 16 micro-batches over 16-64 ranks lose the low bits of small gradients;
    DeepSpeed reduces in the parameters' dtype unless told otherwise. And DeepSpeed's check of
    the checkpoint tag is a pair of collectives a rank with a full disk would leave unmatched."""
    es = engine_settings(_cfg(REPO / "ds_configs" / "zero2_bf16.json", tmp_path), 2, "cpu")
    assert es.precision == "bf16"
    assert es.config["communication_data_type"] == "fp32"
    assert es.config["data_types"]["grad_accum_dtype"] == "fp32"
    assert es.config["checkpoint"]["tag_validation"] == "Ignore"
    import torch
    from deepspeed.runtime.config import get_communication_data_type

    assert get_communication_data_type(es.config) == torch.float32  # DeepSpeed's own reading


def test_shipped_configs_are_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a job started from its own folder, not the repository
    expected = SHIPPED / "zero2_bf16.json"
    for spec in ("ds_configs/zero2_bf16.json", "zero2_bf16", "zero2_bf16.json"):
        assert find_ds_config(spec) == expected
    own = tmp_path / "ds_configs" / "zero2_bf16.json"  # a file of that path here wins
    own.parent.mkdir()
    own.write_text("{}")
    assert find_ds_config("ds_configs/zero2_bf16.json") == Path("ds_configs/zero2_bf16.json")
    with pytest.raises(UserError, match=r"zero3\.json: DeepSpeed config not found.*zero2_fp16"):
        find_ds_config("zero3.json")
    with pytest.raises(UserError, match="not found"):
        find_ds_config("elsewhere/zero2_bf16.json")  # another folder is not searched
