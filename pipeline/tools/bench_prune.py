"""Pruned, selected and random students against each other: what ``model.init prune`` buys.

    python -m pipeline.tools.bench_prune --workdir demo_run [--steps 100] [--seeds 3]
        [--inits prune select random] [--shape 3 256 8 1024] [--layer-map 0 2 5] [--json OUT]

Uses the demo's adapted teacher and shards (``make demo``'s first two stages, run here through
:mod:`pipeline.tools.demo` when the working folder lacks them). For each init and seed it trains
one student of the given shape (layers, width, heads, FFN) with the DistilBERT losses on 2 ranks
(5 x T^2 KL at T=2 + 2 x MLM; the cosine term needs the teacher's width, so it is off), validates
before the first step (``train.eval_on_start``: what the init alone keeps) and at the end, on
the same held-out masks, and prints held-out MLM loss and accuracy per init: median and range
over seeds. Runs go to WORKDIR/prune_bench/INIT-seedN and resume or are skipped when finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from data_prep.atomic import OUTPUT_MARKER, output_owner, write_json
from data_prep.errors import UserError, cli_main
from pipeline.tools.demo import COMMAND as DEMO
from pipeline.tools.demo import Demo


def _train(demo: Demo, run: Path, init: str, seed: int, args: argparse.Namespace) -> None:
    layers, hidden, heads, ffn = args.shape
    common = demo.common("unused", args.steps, 32)
    common[common.index("--output") + 1] = run
    demo.torchrun(
        "--teacher", demo.w / "teacher", "--model.teacher_dtype", "bf16", "--seed", str(seed),
        *common, "--eval-every", "0", "--train.eval_on_start", "true",
        "--model.init", init, "--model.student_layers", str(layers),
        "--model.student_hidden", str(hidden), "--model.student_heads", str(heads),
        "--model.student_intermediate", str(ffn), "--model.prune_samples", str(args.prune_samples),
        "--loss.alpha_cos", "0",
        *(["--model.layer_map", json.dumps(args.layer_map)] if args.layer_map else []),
    )  # fmt: skip


def _evals(run: Path) -> dict[int, dict[str, float]]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval" in record:
            out[int(record["step"])] = record["eval"]
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.tools.bench_prune", description=__doc__)
    p.add_argument("--workdir", default="demo_run", help="a demo working folder (default demo_run)")
    p.add_argument(
        "--steps", type=int, default=100, help="training steps per student (default 100)"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N per init (default 3)")
    p.add_argument("--inits", nargs="+", default=["prune", "select", "random"])
    p.add_argument("--shape", type=int, nargs=4, default=[3, 256, 8, 1024],
                   metavar=("LAYERS", "HIDDEN", "HEADS", "FFN"))  # fmt: skip
    p.add_argument("--layer-map", type=int, nargs="+", help="teacher layers (default: each init's)")
    p.add_argument("--prune-samples", type=int, default=256, help="calibration sequences")
    p.add_argument("--json", help="write the table as JSON here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.seeds < 1:
        raise UserError("--steps and --seeds must be at least 1")
    workdir = Path(args.workdir).resolve()
    ours = output_owner(workdir) == DEMO or (workdir / "data" / "manifest.json").is_file()
    if workdir.exists() and any(workdir.iterdir()) and not ours:
        raise UserError(
            f"--workdir {workdir}: the folder holds other files (not a demo's); choose a demo "
            "working folder or a new one, nothing was changed"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / OUTPUT_MARKER, {"command": DEMO})
    demo = Demo(workdir, quick=False, seeds=1)
    demo.stage("shards", (demo.w / "data" / "manifest.json").is_file(), demo.shards)
    demo.stage("teacher", (demo.w / "teacher" / "config.json").is_file(), demo.teacher)
    rows: dict[str, Any] = {}
    for init in args.inits:
        per_seed: list[dict[str, Any]] = []
        for seed in range(1, args.seeds + 1):
            mapped = "-layers" + "_".join(map(str, args.layer_map)) if args.layer_map else ""
            run = demo.w / "prune_bench" / f"{init}{mapped}-seed{seed}"
            if not demo.finished(run, args.steps):
                _train(demo, run, init, seed, args)
            evals = _evals(run)
            per_seed.append({"seed": seed, "start": evals[0], "end": evals[args.steps]})
        rows[init] = {
            f"{when}_{key}": _summary([r[when][key] for r in per_seed])
            for when in ("start", "end")
            for key in ("mlm_loss", "mlm_accuracy")
        } | {"seeds": per_seed}
    print(f"\nstudent {args.shape} (layers, hidden, heads, FFN), {args.steps} steps of 32, "
          f"seeds 1..{args.seeds}; held-out MLM, median [min, max]")  # fmt: skip
    print("| init | loss at step 0 | accuracy at step 0 | loss at the end | accuracy at the end |")
    print("|---|---|---|---|---|")
    for init, r in rows.items():
        cells = [
            f"{r[k]['median']:.3f} [{r[k]['min']:.3f}, {r[k]['max']:.3f}]"
            for k in ("start_mlm_loss", "start_mlm_accuracy", "end_mlm_loss", "end_mlm_accuracy")
        ]
        print(f"| {init} | " + " | ".join(cells) + " |")
    if args.json:
        write_json(Path(args.json), {"shape": args.shape, "steps": args.steps, "inits": rows})


if __name__ == "__main__":
    main()
