"""Trainer pieces that need no process group: the LR schedule and the optimizer's groups.
(The loop itself runs in tests/test_integration_*.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config.schema import Config
from pipeline.run.optim import build_optimizer, lr_lambda


def test_lr_warms_up_linearly_then_decays_to_zero() -> None:
    fn = lr_lambda(100, 0.05)
    assert [fn(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert fn(5) == pytest.approx(1.0) and fn(50) == pytest.approx(50 / 95)
    assert fn(100) == 0.0 and fn(150) == 0.0
    no_warmup = lr_lambda(10, 0.0)
    assert no_warmup(0) == 1.0 and no_warmup(5) == pytest.approx(0.5)
    assert lr_lambda(3, 0.05)(0) == 1.0  # warm-up rounds to at least one step


def test_no_weight_decay_on_biases_and_layer_norms() -> None:
    module = torch.nn.Sequential()
    module.add_module("dense", torch.nn.Linear(4, 4))
    module.add_module("LayerNorm", torch.nn.LayerNorm(4))
    cfg = Config()
    cfg.optim.weight_decay = 0.01
    opt = build_optimizer(module, cfg)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3  # the bias and both LayerNorm tensors
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert opt.defaults["fused"]  # the kernel of GPU runs, on CPUs too


def test_the_learning_rate_is_a_function_of_the_step_alone(reference_run: Path) -> None:
    """No scheduler inside the engine (DeepSpeed does not step one on an fp16 overflow while the
    step and the data advance): each step runs at lr x schedule(step - 1), the rate it logs."""
    import json

    from pipeline.config.schema import OptimConfig

    records = [
        json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in records if "eval" not in r]
    fn, lr = lr_lambda(8, OptimConfig().warmup_fraction), OptimConfig().lr
    assert [r["lr"] for r in steps] == pytest.approx([lr * fn(r["step"] - 1) for r in steps])
