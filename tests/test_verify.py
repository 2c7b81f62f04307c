"""Tests of data_prep.verify: clean data passes, each kind of damage is caught and named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from data_prep import verify


@pytest.fixture
def data(small_data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the small data dir, free to damage."""
    out = tmp_path / "data"
    shutil.copytree(small_data_dir, out)
    return out


def run(data_dir: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, list[str]]:
    """(exit status, stdout lines) of ``python -m data_prep.verify``, run in process."""
    try:
        verify.main([str(data_dir), *flags])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out.splitlines()


def first_shard(data_dir: Path, split: str = "train") -> Path:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    return data_dir / manifest["splits"][split]["shards"][0]["path"]


def edit_manifest(data_dir: Path, change: Any) -> None:
    path = data_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_clean_data_passes(small_data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flags in ((), ("--quick",)):
        code, out = run(small_data_dir, capsys, *flags)
        assert code == 0, out
        assert len(out) == 1 and out[0].startswith(f"verify: {small_data_dir} is OK: ")
        manifest = json.loads((small_data_dir / "manifest.json").read_text())
        n = sum(len(manifest["splits"][s]["shards"]) for s in ("train", "valid"))
        seqs = sum(manifest["splits"][s]["num_sequences"] for s in ("train", "valid"))
        assert f"{n} shard(s), {seqs:,} sequences" in out[0]


def test_exit_codes_of_the_command(data: Path, prep: Any) -> None:
    proc = prep.cli("data_prep.verify", data)
    assert proc.returncode == 0 and "is OK" in proc.stdout
    bin_file = Path(f"{first_shard(data)}.bin")
    raw = bytearray(bin_file.read_bytes())
    raw[-3] ^= 0x01
    bin_file.write_bytes(bytes(raw))
    proc = prep.cli("data_prep.verify", data)
    assert proc.returncode == 1 and str(bin_file) in proc.stdout and "Traceback" not in proc.stderr
    proc = prep.cli("data_prep.verify", data / "nothing")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"data_prep.verify: error: {data / 'nothing'}: no such data folder; "
        "build it with python -m data_prep.build_shards"
    ]


def test_flipped_byte_in_a_bin_is_caught(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bin_file = Path(f"{first_shard(data)}.bin")
    raw = bytearray(bin_file.read_bytes())
    raw[1001] ^= 0x01  # a token id one off: still inside the vocabulary
    bin_file.write_bytes(bytes(raw))
    code, out = run(data, capsys)
    assert code == 1
    sha = [line for line in out if line.startswith(f"{bin_file}: sha256 ")]
    assert len(sha) == 1 and "parts/unit-00000.json" in sha[0]
    assert out[-1].startswith(f"verify: 1 problem(s) in {data}")
    # without the checksums, the token counts still give it away
    code, out = run(data, capsys, "--quick")
    assert code == 1 and any("token_counts disagrees with the train shards" in x for x in out)


def test_truncated_idx_is_caught(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idx_file = Path(f"{first_shard(data, 'valid')}.idx")
    idx_file.write_bytes(idx_file.read_bytes()[:-5])
    code, out = run(data, capsys, "--quick")
    assert code == 1
    assert out[0].startswith(f"{idx_file}: index truncated")
    assert out[-1].startswith("verify: 1 problem(s)")


def test_empty_idx_and_missing_bin_are_caught(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idx_file = Path(f"{first_shard(data)}.idx")
    idx_file.write_bytes(b"")
    bin_file = Path(f"{first_shard(data, 'valid')}.bin")
    bin_file.unlink()
    code, out = run(data, capsys, "--quick")
    assert code == 1
    assert any(line.startswith(f"{idx_file}: not a Megatron MMIDIDX index") for line in out)
    assert any(line.startswith(f"{bin_file}: missing") for line in out)


def test_truncated_bin_is_caught(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bin_file = Path(f"{first_shard(data)}.bin")
    bin_file.write_bytes(bin_file.read_bytes()[:-2])
    code, out = run(data, capsys, "--quick")
    assert code == 1 and out[0].startswith(f"{bin_file}: ") and "truncated" in out[0]


def test_manifest_inconsistencies_are_caught(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["splits"]["train"]["num_tokens"] += 1
        m["splits"]["valid"]["shards"][0]["num_sequences"] += 1
        m["token_counts"] = m["token_counts"][:-1]

    edit_manifest(data, change)
    code, out = run(data, capsys, "--quick")
    assert code == 1
    text = "\n".join(out)
    assert "splits.train.num_tokens is" in text
    assert "splits.valid.num_sequences is" in text  # the shard no longer adds up
    assert "sequences, the manifest says" in text
    assert "token_counts has 3999 entries, expected vocab_size 4000" in text


def test_wrong_special_ids_and_seq_len_are_caught(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["special_ids"]["cls"], m["special_ids"]["sep"] = (
            m["special_ids"]["sep"],
            m["special_ids"]["cls"],
        )
        m["seq_len"] = 32

    edit_manifest(data, change)
    code, out = run(data, capsys, "--quick")
    assert code == 1
    text = "\n".join(out)
    assert "do not start with [CLS]" in text and "do not end with [SEP]" in text
    assert "longer than seq_len 32" in text


def test_token_ids_past_the_vocabulary_are_caught(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_manifest(data, lambda m: m.update(vocab_size=100, token_counts=[0] * 100))
    code, out = run(data, capsys, "--quick")
    assert code == 1 and any("outside the vocabulary 0..99" in line for line in out)


def test_strays_are_warnings(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data / "train" / "99999-000.bin").write_bytes(b"")
    (data / "train" / ".00000-001.bin.tmp-4242").write_bytes(b"x")
    code, out = run(data, capsys, "--quick")
    assert code == 0
    assert sum(line.startswith("warning: ") for line in out) == 2
    assert f"{data} is OK, 2 warning(s): " in out[-1]


def test_the_advice_works(
    data: Path,
    small_corpus: list[Path],
    wordpiece_tokenizer: Path,
    prep: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Deleting the unit marker a problem names and rerunning build_shards repairs the data."""
    bin_file = Path(f"{first_shard(data)}.bin")
    bin_file.write_bytes(b"\x00" * bin_file.stat().st_size)
    code, out = run(data, capsys)
    assert code == 1
    marker = data / "parts" / "unit-00000.json"
    assert f"delete {marker} and rerun build_shards" in out[0]
    marker.unlink()
    prep.build(
        "--input", *small_corpus, "--tokenizer", wordpiece_tokenizer, "--seq-len", "64",
        "--output", data, "--workers", "1", "--valid-fraction", "0.05", "--unit-max-files", "1",
    )  # fmt: skip
    capsys.readouterr()
    assert run(data, capsys)[0] == 0
