"""``make demo``: the whole mission on the bundled corpus, on 2 CPU cores, in about eight minutes.

    python -m pipeline.tools.demo [--workdir demo_run] [--quick]

Stages (each prints its progress; a rerun skips finished stages and resumes unfinished ones):

1. tokenizer  train a WordPiece tokenizer (8,192 entries) on the bundled Austen corpus
2. shards     build_shards: packed Megatron shards (seq 128, 5% of the paragraphs held out)
3. teacher    pretrain a 4-layer BERT (hidden 128) with MLM only (2 ranks, ZeRO-2, bf16), export it
4. cache      the teacher's distribution at the students' masked positions, as 64 samples per
              position (RS-KD): a small teacher is flat at T=2, so a top-k cache keeps little mass
5. student    distil a 2-layer student from teacher layers 0 and 3 (2 ranks, ZeRO-2, bf16), the
              DistilBERT recipe: 5 x T^2 KL (logits from the cache) + 2 x MLM + 1 x cosine
6. control    the student's architecture trained with MLM only from scratch, the same steps:
              what the same budget gives without a teacher
7. ablation   the student with the teacher's layers as init but MLM only, the same steps: what
              the distillation losses add on top of the initialisation
8. evaluate   held-out MLM accuracy/loss, agreement with the teacher, a fine-tuned classifier
9. export     the student as a Hugging Face folder, filling masked sentences
10. report    report.md, report.json and loss_curves.png in the working folder
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from data_prep.atomic import write_json
from data_prep.errors import UserError, cli_main

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data_prep" / "corpus"
MODELS = ("teacher", "student", "control", "ablation")
SENTENCES = [
    "it is a truth universally acknowledged, that a single man in possession of a good [MASK], must be in want of a wife.",
    "she was not [MASK] to see him again so soon.",
    "the [MASK] of the house was very large.",
]


class Demo:
    def __init__(self, workdir: Path, quick: bool) -> None:
        self.w = workdir
        self.quick = quick
        self.w.mkdir(parents=True, exist_ok=True)
        self.times_path = self.w / "stage_times.json"
        self.times: dict[str, float] = (
            json.loads(self.times_path.read_text()) if self.times_path.is_file() else {}
        )
        scale = 0.1 if quick else 1.0
        self.teacher_steps = max(20, int(1200 * scale))
        self.student_steps = max(20, int(300 * scale))
        self.batch = 32
        self.env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }

    # -- plumbing --------------------------------------------------------------------------
    def run(self, *cmd: str | Path) -> None:
        print("$ " + " ".join(str(c) for c in cmd), flush=True)
        result = subprocess.run([str(c) for c in cmd], cwd=REPO, env=self.env)
        if result.returncode != 0:
            raise UserError(
                f"demo stage failed (exit {result.returncode}): {' '.join(map(str, cmd))}"
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

    # -- stages ----------------------------------------------------------------------------
    def tokenizer(self) -> None:
        self.run(
            sys.executable, "-m", "data_prep.train_tokenizer", "--input", CORPUS / "austen" / "*.txt.gz",
            "--output", self.w / "tokenizer", "--vocab-size", "8192",
        )  # fmt: skip

    def shards(self) -> None:
        # one unit, so one shard, per novel: both ranks of the teacher cache get shards
        self.run(
            sys.executable, "-m", "data_prep.build_shards", "--input", CORPUS / "austen" / "*.txt.gz",
            "--tokenizer", self.w / "tokenizer", "--seq-len", "128", "--output", self.w / "data",
            "--workers", "2", "--valid-fraction", "0.05", "--unit-max-files", "1",
        )  # fmt: skip

    def teacher(self) -> None:
        from transformers import AutoTokenizer, BertConfig

        vocab = len(AutoTokenizer.from_pretrained(str(self.w / "tokenizer")))
        cfg = BertConfig(
            vocab_size=vocab, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512, max_position_embeddings=128,
        )  # fmt: skip
        cfg.to_json_file(str(self.w / "teacher_config.json"))
        self.torchrun(
            "--model", self.w / "teacher_config.json", "--data", self.w / "data",
            "--output", self.w / "runs" / "teacher", "--ds-config", "ds_configs/zero2_bf16.json",
            "--max-steps", str(self.teacher_steps), "--global-batch-size", str(self.batch),
            "--lr", "1e-3", "--log-every", "20", "--eval-every", "300", "--save-every", "300",
            "--train.eval_samples", "512", "--masking.smoothing", "0",
        )  # fmt: skip
        self.run(sys.executable, "-m", "pipeline.export", "--run", self.w / "runs" / "teacher",
                 "--out", self.w / "teacher")  # fmt: skip

    def cache(self) -> None:
        self.run(
            sys.executable, "-m", "pipeline.cache_teacher", "--data", self.w / "data",
            "--teacher", self.w / "teacher", "--out", self.w / "cache", "--mode", "sample",
            "--samples", "64", "--views", "1", "--smoothing", "0",
        )  # fmt: skip

    def student_args(self, name: str) -> list[str | Path]:
        return [
            "--teacher", self.w / "teacher", "--data", self.w / "data",
            "--output", self.w / "runs" / name, "--ds-config", "ds_configs/zero2_bf16.json",
            "--max-steps", str(self.student_steps), "--global-batch-size", str(self.batch),
            "--lr", "1e-3", "--log-every", "10", "--eval-every", "100", "--save-every", "100",
            "--train.eval_samples", "512", "--masking.smoothing", "0",
        ]  # fmt: skip

    def student(self) -> None:
        extra: list[str | Path] = []
        if (self.w / "cache" / "manifest.json").is_file():
            extra += ["--teacher-cache", self.w / "cache"]
        self.torchrun(*self.student_args("student"), *extra)

    def control(self) -> None:
        self.torchrun(
            *self.student_args("control"), "--model.init", "random",
            "--loss.alpha_ce", "0", "--loss.alpha_cos", "0", "--loss.alpha_mlm", "1",
        )  # fmt: skip

    def ablation(self) -> None:
        self.torchrun(
            *self.student_args("ablation"),
            "--loss.alpha_ce", "0", "--loss.alpha_cos", "0", "--loss.alpha_mlm", "1",
        )  # fmt: skip

    def evaluate(self) -> None:
        sotu = CORPUS / "sotu_era"
        for name in MODELS:
            out = self.w / "eval" / f"{name}.json"
            if out.is_file():
                continue
            model = self.w / "teacher" if name == "teacher" else self.w / "runs" / name
            self.run(
                sys.executable, "-m", "pipeline.evaluate", "--model", model, "--data", self.w / "data",
                "--teacher", self.w / "teacher", "--json", out, "--samples", "2048",
                "--classify", sotu / "train.jsonl.gz", sotu / "test.jsonl.gz",
                "--classify-epochs", "2", "--classify-lr", "2e-4", "--classify-batch-size", "32",
            )  # fmt: skip

    def export(self) -> None:
        out = self.w / "student_hf"
        self.run(
            sys.executable,
            "-m",
            "pipeline.export",
            "--run",
            self.w / "runs" / "student",
            "--out",
            out,
        )
        import transformers

        transformers.utils.logging.set_verbosity_error()
        fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out))
        lines = []
        for sentence in SENTENCES:
            preds = fill(sentence, top_k=3)
            shown = ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in preds)
            lines.append(f"- `{sentence}` -> {shown}")
            print(lines[-1])
        (self.w / "fill_mask.md").write_text("\n".join(lines) + "\n")

    def report(self) -> None:
        from pipeline.tools.demo_report import write_report

        write_report(self.w, self.times)

    def main(self) -> None:
        w, steps = self.w, self.student_steps
        self.stage("tokenizer", (w / "tokenizer" / "tokenizer.json").is_file(), self.tokenizer)
        self.stage("shards", (w / "data" / "manifest.json").is_file(), self.shards)
        teacher_done = (w / "teacher" / "model.safetensors").is_file()
        self.stage(
            "teacher",
            teacher_done and self.finished(w / "runs" / "teacher", self.teacher_steps),
            self.teacher,
        )
        self.stage("cache", (w / "cache" / "manifest.json").is_file(), self.cache)
        self.stage("student", self.finished(w / "runs" / "student", steps), self.student)
        self.stage("control", self.finished(w / "runs" / "control", steps), self.control)
        self.stage("ablation", self.finished(w / "runs" / "ablation", steps), self.ablation)
        evaluated = all((w / "eval" / f"{n}.json").is_file() for n in MODELS)
        self.stage("evaluate", evaluated, self.evaluate)
        self.stage("export", (w / "fill_mask.md").is_file(), self.export)
        self.stage("report", False, self.report)


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.tools.demo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workdir", default="demo_run", help="working folder (git-ignored)")
    p.add_argument(
        "--quick", action="store_true", help="a tenth of the steps: checks that every stage runs"
    )
    p.add_argument("--fresh", action="store_true", help="delete the working folder first")
    args = p.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    Demo(workdir, args.quick).main()


if __name__ == "__main__":
    main()
