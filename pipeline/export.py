"""Export a run's checkpoint as a Hugging Face folder that ``AutoModelForMaskedLM`` loads.

    python -m pipeline.export --run RUN_DIR [--step N] --out HF_DIR

The fp32 weights are gathered from the ZeRO checkpoint with DeepSpeed's ``zero_to_fp32``; the
model config and tokenizer come from ``RUN_DIR/model/``, written when the run started. The
folder is built beside HF_DIR and renamed into place when complete. Teacher pretraining (MLM-only
runs) exports the same way, so its output can teach the next run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_dir
from data_prep.errors import UserError, cli_main
from data_prep.tokenizer import has_tokenizer_files
from pipeline import checkpoint as ckpt_mod
from pipeline.config import RunPaths
from pipeline.objective import student_weights

MODEL_DIR = "model"


def save_run_model_files(
    run_dir: Path, student: Any, manifest: dict[str, Any], paths: RunPaths
) -> None:
    """RUN_DIR/model: the student's config.json and the tokenizer, for export and evaluation."""
    out = run_dir / MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    student.config.save_pretrained(str(out))
    tok_path = Path(manifest["tokenizer"]["path"])
    source = Path(paths.teacher) if paths.teacher else tok_path
    _save_tokenizer(source if source.is_dir() and has_tokenizer_files(source) else tok_path, out)


def _save_tokenizer(source: Path, out: Path) -> None:
    if source.is_file():  # a SentencePiece model: keep it beside the weights
        shutil.copy2(source, out / source.name)
        return
    from transformers import AutoTokenizer

    from data_prep.tokenizer import bert_tokenizer_from_vocab

    try:
        tok = AutoTokenizer.from_pretrained(str(source))
    except Exception:
        tok = bert_tokenizer_from_vocab(source / "vocab.txt")
    tok.save_pretrained(str(out))


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


def export(run_dir: Path, step: int | None, out: Path) -> Path:
    model, ckpt = load_run_model(run_dir, step)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for f in (run_dir / MODEL_DIR).iterdir():
            if f.name != "config.json" and f.is_file():
                shutil.copy2(f, tmp / f.name)
        record = {"run": str(run_dir), "checkpoint": ckpt.tag, "step": ckpt.step}
        (tmp / "distil_export.json").write_text(json.dumps(record, indent=1))
    return out


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.export", description=__doc__.split("\n")[0]
    )
    p.add_argument("--run", required=True, help="RUN_DIR of pipeline.train")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest complete one)")
    p.add_argument("--out", required=True, help="HF_DIR to write")
    args = p.parse_args(argv)
    path = export(Path(args.run), args.step, Path(args.out))
    print(f"exported {args.run} to {path}")


if __name__ == "__main__":
    main()
