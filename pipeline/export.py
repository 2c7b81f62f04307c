"""Export a run's checkpoint as a complete Hugging Face model folder, and push it to the hub.

    python -m pipeline.export --run RUN_DIR [--step N] --output HF_DIR [--push-to-hub REPO_ID]

The fp32 weights are gathered from the ZeRO checkpoint with DeepSpeed's ``zero_to_fp32``; the
model config and tokenizer come from ``RUN_DIR/model/``, written when the run started. HF_DIR holds
what a user of ``transformers`` expects: ``config.json`` and ``model.safetensors``
(``AutoModelForMaskedLM``), a tokenizer fitted to the model (``AutoTokenizer``; its outputs are
exactly the model's inputs, so ``model(**tokenizer(text, return_tensors="pt"))`` works; a
SentencePiece run's ``.model`` is converted and kept beside it), a model card (``README.md``: hub
metadata, teacher, data, recipe, steps and the run's last validation; no path of this machine) and
the run's full resolved config (``distil_config.yaml``). The folder is built beside HF_DIR and
renamed into place when complete. Teacher pretraining (MLM-only runs) exports the same way, so its
output can teach the next run.

``--push-to-hub REPO_ID`` then uploads the folder (``hf auth login`` or HF_TOKEN first): the
repository is created if missing (``--private``), and the files go in one commit. A push that
fails leaves the complete export in HF_DIR and says how to push it later. ``--out`` is the old
name of ``--output``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.errors import cli_main
from data_prep.flags import HelpFormatter, renamed
from pipeline.publish.folder import export
from pipeline.publish.hub import check_push, plan_upload, push

PROG = "pipeline.export"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="RUN_DIR of pipeline.train")
    p.add_argument(
        "--step", type=int, metavar="N", help="checkpoint step (default: the newest complete one)"
    )
    p.add_argument(
        "--output", required=True, metavar="HF_DIR", help="HF_DIR to write (absent or empty)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in --output (nothing else is ever replaced)",
    )
    p.add_argument(
        "--results",
        metavar="FILE",
        type=Path,
        help="pipeline.evaluate --json FILE of this model (GLUE, held-out MLM): the card's "
        "model-index and results table",
    )
    p.add_argument(
        "--teacher-results",
        metavar="FILE",
        type=Path,
        help="the same for the teacher: its figures beside this model's in the card's table",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="then upload HF_DIR to this hub model repository (NAMESPACE/NAME), created if "
        "missing; the card names it",
    )
    p.add_argument(
        "--private",
        action="store_true",
        help="with --push-to-hub: create the repository private (an existing one keeps its "
        "visibility)",
    )
    p.add_argument(
        "--revision",
        metavar="BRANCH",
        help="with --push-to-hub: the branch to commit to, created if missing (default: main)",
    )
    p.add_argument(
        "--commit-message",
        metavar="TEXT",
        help="with --push-to-hub: the commit's message (default: one naming the run and step)",
    )
    return p


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = parser()
    argv = renamed(sys.argv[1:] if argv is None else argv, {"--out": "--output"}, PROG)
    args = p.parse_args(argv)
    hub_only = [f for f in ("private", "revision", "commit_message") if getattr(args, f)]
    if hub_only and not args.push_to_hub:
        p.error(f"--{hub_only[0].replace('_', '-')} goes with --push-to-hub")
    if args.push_to_hub:
        check_push(args.push_to_hub)
    path = export(
        Path(args.run), args.step, Path(args.output), args.overwrite, args.push_to_hub,
        args.results, args.teacher_results,
    )  # fmt: skip
    print(f"exported {args.run} to {path}", flush=True)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        upload = plan_upload(
            path, args.push_to_hub, args.private, args.commit_message, args.revision
        )
        url = push(upload, HfApi())
        print(f"pushed {len(upload.files)} files of {path} to {args.push_to_hub}: {url}")


if __name__ == "__main__":
    main()
