"""Held-out evaluation of a masked LM, optionally against its teacher, and a downstream check.

    python -m pipeline.evaluate --model HF_DIR_OR_RUN_DIR --data DATA_DIR [--teacher TEACHER]
        [--json OUT] [--samples N] [--classify TRAIN.jsonl TEST.jsonl]

MLM accuracy and loss on the valid split use the masking contract of training (view 0, the run's
seed), so the numbers are comparable with the trainer's periodic validation. Models and teachers
are folders or hub IDs (:mod:`data_prep.hub`). With a teacher:
the teacher's accuracy, top-1 agreement and KL(teacher || model) at T=1 on the same positions.
``--classify`` fine-tunes a sequence classifier from the model on a labelled jsonl (fields
``text`` and ``label``) and reports its test accuracy, as DistilBERT reports GLUE.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from data_prep.atomic import write_json
from data_prep.errors import cli_main
from data_prep.hub import resolve
from pipeline.config.schema import DEFAULT_SEED
from pipeline.evaluation.classify import classify
from pipeline.evaluation.mlm import mlm_metrics
from pipeline.model.masked_lm import count_parameters
from pipeline.publish.run_model import load_model


def _run_seed(run_dir: Path | None, default: int) -> int:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return default
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return int(cfg.get("train", {}).get("seed", default))


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="HF folder, hub ID or RUN_DIR of pipeline.train")
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="DATA_DIR (its valid split is used); several (W:DIR) for a blend's",
    )
    p.add_argument("--teacher", help="teacher HF folder or hub ID: adds agreement and KL")
    p.add_argument("--json", help="write the metrics here")
    p.add_argument("--samples", type=int, default=4096, help="valid sequences to score")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--seed", type=int, help=f"masking seed (default: the run's, else {DEFAULT_SEED})"
    )
    p.add_argument("--classify", nargs=2, metavar=("TRAIN", "TEST"), help="labelled jsonl files")
    p.add_argument("--classify-epochs", type=int, default=3)
    p.add_argument("--classify-lr", type=float, default=5e-5)
    p.add_argument("--classify-batch-size", type=int, default=16)
    args = p.parse_args(argv)
    from pipeline.distributed.launch import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, run_dir, model_dir = load_model(args.model)
    teacher = None
    if args.teacher:
        from pipeline.model.masked_lm import load_teacher

        teacher_dir = resolve(args.teacher, "--teacher")
        teacher = load_teacher(str(teacher_dir), "sdpa", need_head=True).model
    seed = args.seed if args.seed is not None else _run_seed(run_dir, DEFAULT_SEED)
    result: dict[str, Any] = {"model": args.model, "params": count_parameters(model)}
    result["mlm"] = mlm_metrics(
        model, teacher, args.data, args.samples, args.batch_size, seed, device
    )
    if args.classify:
        with tempfile.TemporaryDirectory() as tmp:
            folder = model_dir or Path(args.model)
            if run_dir is not None:
                from pipeline.publish.folder import export

                folder = export(run_dir, None, Path(tmp) / "hf")
            result["classification"] = classify(
                folder, Path(args.classify[0]), Path(args.classify[1]),
                epochs=args.classify_epochs, lr=args.classify_lr,
                batch_size=args.classify_batch_size, device=device,
            )  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
