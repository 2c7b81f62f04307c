"""Helpers of the training tests: tiny teachers, launching pipeline.train, reading metrics.

The fixtures built on them (``tiny_teacher``) live in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def make_bert_teacher(
    out: Path,
    tokenizer_dir: Path,
    layers: int = 4,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 128,
    seed: int = 0,
    with_head: bool = True,
) -> Path:
    """A randomly initialised BertForMaskedLM (or a BertModel without head) saved with a tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(cfg) if with_head else BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():  # a non-zero token-type row 0, so folding it into positions matters
        emb = model.bert.embeddings if with_head else model.embeddings
        emb.token_type_embeddings.weight.normal_(0, 0.02)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def base_args(teacher: Path | None, data: Path, out: Path, **overrides: Any) -> list[str]:
    """A short, fast run: global batch 8, 6 steps, log every step, fp32 (bitwise comparable)."""
    opts: dict[str, Any] = {
        "--data": data,
        "--output": out,
        "--max-steps": 6,
        "--global-batch-size": 8,
        "--log-every": 1,
        "--eval-every": 0,
        "--save-every": 0,
        "--train.eval_samples": 16,
        "--data.num_workers": 1,
        "--ds-config": REPO / "ds_configs" / "zero2_fp32.json",
    }
    if teacher is not None:
        opts["--teacher"] = teacher
    opts.update({k if k.startswith("--") else f"--{k}": v for k, v in overrides.items()})
    args: list[str] = []
    for key, value in opts.items():
        if value is not None:
            args += [key, str(value)]
    return args


NCCL_EMULATION = REPO / "tests" / "nccl_emulation"
# A launch gets its ranks from its own launcher, never from the test process's environment.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def train_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the runs the tests launch: CPU, one thread per rank, and NCCL's device
    rule for our collectives (tests/nccl_emulation/sitecustomize.py), so a CPU tensor on the
    default group fails here as it would on a GPU node."""
    pythonpath = os.environ.get("PYTHONPATH", "")
    inherited = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env = {
        **inherited,
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{NCCL_EMULATION}{os.pathsep + pythonpath if pythonpath else ''}",
        "DISTIL_EMULATE_NCCL": "1",
    }
    env.update(extra or {})
    if env["DS_ACCELERATOR"] == "cpu":  # a CPU run stays on the CPU on a GPU machine too
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def launch(
    args: list[str],
    nproc: int = 1,
    launcher: str = "torchrun",
    timeout: int = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run pipeline.train under a launcher; output captured."""
    if launcher == "python":
        cmd = [sys.executable, "-m", "pipeline.train", *args]
    elif launcher == "torchrun":
        cmd = [
            str(VENV_BIN / "torchrun"),
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(_free_port()),
            "-m",
            "pipeline.train",
            *args,
        ]
    elif launcher == "deepspeed":
        cmd = [
            str(VENV_BIN / "deepspeed"),
            "--num_gpus",
            str(nproc),
            "--master_port",
            str(_free_port()),
            "--module",
            "pipeline.train",
            *args,
        ]
    elif launcher == "mpirun":
        mpirun = shutil.which("mpirun")
        assert mpirun, "mpirun not installed (apt-get install openmpi-bin)"
        cmd = [
            mpirun,
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            str(nproc),
            "-x",
            "PATH",
            "-x",
            "DS_ACCELERATOR",
            "-x",
            "OMP_NUM_THREADS",
            sys.executable,
            "-m",
            "pipeline.train",
            *args,
        ]
    else:
        raise ValueError(launcher)
    return subprocess.run(
        cmd, cwd=REPO, env=train_env(env), capture_output=True, text=True, timeout=timeout
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_ok(result: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert result.returncode == code, (
        f"exit {result.returncode}, expected {code}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )


def step_records(run_dir: Path) -> list[dict[str, Any]]:
    """The per-step records of metrics.jsonl (validation records left out)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval" not in r]


def eval_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval" in r]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in step_records(run_dir)]


def sample_log(run_dir: Path) -> dict[int, list[int]]:
    """step -> sorted sample indices consumed in that step, over all ranks."""
    out: dict[int, list[int]] = {}
    for path in sorted((run_dir / "samples").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(rec["step"], []).extend(rec["samples"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def torchrun_node(rank: int, master: str, port: int, args: list[str]) -> list[str]:
    """The torchrun command of "node" ``rank`` of two, one rank each."""
    return [
        str(VENV_BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(rank),
        "--nproc_per_node", "1", "--master_addr", master, "--master_port", str(port),
        "-m", "pipeline.train", *args,
    ]  # fmt: skip


def run_nodes(
    cmds: list[list[str]], timeout: int = 240, envs: list[dict[str, str]] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands at once (one per "node", each with its own extra environment) and wait
    for all; a timeout kills them all."""
    procs = [
        subprocess.Popen(
            c,
            cwd=REPO,
            env=train_env(envs[i] if envs else None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, c in enumerate(cmds)
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results
