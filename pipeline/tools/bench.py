"""Throughput of the real training step: the DeepSpeed engine, our losses, our data path.

    python -m pipeline.tools.bench [--shapes 128x256,512x64] [--cases distil,distil_cached,plain,...]
        [--steps 10] [--warmup 3] [--size base|tiny] [--families bert,modernbert,...]
        [--data-prep] [--json OUT]

Each case builds the step exactly as ``pipeline.train`` does (``prepare`` + ``Trainer``), on
synthetic shards (random ids of the bert-base-uncased vocabulary) and a randomly initialised
teacher, runs ``--warmup`` steps, times ``--steps`` steps, and prints one JSON line:
``name, seq, batch, tokens_per_s, ms_per_step, peak_mem_gib, mfu`` (useful FLOPs, counted as
the team's GPU anchor script (``gpu_anchor.py``) counts them: teacher forward + 3x student forward with LM heads
at the 15% masked rows, over the measured dense bf16 matmul peak) and the settings.

Cases:
  distil           DistilBERT recipe (ce+mlm+cos), online teacher, ZeRO-2 engine
  distil_compiled  the same with torch.compile on both encoders
  distil_cached    ce+mlm from a teacher cache (top-32), no teacher forward
  plain            the distil step without DeepSpeed: the same module, fused AdamW, autocast
  mlm              MLM-only training of the student (teacher pretraining mode)
  loader           the data path alone: MicroBatches in background workers, tokens/s
``--size base``: bert-base teacher and 6 x 768 student (GPU); ``tiny``: 4 x 256 -> 2 x 256 (CPU).
``--families``: the teacher's family, one run of every case per family (default ``bert``; a
BERT teacher's student is a DistilBERT, every other family's student is of its own class),
each teacher at the ``--size`` shape with its family's own traits (:data:`FAMILY_TRAITS`).
MFU counts every family's FLOPs as BERT's (a gated MLP does 1.5x the FFN matmuls).
``--data-prep`` adds ``data_prep.tools.bench``'s rows (build_shards MB/s and tokens/s, reader tokens/s).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_prep.atomic import write_json
from data_prep.errors import cli_main
from pipeline.model.flops import step_flops_per_token
from pipeline.model.masked_lm import Shape

REPO = Path(__file__).resolve().parents[2]
BERT_VOCAB = REPO / "tests" / "assets" / "bert-base-uncased"
SIZES = {
    "base": {"hidden": 768, "layers": 12, "heads": 12, "ffn": 3072},
    "tiny": {"hidden": 256, "layers": 4, "heads": 4, "ffn": 1024},
}


def matmul_peak(device: torch.device) -> float:
    """Measured dense bf16 matmul TFLOP/s (the engines run in bf16 on both GPU and CPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    iters = 20 if device.type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


FAMILY_TRAITS: dict[str, dict[str, Any]] = {
    "bert": {},
    "roberta": {},
    "modernbert": {"global_attn_every_n_layers": 3, "local_attention": 128},
    "deberta-v2": {  # DeBERTa-v3's settings
        "relative_attention": True, "position_buckets": 256, "pos_att_type": ["p2c", "c2p"],
        "norm_rel_ebd": "layer_norm", "share_att_key": True, "position_biased_input": False,
        "type_vocab_size": 0, "max_relative_positions": -1,
    },
    "electra": {},  # a generator: embeddings as wide as the encoder
    "eurobert": {"num_key_value_heads_ratio": 2},  # grouped-query attention: 2 heads per K/V
}  # fmt: skip


def make_teacher(out: Path, size: str, family: str = "bert") -> Path:
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from pipeline.model.families import attn_implementation

    s = SIZES[size]
    traits = dict(FAMILY_TRAITS[family])
    if traits.pop("num_key_value_heads_ratio", None):
        traits["num_key_value_heads"] = s["heads"] // 2
    cfg = AutoConfig.for_model(
        family, vocab_size=30522, hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], intermediate_size=s["ffn"], max_position_embeddings=512,
        pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
        mask_token_id=103, **traits,
    )  # fmt: skip
    if family == "electra":
        cfg.embedding_size = s["hidden"]
    torch.manual_seed(0)
    attn = attn_implementation(family, "sdpa")
    AutoModelForMaskedLM.from_config(cfg, attn_implementation=attn).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(BERT_VOCAB)).save_pretrained(str(out))
    return out


def make_data(out: Path, seq: int, num: int) -> Path:
    """Synthetic shards: ``num`` full sequences of random ids, framed [CLS] ... [SEP]."""
    from data_prep.indexed import IndexedWriter
    from data_prep.manifest import DataManifest, ShardEntry, Split
    from data_prep.tokenizer import TextTokenizer

    tok = TextTokenizer(BERT_VOCAB)
    sid = tok.special_ids
    rng = np.random.default_rng(0)
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    splits: dict[str, Split] = {}
    for split, n in (("train", num), ("valid", 64)):
        with IndexedWriter(out / split / "00000-000", np.uint16) as writer:
            for _ in range(n):
                body = rng.integers(1000, tok.vocab_size, seq - 2, dtype=np.int64)
                if split == "train":
                    np.add.at(counts, body, 1)
                writer.add(np.r_[sid.cls, body, sid.sep].astype(np.uint16))
            info = writer.finalize()
        entry = ShardEntry(
            f"{split}/00000-000", info.num_sequences, info.num_tokens, info.sha256_bin,
            info.sha256_idx,
        )  # fmt: skip
        splits[split] = Split(info.num_sequences, info.num_tokens, (entry,))
    manifest = DataManifest(
        seq_len=seq, vocab_size=tok.vocab_size, dtype="uint16", special_ids=sid,
        tokenizer=tok.info, settings={"synthetic": True}, splits=splits, stats={},
        token_counts=counts.tolist(),
    )  # fmt: skip
    write_json(out / "manifest.json", manifest.to_json())
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        from pipeline.distributed.comm import device_for, init_process_group
        from pipeline.distributed.launch import detect

        self.args = args
        self.work = work
        self.env = detect()
        self.device = device_for(self.env)
        init_process_group(self.env, self.device)
        self.peak = matmul_peak(self.device)
        self.family = "bert"
        self.teacher = make_teacher(work / "teacher", args.size)
        self.gpu = self.device.type == "cuda"

    def config(self, case: str, seq: int, batch: int, data: Path, out: Path) -> tuple[Any, Any]:
        from pipeline.config.schema import Config, validate

        cfg = Config()
        cfg.model.teacher = str(self.teacher)
        cfg.data.data = [str(data)]
        cfg.data.num_workers = 2
        cfg.train.output = str(out)
        cfg.train.resume = "none"
        cfg.train.max_steps = self.args.warmup + self.args.steps
        cfg.train.global_batch_size = batch
        cfg.train.micro_batch_size = batch
        cfg.train.max_micro_batch = batch
        cfg.train.log_every = 10**9
        cfg.train.eval_every = 0
        cfg.train.save_every = 0
        fp16 = self.gpu and self.args.precision == "fp16"
        cfg.train.ds_config = str(
            REPO / "ds_configs" / ("zero2_fp16.json" if fp16 else "zero2_bf16.json")
        )
        if case == "distil_compiled":
            cfg.model.compile = True
        if case == "distil_cached":
            cfg.loss.alpha_cos = 0.0
            cfg.data.teacher_cache = str(self.work / f"cache_{seq}_{batch}")
        if case == "mlm":
            cfg.loss.alpha_ce = cfg.loss.alpha_cos = 0.0
        return cfg, validate(cfg)

    def build_cache(self, cfg: Any) -> None:
        if Path(cfg.data.teacher_cache, "manifest.json").is_file():
            return
        from pipeline.cache_teacher.__main__ import main as cache_teacher

        cache_teacher([
            "--data", cfg.data.data[0], "--teacher", cfg.model.teacher, "--output", cfg.data.teacher_cache,
            "--top-k", "32", "--views", "1", "--train.seed", str(cfg.train.seed),
        ])  # fmt: skip

    def run_case(self, case: str, seq: int, batch: int) -> dict[str, Any]:
        from pipeline.run.plan import prepare, resolve_models
        from pipeline.run.trainer import Trainer

        steps, warmup = self.args.steps, self.args.warmup
        data = self.work / f"data_{seq}_{batch}"
        if not (data / "manifest.json").is_file():
            make_data(data, seq, batch * (steps + warmup) + batch)
        cfg, paths = self.config(case, seq, batch, data, self.work / f"run_{case}_{seq}")
        if case == "distil_cached":
            self.build_cache(cfg)
        plan = prepare(cfg, paths, resolve_models(cfg), self.env, self.device)
        engine = self.plain_engine(plan, cfg) if case == "plain" else None
        trainer = Trainer(cfg, self.env, self.device, plan, engine=engine)
        if case == "loader":
            return self.time_loader(trainer, seq, batch)
        batches = trainer.train_batches()
        if self.gpu:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            trainer.train_step(batches)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batches)
        _sync(self.device)
        elapsed = (time.perf_counter() - start) / steps
        record = self.record(case, seq, batch, elapsed, plan, cfg)
        del trainer, plan, batches
        self.cleanup()
        return record

    def plain_engine(self, plan: Any, cfg: Any) -> Any:
        """The same step without DeepSpeed: fp32 weights, bf16 autocast (GPU), fused AdamW."""
        from pipeline.model.objective import StudentWithLoss

        module = StudentWithLoss(plan.student, cfg.loss, plan.alignment, True)
        module = module.to(self.device).train()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True if self.gpu else None)
        device, gpu = self.device, self.gpu

        class PlainEngine:
            def __call__(self, *a: Any) -> Any:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
                    return module(*a)

            def backward(self, loss: torch.Tensor) -> None:
                loss.backward()

            def step(self) -> None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

        return PlainEngine()

    def time_loader(self, trainer: Any, seq: int, batch: int) -> dict[str, Any]:
        it = trainer.train_batches(num_workers=2)
        n = self.args.steps + self.args.warmup
        next(it)
        start = time.perf_counter()
        tokens = sum(int(next(it)["attention_mask"].sum()) for _ in range(n - 1))
        elapsed = time.perf_counter() - start
        del trainer
        self.cleanup()
        return {"name": "loader", "seq": seq, "batch": batch, "tokens_per_s": round(tokens / elapsed),
                "ms_per_step": round(1e3 * elapsed / (n - 1), 2), "workers": 2, "pin_memory": self.gpu}  # fmt: skip

    def record(
        self, case: str, seq: int, batch: int, elapsed: float, plan: Any, cfg: Any
    ) -> dict[str, Any]:
        s, vocab = SIZES[self.args.size], 30522
        teacher = Shape(s["layers"], s["hidden"], s["heads"], s["ffn"])
        teacher_runs = case in ("distil", "distil_compiled", "plain")
        per_token = step_flops_per_token(
            seq, Shape.of(plan.student.config), teacher, vocab, teacher_runs
        )
        useful = seq * batch * per_token
        mem = torch.cuda.max_memory_allocated() / 2**30 if self.gpu else 0.0
        return {
            "name": case, "family": self.family, "seq": seq, "batch": batch,
            "tokens_per_s": round(seq * batch / elapsed), "ms_per_step": round(elapsed * 1e3, 2),
            "peak_mem_gib": round(mem, 2), "mfu": round(useful / elapsed / 1e12 / self.peak, 4),
            "precision": plan.engine.precision if case != "plain" else "bf16-autocast",
            "compile": cfg.model.compile, "device": torch.cuda.get_device_name() if self.gpu else "cpu",
            "matmul_peak_tflops": round(self.peak, 1),
        }  # fmt: skip

    def cleanup(self) -> None:
        gc.collect()
        if self.gpu:
            torch.cuda.empty_cache()


def data_prep_rows(mb: float) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "data_prep.tools.bench", "--mb", str(mb), "--json"],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    rows = []
    for line in result.stdout.splitlines():
        with contextlib.suppress(ValueError):
            rows.append({"group": "data_prep", **json.loads(line)})
    return rows


@cli_main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.tools.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--shapes",
        default=None,
        help="SEQxBATCH,... (default: 128x256,512x64 on GPU, 128x8 on CPU)",
    )
    p.add_argument("--cases", default="distil,distil_cached,plain,mlm,loader")
    p.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="default: base on GPU, tiny on CPU"
    )
    p.add_argument(
        "--families",
        default="bert",
        help=f"teacher families, comma-separated ({', '.join(FAMILY_TRAITS)}); default bert",
    )
    p.add_argument(
        "--precision", choices=("bf16", "fp16"), default="bf16", help="GPU engine precision"
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data-prep", action="store_true", help="add data_prep.tools.bench rows")
    p.add_argument("--json", help="also write all rows to this file")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    gpu = torch.cuda.is_available()
    args.size = args.size or ("base" if gpu else "tiny")
    shapes = [
        tuple(int(x) for x in s.split("x"))
        for s in (args.shapes or ("128x256,512x64" if gpu else "128x8")).split(",")
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="distil-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        for family in args.families.split(","):
            if family not in FAMILY_TRAITS:
                raise SystemExit(f"--families {family}: one of {', '.join(FAMILY_TRAITS)}")
            if family != bench.family:
                bench.family = family
                bench.teacher = make_teacher(Path(tmp) / f"teacher_{family}", args.size, family)
            for seq, batch in shapes:
                for case in args.cases.split(","):
                    try:
                        rows.append(bench.run_case(case, seq, batch))
                    except Exception as exc:  # one failing case must not hide the others
                        rows.append(
                            {"name": case, "family": family, "seq": seq, "batch": batch,
                             "error": repr(exc)[:300]}
                        )  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    if args.data_prep:
        for row in data_prep_rows(8.0):
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
