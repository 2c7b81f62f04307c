"""A trained model as a Hugging Face masked LM: from a run's ZeRO checkpoint, or from a folder.

:func:`load_run_model` gathers the fp32 weights of a run's checkpoint with DeepSpeed's
``zero_to_fp32`` into the model ``RUN_DIR/model/config.json`` describes; :func:`load_model` takes
a run folder, a Hugging Face folder or a hub ID alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.errors import UserError
from data_prep.hub import resolve
from pipeline.checkpoint import store as ckpt_mod
from pipeline.model.objective import student_weights
from pipeline.publish.run_files import MODEL_DIR


def find_checkpoint(run_dir: Path, step: int | None) -> ckpt_mod.CheckpointInfo:
    if not (run_dir / MODEL_DIR / "config.json").is_file():
        raise UserError(
            f"{run_dir}: not a run folder of pipeline.train (no {MODEL_DIR}/config.json)"
        )
    if step is not None:
        return ckpt_mod.read_checkpoint(ckpt_mod.checkpoint_root(run_dir) / ckpt_mod.tag_for(step))
    found = ckpt_mod.find_resume(run_dir, "auto")
    if found is None:
        raise UserError(f"{run_dir}: no complete checkpoint to export; train first")
    return found


def load_run_model(run_dir: Path, step: int | None = None) -> tuple[Any, ckpt_mod.CheckpointInfo]:
    """The trained model of a run as a Hugging Face masked LM (fp32, CPU), and its checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForMaskedLM

    ckpt = find_checkpoint(run_dir, step)
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.path.parent), tag=ckpt.tag)
    weights = student_weights(state)
    config = AutoConfig.from_pretrained(str(run_dir / MODEL_DIR))
    model = AutoModelForMaskedLM.from_config(config)
    result = model.load_state_dict(weights, strict=False)
    missing = [
        k
        for k in result.missing_keys
        if not k.endswith(("vocab_projector.weight", "decoder.weight", "position_ids"))
    ]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{ckpt.path}: weights do not match the model config "
            f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]})"
        )
    model.tie_weights()
    return model, ckpt


def load_model(spec: str) -> tuple[Any, Path | None, Path | None]:
    """A Hugging Face masked LM from a run folder, an HF folder or a hub ID; and its run folder or
    its HF folder (whichever it came from)."""
    from transformers import AutoModelForMaskedLM

    path = Path(spec)
    if (path / "checkpoints").is_dir() and (path / "model").is_dir():
        model, _ = load_run_model(path)
        return model, path, None
    path = resolve(spec, "--model")
    if not (path / "config.json").is_file():
        raise UserError(
            f"--model {spec}: neither a Hugging Face model folder (or hub ID) nor a run folder"
        )
    return AutoModelForMaskedLM.from_pretrained(str(path)), None, path
