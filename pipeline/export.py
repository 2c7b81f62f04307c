"""Export a run's checkpoint as a complete Hugging Face model folder.

    python -m pipeline.export --run RUN_DIR [--step N] --out HF_DIR

The fp32 weights are gathered from the ZeRO checkpoint with DeepSpeed's ``zero_to_fp32``; the
model config and tokenizer come from ``RUN_DIR/model/``, written when the run started. HF_DIR holds
what a user of ``transformers`` expects: ``config.json`` and ``model.safetensors``
(``AutoModelForMaskedLM``), a tokenizer fitted to the model (``AutoTokenizer``; its outputs are
exactly the model's inputs, so ``model(**tokenizer(text, return_tensors="pt"))`` works; a
SentencePiece run's ``.model`` is converted and kept beside it) and a model card (``README.md``:
teacher, data, recipe, steps and the run's last validation figures). The folder is built beside
HF_DIR and renamed into place when complete. Teacher pretraining (MLM-only runs) exports the same
way, so its output can teach the next run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_dir
from data_prep.errors import UserError, cli_main
from data_prep.tokenizer import TextTokenizer, bert_tokenizer_from_vocab, has_tokenizer_files
from pipeline import checkpoint as ckpt_mod
from pipeline.config import RunPaths
from pipeline.model_card import model_card
from pipeline.objective import student_weights

MODEL_DIR = "model"


def save_run_model_files(
    run_dir: Path, student: Any, manifest: dict[str, Any], paths: RunPaths
) -> None:
    """RUN_DIR/model: the student's config.json and the tokenizer, for export and evaluation."""
    out = run_dir / MODEL_DIR
    out.mkdir(parents=True, exist_ok=True)
    student.config.save_pretrained(str(out))
    write_tokenizer(tokenizer_source(manifest, paths.teacher), out, student.model)


def tokenizer_source(manifest: dict[str, Any], teacher: str | None) -> Path:
    """Where the run's tokenizer is: the data's SentencePiece model (or the teacher's copy of it),
    else the teacher's tokenizer folder, else the folder the data was tokenized with."""
    data_tok = Path(manifest["tokenizer"]["path"])
    candidates = []
    if manifest["tokenizer"].get("kind") == "sentencepiece":
        candidates += [data_tok, *([Path(teacher) / data_tok.name] if teacher else [])]
    if teacher and has_tokenizer_files(teacher):
        candidates.append(Path(teacher))
    candidates.append(data_tok)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise UserError(
        f"no tokenizer to save with the run: {data_tok} (the data's tokenizer) is gone and the "
        "teacher carries none; put the tokenizer back where the data was built with it"
    )


def model_input_names(model: Any, names: list[str]) -> list[str]:
    """The tokenizer outputs that ``model.forward`` takes: no ``token_type_ids`` for a DistilBERT
    student (transformers 4.x rejects them), whatever the teacher's tokenizer returned."""
    accepted = inspect.signature(model.forward).parameters
    return [n for n in names if n in accepted]


def write_tokenizer(source: Path, out: Path, model: Any) -> None:
    """The tokenizer of ``source`` (an HF folder or a SentencePiece ``.model``) saved into ``out``
    as a Hugging Face tokenizer fitted to ``model``: its inputs and its maximum length.

    A SentencePiece model is converted (:mod:`data_prep.spm_hf`) and also copied beside it, so
    checks against data made with it compare the very file.
    """
    from transformers import AutoTokenizer

    fitted: dict[str, Any] = {}
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        fitted["model_max_length"] = int(positions)
    if source.is_file():
        from data_prep.spm_hf import sentencepiece_to_hf

        text_tok = TextTokenizer(source)
        ids = text_tok.special_ids
        special = {
            f"{name}_token": text_tok.piece(getattr(ids, name))
            for name in ("cls", "sep", "pad", "mask", "unk")
        }
        names = model_input_names(model, ["input_ids", "token_type_ids", "attention_mask"])
        tok = sentencepiece_to_hf(source, special, names)
        tok.model_max_length = fitted.get("model_max_length", tok.model_max_length)
        tok.init_kwargs.update(fitted)
        tok.save_pretrained(str(out))
        if source.resolve() != (out / source.name).resolve():
            shutil.copy2(source, out / source.name)
        return
    try:
        names = model_input_names(
            model, list(AutoTokenizer.from_pretrained(str(source)).model_input_names)
        )
        tok = AutoTokenizer.from_pretrained(str(source), model_input_names=names, **fitted)
    except Exception:  # a bare vocab.txt (see bert_tokenizer_from_vocab)
        names = model_input_names(model, ["input_ids", "token_type_ids", "attention_mask"])
        tok = bert_tokenizer_from_vocab(source / "vocab.txt", model_input_names=names, **fitted)
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


def run_tokenizer(run_dir: Path) -> Path:
    """The tokenizer saved with a run: its SentencePiece model if it has one, else the folder."""
    folder = run_dir / MODEL_DIR
    spm_models = sorted(folder.glob("*.model"))
    if spm_models:
        return spm_models[0]
    if not has_tokenizer_files(folder):
        raise UserError(f"{folder}: no tokenizer saved with the run; nothing to export it with")
    return folder


def export(run_dir: Path, step: int | None, out: Path) -> Path:
    model, ckpt = load_run_model(run_dir, step)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        write_tokenizer(run_tokenizer(run_dir), tmp, model)
        card = model_card(run_dir, model, ckpt.step, ckpt.commit, str(out))
        (tmp / "README.md").write_text(card, encoding="utf-8")
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
