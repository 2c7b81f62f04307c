"""FLOPs of a training step and the peak they are measured against: the MFU of the log line.

Counted as ``pipeline/tools/gpu_anchor.py`` and ``pipeline.tools.bench`` count them: the matmul
FLOPs of one token's forward (attention projections, the score and value products, the FFN, the
LM head on the masked share of tokens), times 3 for the student (forward + backward) and 1 for the
teacher (forward only, when it runs). The peak is the device's dense bf16 matmul rate from its
datasheet (:data:`DATASHEET_BF16_TFLOPS`, matched on the CUDA device name) or
``train.peak_tflops``; a device with neither (a CPU) gets no MFU rather than a made-up one.
"""

from __future__ import annotations

import torch

from pipeline.model.masked_lm import Shape

MASKED_SHARE = 0.15
"""The share of positions the LM head runs on (the 15% masked rows)."""

DATASHEET_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,  # fp16 tensor cores (no bf16): what its fp16 runs are measured against
}
"""Dense (not sparse) bf16 tensor-core TFLOP/s by the vendor's datasheet; the first key found in
the device name wins, so the more specific names come first."""


def flops_per_token(seq: int, shape: Shape, vocab: int, head_share: float = MASKED_SHARE) -> float:
    """Matmul FLOPs of one token's forward through an encoder of ``shape`` at length ``seq``."""
    d, ffn = shape.hidden, shape.intermediate
    per_layer = 2 * (4 * d * d + 2 * d * ffn) + 4 * seq * d
    return shape.layers * per_layer + head_share * 2 * (d * d + d * vocab)


def step_flops_per_token(
    seq: int, student: Shape, teacher: Shape | None, vocab: int, teacher_runs: bool
) -> float:
    """Useful FLOPs per token of one training step: the student's forward and backward, and the
    teacher's forward when it runs (not when its logits come from the cache alone)."""
    flops = 3 * flops_per_token(seq, student, vocab)
    if teacher is not None and teacher_runs:
        flops += flops_per_token(seq, teacher, vocab)
    return flops


def device_peak_tflops(device: torch.device, configured: float = 0.0) -> float | None:
    """``configured`` when set, else the datasheet peak of a known CUDA device, else None."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return peak
    return None
