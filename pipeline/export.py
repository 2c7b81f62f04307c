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
from pathlib import Path

from data_prep.errors import cli_main
from pipeline.publish.folder import export


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.export", description=__doc__.split("\n")[0]
    )
    p.add_argument("--run", required=True, help="RUN_DIR of pipeline.train")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest complete one)")
    p.add_argument("--out", required=True, help="HF_DIR to write (absent or empty)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in --out (nothing else is ever replaced)",
    )
    args = p.parse_args(argv)
    path = export(Path(args.run), args.step, Path(args.out), args.overwrite)
    print(f"exported {args.run} to {path}")


if __name__ == "__main__":
    main()
