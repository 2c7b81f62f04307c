"""Inference throughput of a masked LM on this machine: sequences per second at a fixed shape.

    python -m pipeline.tools.speed --model HF_DIR [--batch-size 32] [--seq-len 128] [--seconds 10]

What distillation is for: the demo measures teacher and student with the same call, twice: the
encoder alone (what a fine-tuned classifier or an embedding model runs) and with the MLM head
(a 384 x 30,522 decoder costs more than several layers of a small model). fp32, the model's own
attention kernel, random token ids (the cost does not depend on the tokens), no padding; a
warm-up batch first, then as many batches as fit in ``seconds`` (at least three).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from data_prep.errors import UserError, cli_main
from data_prep.flags import HelpFormatter, renamed
from data_prep.hub import resolve


@torch.inference_mode()
def throughput(
    model_dir: Path, batch: int = 32, seq_len: int = 128, seconds: float = 10.0, head: bool = False
) -> dict[str, Any]:
    """Measured forward passes of ``model_dir`` on the CPU or the GPU: the encoder's last hidden
    states, or with ``head`` the MLM logits too."""
    from transformers import AutoModel, AutoModelForMaskedLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = AutoModelForMaskedLM if head else AutoModel
    model = loader.from_pretrained(str(model_dir)).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq_len), generator=generator).to(
        device
    )
    mask = torch.ones_like(ids)

    def forward() -> None:
        model(input_ids=ids, attention_mask=mask)
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward()  # warm-up: allocation, kernel choice
    batches, start = 0, time.perf_counter()
    while batches < 3 or time.perf_counter() - start < seconds:
        forward()
        batches += 1
    elapsed = time.perf_counter() - start
    return {
        "sequences_per_s": batches * batch / elapsed,
        "batch": batch,
        "seq_len": seq_len,
        "mlm_head": head,
        "batches": batches,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "params": sum(p.numel() for p in model.parameters()),
    }


PROG = "python -m pipeline.tools.speed"
RENAMED = {"--batch": "--batch-size"}  # old spellings, accepted until the next release


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=HelpFormatter,
        epilog="old spellings, accepted until the next release: --batch (--batch-size)",
    )
    p.add_argument("--model", required=True, help="a Hugging Face model folder or hub ID")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (no padding)")
    p.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="time budget of the measured batches (at least three run)",
    )
    p.add_argument("--mlm-head", action="store_true", help="time the MLM logits too")
    return p


@cli_main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(renamed(argv, RENAMED, PROG))
    args.model = resolve(args.model, "--model")
    if not (args.model / "config.json").is_file():
        raise UserError(
            f"--model {args.model}: no config.json there; give a Hugging Face model folder"
        )
    result = throughput(args.model, args.batch_size, args.seq_len, args.seconds, args.mlm_head)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
