"""The optimizer and the learning-rate schedule of a run.

:func:`build_optimizer`: AdamW over the engine's module, no weight decay on biases and norms,
fused. :func:`lr_lambda`: linear warm-up, then linear decay to 0 at ``max_steps``.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config.schema import Config


def lr_lambda(max_steps: int, warmup_fraction: float) -> Any:
    """Linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0."""
    warmup = max(1, round(warmup_fraction * max_steps)) if warmup_fraction > 0 else 0

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return fn


def build_optimizer(module: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with no weight decay on biases and LayerNorms; fused (one kernel for every tensor, on
    CUDA and, since torch 2.4, on CPUs), so CPU runs take the optimizer path of GPU runs."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in module.named_parameters():
        if p.requires_grad:
            no_norm = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
            (no_decay if no_norm else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    o = cfg.optim
    beta1, beta2 = o.betas
    return torch.optim.AdamW(groups, lr=o.lr, betas=(beta1, beta2), eps=o.eps, fused=True)
