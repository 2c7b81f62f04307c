"""The fault campaign: randomized faults against real 2-rank CPU jobs, each restarted the way
Slurm requeues a job (the same command again), and a table of what happened.

    python -m pipeline.tools.faults [--scenarios 50] [--seed 0] [--workdir W] [--kinds K ...]
        [--json OUT]

Every scenario is replayable from its seed (``--seed S --scenarios 1 --kinds K``). A training
scenario runs the job of :func:`train_args` (a tiny BERT teacher, 2 ranks on gloo, 12 steps,
checkpoints every 3, fp32), strikes, then restarts it until it finishes; it passes when the
finished run logged, step for step and to the last bit, the losses of the uninterrupted run, and
no committed checkpoint was lost (the first restart resumed from the newest checkpoint committed
before the fault, unless the fault itself damaged it). A fault that needs a person first (a full
disk, a damaged shard, a node that cannot see the checkpoint) must stop the job with one line and
exit, within bounded time, before the person's repair and the restart. Kinds:

* ``kill``: SIGKILL of one rank at a random moment; ``kill-at``: at a named point (mid-step,
  files written but not committed, committed but ``latest`` not moved, a universal conversion
  done but not marked) (:mod:`pipeline.distributed.failpoints`);
* ``signal``: SIGUSR1 or SIGTERM to every rank at a random moment, start-up too;
* ``disk-full``: the run folder on a small tmpfs that fills during a save (root only);
* ``flip-shard``, ``flip-checkpoint``: one byte flipped in a shard, or in a checkpoint file;
* ``latest``: ``latest`` naming a missing or an older checkpoint;
* ``one-node``: a restart where node 1 cannot see the newest checkpoint (root only);
* ``prep``, ``cache``: data prep and the teacher cache killed at a random moment and rerun: the
  same bytes as an uninterrupted job.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_prep.atomic import OUTPUT_MARKER, output_owner, write_json
from data_prep.errors import UserError, cli_main

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data_prep" / "corpus" / "austen"
BIN = Path(sys.executable).parent
STEPS, SAVE_EVERY = 12, 3
KINDS = ("kill", "kill-at", "signal", "disk-full", "flip-shard", "flip-checkpoint", "latest",
         "one-node", "prep", "cache")  # fmt: skip
COMMAND = "pipeline.tools.faults"
POINTS = ("step", "save:written", "save:committed", "universal:converted")


@dataclass
class Outcome:
    scenario: str
    seed: int
    struck: str  # where: step and phase
    outcome: str
    redone: int  # steps computed again after the fault
    lost: int  # committed steps lost (to us, not to the fault itself)
    ok: bool
    seconds: float


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
           "MASTER_ADDR", "MASTER_PORT", "DISTIL_FAILPOINT")}  # fmt: skip
    out.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))  # fmt: skip
    out.update(extra or {})
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(args: list[str], nproc: int = 2) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), "-m", "pipeline.train", *args]  # fmt: skip


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def logged_steps(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "eval" not in r:
            out.append((int(r["step"]), float(r["loss"])))
    return out


def committed(run: Path) -> list[int]:
    from pipeline.checkpoint.store import complete_checkpoints

    return [c.step for c in complete_checkpoints(run)]


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(p for p in folder.rglob("*") if p.is_file() and ".tmp" not in p.name):
        digest.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()


class Campaign:
    def __init__(self, work: Path, quiet: bool) -> None:
        self.work = work
        self.quiet = quiet
        self.data = work / "data"
        self.teacher = work / "teacher"
        self.reference: list[tuple[int, float]] = []

    # -- the world the jobs run in --------------------------------------------------------------
    def run(self, cmd: list[str], timeout: float = 300, extra: dict[str, str] | None = None,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run([*(prefix or []), *cmd], cwd=REPO, env=env(extra),
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def setup(self) -> None:
        """A small WordPiece tokenizer, shards of two novels and a tiny random BERT teacher."""
        self.work.mkdir(parents=True, exist_ok=True)
        texts = [str(CORPUS / "persuasion.txt.gz"), str(CORPUS / "northangerabbey.txt.gz")]
        tok = self.work / "tokenizer"
        if not (tok / "vocab.txt").is_file():
            self.check(self.run([sys.executable, "-m", "data_prep.train_tokenizer", "--input",
                                 *texts, "--output", str(tok), "--vocab-size", "2000"]))  # fmt: skip
        self.prep_cmd = [sys.executable, "-m", "data_prep.build_shards", "--input", *texts,
                         "--tokenizer", str(tok), "--seq-len", "64", "--workers", "2",
                         "--valid-fraction", "0.02", "--unit-size-mb", "0.25", "--quiet"]  # fmt: skip
        if not (self.data / "manifest.json").is_file():
            self.check(self.run([*self.prep_cmd, "--output", str(self.data)]))
        if not (self.teacher / "config.json").is_file():
            import torch
            from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

            torch.manual_seed(0)
            config = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=128,
                                max_position_embeddings=64)  # fmt: skip
            BertForMaskedLM(config).save_pretrained(str(self.teacher))
            AutoTokenizer.from_pretrained(str(tok)).save_pretrained(str(self.teacher))
        ref = self.work / "reference"
        if not logged_steps(ref) or logged_steps(ref)[-1][0] != STEPS:
            shutil.rmtree(ref, ignore_errors=True)
            self.timed("train", lambda: self.check(self.run(torchrun(self.train_args(ref)))))
        self.reference = logged_steps(ref)

    def timed(self, what: str, fn: Any) -> None:
        """Run ``fn`` and keep how long it took: faults strike within that span."""
        start = time.monotonic()
        fn()
        path = self.work / "durations.json"
        durations = json.loads(path.read_text()) if path.is_file() else {}
        durations[what] = time.monotonic() - start
        path.write_text(json.dumps(durations))

    def when(self, run: Path, rng: random.Random) -> tuple[float | tuple[Path, int, float], str]:
        """A random moment of a training job: in a quarter of the draws during start-up, else
        within the steps (up to 0.4 s after a random step was logged: a step and a save here
        take about 0.15 s)."""
        if rng.random() < 0.25:
            at = rng.uniform(0.5, 5.0)
            return at, f"at {at:.1f} s"
        k, delay = rng.randint(1, STEPS - 1), rng.uniform(0, 0.4)
        return (run, k, delay), f"{delay:.2f} s after step {k}"

    def moment(self, what: str, rng: random.Random) -> float:
        """A random moment within an uninterrupted job's duration (start-up included)."""
        path = self.work / "durations.json"
        span = json.loads(path.read_text()).get(what, 15.0) if path.is_file() else 15.0
        return rng.uniform(0.05, 0.95) * span

    def check(self, result: subprocess.CompletedProcess[str]) -> None:
        if result.returncode != 0:
            raise RuntimeError(f"{result.args}: exit {result.returncode}\n{result.stderr[-3000:]}")

    def train_args(
        self, run: Path, extra: dict[str, Any] | None = None, data: Path | None = None
    ) -> list[str]:
        opts: dict[str, Any] = {
            "--teacher": self.teacher, "--data": data or self.data, "--output": run,
            "--max-steps": STEPS, "--global-batch-size": 8, "--log-every": 1, "--eval-every": 0,
            "--save-every": SAVE_EVERY, "--train.eval_samples": 16, "--data.num_workers": 1,
            "--ds-config": REPO / "ds_configs" / "zero2_fp32.json",
            "--train.collective_timeout_s": 120, **(extra or {}),
        }  # fmt: skip
        return [str(x) for kv in opts.items() for x in kv]

    # -- strike and recover ---------------------------------------------------------------------
    def strike(self, cmd: list[str], at: float | tuple[Path, int, float], action: Any,
               extra: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:  # fmt: skip
        """Start ``cmd`` and call ``action(pid)`` while it runs: ``at`` seconds after the start,
        or ``(run, k, delay)``: ``delay`` seconds after ``run`` logged step ``k``. Its exit code
        and output."""
        log = self.work / "strike.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env(extra), stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            start = time.monotonic()
            while proc.poll() is None:
                if isinstance(at, tuple):
                    run, k, delay = at
                    if any(step >= k for step, _ in logged_steps(run)):
                        time.sleep(delay)
                        break
                elif time.monotonic() - start >= at:
                    break
                time.sleep(0.02)
            if proc.poll() is None:
                action(proc.pid)
            proc.wait(timeout=timeout)
        return proc.returncode, log.read_text()

    def finish(self, run: Path, before: list[int], extra: Any = None) -> tuple[str, int, int, bool]:
        """Requeue until done (at most 4 times); (outcome, steps redone, committed steps lost,
        same losses)."""
        first_resume: int | None = None
        out = ""
        for _ in range(4):
            result = self.run(torchrun(self.train_args(run, extra)))
            out = result.stdout + result.stderr
            if first_resume is None:
                m = re.search(r"resumed from \S+ at step (\d+)", out)
                first_resume = int(m.group(1)) if m else 0
            if result.returncode == 0:
                break
        else:
            return f"did not finish: {_last_error(out)}", 0, 0, False
        newest = max(before, default=0)
        same = logged_steps(run) == self.reference
        return "finished, same losses" if same else "finished, other losses", \
            0, max(0, newest - (first_resume or 0)), same  # fmt: skip

    def where(self, run: Path, before: list[int]) -> str:
        steps = logged_steps(run)
        last = steps[-1][0] if steps else 0
        partial = any(
            not (p / "COMMIT.json").is_file() for p in (run / "checkpoints").glob("global_step*")
        ) if (run / "checkpoints").is_dir() else False  # fmt: skip
        phase = "start-up" if not steps else "mid-save" if partial else "between steps"
        return f"step {last}, {phase} (committed: {before[-1] if before else 'none'})"

    def training(self, name: str, seed: int, run: Path, at: Any, action: Any,
                 extra_env: dict[str, str] | None = None) -> Outcome:  # fmt: skip
        start = time.monotonic()
        code, _ = self.strike(torchrun(self.train_args(run)), at, action, extra_env)
        before = committed(run)
        struck = self.where(run, before)
        last = logged_steps(run)[-1][0] if logged_steps(run) else 0
        outcome, _, lost, same = self.finish(run, before)
        resumed = max(before, default=0)
        redone = max(0, last - resumed) if code != 0 else 0
        if code == 0:
            struck += " (the job had finished)"
        return Outcome(name, seed, struck, outcome, redone, lost, same and lost == 0,
                       round(time.monotonic() - start, 1))  # fmt: skip

    # -- the scenarios --------------------------------------------------------------------------
    def kill(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        (at, said), rank = self.when(run, rng), rng.randrange(2)

        def action(pid: int) -> None:
            ranks = children(pid)
            if ranks:
                os.kill(sorted(ranks)[min(rank, len(ranks) - 1)], signal.SIGKILL)

        return self.training(f"kill -9 rank {rank} {said}", seed, run, at, action)

    def kill_at(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        point = rng.choice(POINTS)
        if point == "universal:converted":
            return self.kill_converting(seed, run)
        rank = rng.randrange(2) if point != "save:committed" else 0
        # a save every 3 steps (4 of them); one micro-batch per step and rank (12 of them)
        nth = rng.randint(1, 3 if point.startswith("save") else STEPS)
        start = time.monotonic()
        spec = f"{point}@{rank}#{nth}"
        _, _ = self.strike(torchrun(self.train_args(run)), 600, lambda pid: None,
                              {"DISTIL_FAILPOINT": spec})  # fmt: skip
        before = committed(run)
        struck = f"{spec}: " + self.where(run, before)
        last = logged_steps(run)[-1][0] if logged_steps(run) else 0
        outcome, _, lost, same = self.finish(run, before)
        return Outcome(f"kill -9 at {point}", seed, struck, outcome,
                       max(0, last - max(before, default=0)), lost, same and lost == 0,
                       round(time.monotonic() - start, 1))  # fmt: skip

    def kill_converting(self, seed: int, run: Path) -> Outcome:
        """A 2-rank run moves to 1 rank; the conversion's process dies before it is marked done;
        the requeue converts again and ends as the uninterrupted 2 -> 1 run did."""
        start = time.monotonic()
        ref = self.work / "reference_2to1"
        if not logged_steps(ref):
            self.check(self.run(torchrun(self.train_args(ref, {"--train.stop_after_steps": 6}))))
            self.check(self.run(torchrun(self.train_args(ref), nproc=1)))
        self.check(self.run(torchrun(self.train_args(run, {"--train.stop_after_steps": 6}))))
        killed = self.run(torchrun(self.train_args(run), nproc=1),
                          extra={"DISTIL_FAILPOINT": "universal:converted"})  # fmt: skip
        done = self.run(torchrun(self.train_args(run), nproc=1))
        same = done.returncode == 0 and logged_steps(run) == logged_steps(ref)
        outcome = (
            "finished, same losses as 2 -> 1" if same else f"failed: {_last_error(done.stderr)}"
        )
        return Outcome("kill -9 at universal:converted", seed,
                       f"step 6, converting (killed: exit {killed.returncode})", outcome, 0, 0,
                       same, round(time.monotonic() - start, 1))  # fmt: skip

    def signal(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        sig = rng.choice([signal.SIGUSR1, signal.SIGTERM])
        at, said = self.when(run, rng)

        def action(pid: int) -> None:  # Slurm signals every task of the step: every rank
            for p in children(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, sig)

        return self.training(f"{sig.name} to every rank {said}", seed, run, at, action)

    def disk_full(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        size_kb = rng.randint(1500, 12000)  # 0 to 3 checkpoints of 2.7 MB fit (keep_last 3)
        mnt = run.parent / f"{run.name}.fs"
        mnt.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
                       check=True)  # fmt: skip
        start = time.monotonic()
        try:
            inner = mnt / "run"
            first = self.run(torchrun(self.train_args(inner)), timeout=300)
            elapsed = time.monotonic() - start
            before = committed(inner)
            line = _last_error(first.stdout + first.stderr)
            stopped_cleanly = first.returncode != 0 and "was not saved" in first.stdout
            subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)
            outcome, _, lost, same = self.finish(inner, before)
            struck = f"{size_kb} KiB; committed {before[-1] if before else 'none'}; " + (
                f"stopped in {elapsed:.0f} s: {line[:90]}" if first.returncode else "it fit"
            )
            ok = same and lost == 0 and (first.returncode == 0 or stopped_cleanly)
            return Outcome("disk full during a save", seed, struck, outcome,
                           0, lost, ok, round(time.monotonic() - start, 1))  # fmt: skip
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)

    def flip_shard(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        start = time.monotonic()
        data = run.parent / f"{run.name}.data"
        shutil.copytree(self.data, data)
        self.check(self.run(torchrun(self.train_args(run, {"--train.stop_after_steps": 5}, data))))
        files = sorted(p for p in data.rglob("*") if p.suffix in (".bin", ".idx"))
        victim = rng.choice(files)
        raw = bytearray(victim.read_bytes())
        pos = rng.randrange(len(raw))
        original = raw[pos]
        raw[pos] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(raw))
        stopped = self.run(torchrun(self.train_args(run, None, data)))
        line = _last_error(stopped.stderr)
        # one line naming the file: its sha256, or a header the reader refuses before that
        detected = stopped.returncode != 0 and victim.name in line
        raw[pos] = original
        victim.write_bytes(bytes(raw))
        outcome, _, lost, same = self.finish(run, committed(run), {"--data": data})
        return Outcome("byte flipped in a shard", seed,
                       f"{victim.relative_to(data)} byte {pos}: " + (f"stopped: {line.split(': ', 2)[-1][:60]}"
                       if detected else f"NOT detected: {line[:80]}"), outcome, 0, lost,
                       detected and same and lost == 0, round(time.monotonic() - start, 1))  # fmt: skip

    def flip_checkpoint(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        start = time.monotonic()
        self.check(self.run(torchrun(self.train_args(run, {"--train.stop_after_steps": 8}))))
        before = committed(run)
        newest = run / "checkpoints" / f"global_step{before[-1]}"
        victim = rng.choice(sorted(p for p in newest.iterdir() if p.name != "COMMIT.json"))
        raw = bytearray(victim.read_bytes())
        pos = rng.randrange(len(raw))
        raw[pos] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(raw))
        result = self.run(torchrun(self.train_args(run)))
        detected = "skipping damaged checkpoint" in result.stderr
        m = re.search(r"resumed from \S+ at step (\d+)", result.stdout)
        resumed = int(m.group(1)) if m else 0
        same = result.returncode == 0 and logged_steps(run) == self.reference
        older = before[-2] if len(before) > 1 else 0
        return Outcome("byte flipped in a checkpoint", seed,
                       f"{newest.name}/{victim.name} byte {pos}: "
                       + ("checksum caught it" if detected else "NOT detected"),
                       "finished, same losses" if same else "finished, other losses",
                       before[-1] - resumed, max(0, older - resumed), detected and same,
                       round(time.monotonic() - start, 1))  # fmt: skip

    def latest(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        start = time.monotonic()
        self.check(self.run(torchrun(self.train_args(run, {"--train.stop_after_steps": 7}))))
        before = committed(run)
        what = rng.choice(["global_step999", "global_step3", "garbage\n"])
        (run / "checkpoints" / "latest").write_text(what)
        outcome, _, lost, same = self.finish(run, before)
        return Outcome("stale or dangling latest", seed, f"latest -> {what.strip()!r}", outcome,
                       0, lost, same and lost == 0, round(time.monotonic() - start, 1))  # fmt: skip

    def one_node(self, seed: int, run: Path) -> Outcome:
        start = time.monotonic()
        self.check(self.run(torchrun(self.train_args(run, {"--train.stop_after_steps": 7}))))
        before = committed(run)
        empty = run.parent / f"{run.name}.empty"
        empty.mkdir()
        hidden = run / "checkpoints" / f"global_step{before[-1]}"
        port = free_port()

        def node(rank: int) -> list[str]:
            return [str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(rank),
                    "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                    str(port), "-m", "pipeline.train", *self.train_args(run)]  # fmt: skip

        hide = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount --bind {empty} {hidden} && exec "$@"', "node1"]  # fmt: skip
        procs = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for c in (node(0), [*hide, *node(1)])]  # fmt: skip
        outs = [p.communicate(timeout=300) for p in procs]
        stderr = "".join(e for _, e in outs)
        stopped = all(p.returncode != 0 for p in procs) and "cannot read the checkpoint" in stderr
        outcome, _, lost, same = self.finish(run, before)
        return Outcome("newest checkpoint visible to one node only", seed,
                       f"{hidden.name} hidden from node 1: "
                       + ("every rank stopped, one line" if stopped else "NOT stopped"),
                       outcome, 0, lost, stopped and same and lost == 0,
                       round(time.monotonic() - start, 1))  # fmt: skip

    def prep(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        start = time.monotonic()
        ref = self.work / "prep_reference"
        if not (ref / "manifest.json").is_file():
            self.timed("prep", lambda: self.check(self.run([*self.prep_cmd, "--output", str(ref)])))
        at = self.moment("prep", rng)
        code, _ = self.strike([*self.prep_cmd, "--output", str(run)], at,
                              lambda pid: os.killpg(pid, signal.SIGKILL))  # fmt: skip
        units = len(list((run / "parts").glob("unit-*.json"))) if (run / "parts").is_dir() else 0
        rerun = self.run([*self.prep_cmd, "--output", str(run)])
        same = rerun.returncode == 0 and tree_digest(run) == tree_digest(ref)
        return Outcome("data prep killed", seed, f"{at:.1f} s, {units} unit(s) done"
                       + (" (it had finished)" if code == 0 else ""),
                       "rerun: the same bytes" if same else f"rerun: differs ({rerun.returncode})",
                       0, 0, same, round(time.monotonic() - start, 1))  # fmt: skip

    def cache(self, seed: int, run: Path) -> Outcome:
        rng = random.Random(seed)
        start = time.monotonic()
        cmd = [sys.executable, "-m", "pipeline.cache_teacher", "--data", str(self.data),
               "--teacher", str(self.teacher), "--top-k", "8", "--views", "2",
               "--batch-size", "8", "--quiet"]  # fmt: skip
        ref = self.work / "cache_reference"
        if not (ref / "manifest.json").is_file():
            self.timed("cache", lambda: self.check(self.run([*cmd, "--output", str(ref)])))
        at = self.moment("cache", rng)
        code, _ = self.strike([*cmd, "--output", str(run)], at,
                              lambda pid: os.killpg(pid, signal.SIGKILL))  # fmt: skip
        done = len(list(run.rglob("*.done.json"))) if run.is_dir() else 0
        rerun = self.run([*cmd, "--output", str(run)])
        same = rerun.returncode == 0 and tree_digest(run) == tree_digest(ref)
        return Outcome("teacher cache killed", seed, f"{at:.1f} s, {done} shard(s) done"
                       + (" (it had finished)" if code == 0 else ""),
                       "rerun: the same bytes" if same else f"rerun: differs ({rerun.returncode})",
                       0, 0, same, round(time.monotonic() - start, 1))  # fmt: skip


def _last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if "error:" in line]
    return lines[-1].strip() if lines else (text.strip().splitlines() or [""])[-1][:160]


def table(rows: list[Outcome]) -> str:
    head = (
        "| # | scenario | seed | where it struck | outcome | steps redone | committed lost | ok |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r.scenario} | {r.seed} | {r.struck} | {r.outcome} | {r.redone} "
                     f"| {r.lost} | {'yes' if r.ok else 'NO'} |")  # fmt: skip
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.tools.faults", description=__doc__)
    p.add_argument("--scenarios", type=int, default=50, help="how many (kinds in turn)")
    p.add_argument("--seed", type=int, default=0, help="scenario i uses seed SEED + i")
    p.add_argument("--workdir", default="fault_campaign", help="scratch folder (reused)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--json", help="write the outcomes here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    root = os.geteuid() == 0 and shutil.which("mount") and shutil.which("unshare")
    kinds = [k for k in args.kinds if root or k not in ("disk-full", "one-node")]
    work = Path(args.workdir).resolve()
    if work.is_dir() and any(work.iterdir()) and output_owner(work) != COMMAND:
        raise UserError(f"--workdir {work}: holds other files (not a campaign's); choose another")
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / OUTPUT_MARKER, {"command": COMMAND})
    campaign = Campaign(work, args.quiet)
    campaign.setup()
    rows = []
    for i in range(args.scenarios):
        kind, seed = kinds[i % len(kinds)], args.seed + i
        run = campaign.work / "scenarios" / f"{i:03d}-{kind}"
        for old in [run, *run.parent.glob(f"{run.name}.*")]:  # an earlier campaign's scratch
            if old.exists():
                subprocess.run(["umount", "-l", str(old)], capture_output=True, check=False)
                shutil.rmtree(old, ignore_errors=True)
        run.parent.mkdir(parents=True, exist_ok=True)
        outcome = getattr(campaign, kind.replace("-", "_"))(seed, run)
        rows.append(outcome)
        if not args.quiet:
            print(f"[{i + 1}/{args.scenarios}] {json.dumps(asdict(outcome))}", flush=True)
    print(table(rows))
    bad = [r for r in rows if not r.ok]
    lost = sum(r.lost for r in rows)
    print(f"{len(rows)} scenarios: {len(rows) - len(bad)} as required, {len(bad)} not; "
          f"committed steps lost: {lost}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
