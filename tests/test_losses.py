"""Each loss term against a direct computation, and the sparse (cached-teacher) KL."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses import cosine_loss, hidden_mse_loss, kd_loss, mlm_loss, sparse_kd_loss


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 50, generator=g) * 3, torch.randn(7, 50, generator=g) * 3


def test_kd_loss_is_t2_times_kl(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, t = logits
    T = 2.0
    expected = 0.0
    for i in range(s.shape[0]):
        p = [math.exp(x / T) for x in t[i].tolist()]
        q = [math.exp(x / T) for x in s[i].tolist()]
        zp, zq = sum(p), sum(q)
        expected += sum(pi / zp * math.log((pi / zp) / (qi / zq)) for pi, qi in zip(p, q))
    expected = expected / s.shape[0] * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_runs_in_fp32_for_half_inputs(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, t = logits
    full = kd_loss(s, t, 2.0)
    half = kd_loss(s.bfloat16(), t.bfloat16(), 2.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=5e-2)


def test_mlm_loss_is_mean_negative_log_likelihood(
    logits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    s, _ = logits
    labels = torch.tensor([0, 5, 9, 49, 3, 3, 1])
    logp = torch.log_softmax(s.double(), -1)
    expected = -sum(logp[i, labels[i]].item() for i in range(7)) / 7
    assert mlm_loss(s, labels).item() == pytest.approx(expected, rel=1e-6)


def test_cosine_loss() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # 1 - cos: 0, 2, 1 - 1/sqrt(2)
    assert cosine_loss(a, b).item() == pytest.approx((0 + 2 + 1 - 2**-0.5) / 3, rel=1e-6)


def test_hidden_mse_loss_averages_layers() -> None:
    s = [torch.zeros(4, 3), torch.ones(4, 3)]
    t = [torch.ones(4, 3), torch.ones(4, 3) * 3]
    # layer 1: mean (1)^2 = 1; layer 2: mean (2)^2 = 4 -> (1 + 4) / 2
    assert hidden_mse_loss(s, t).item() == pytest.approx(2.5)


def test_sparse_kd_with_full_vocab_equals_online(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, t = logits
    T = 2.0
    logp = torch.log_softmax(t / T, -1)
    ids = torch.arange(50).expand(7, 50)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    got = sparse_kd_loss(s, ids[:, perm], logp[:, perm], T)
    assert got.item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)


def test_sparse_kd_top_k_keeps_the_tail_honest(logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, t = logits
    T = 1.0
    logp = torch.log_softmax(t / T, -1)
    full = kd_loss(s, t, T).item()
    previous = None
    for k in (5, 20, 45):
        top = logp.topk(k, dim=-1)
        sparse = sparse_kd_loss(s, top.indices, top.values, T).item()
        # The coarsened KL (k tokens + one tail bucket) never exceeds the full KL and grows to it.
        assert 0 <= sparse <= full + 1e-6
        if previous is not None:
            assert sparse >= previous - 1e-6
        previous = sparse
    assert previous == pytest.approx(full, rel=0.1)
    # Dropping the tail bucket would be dishonest: with the tail the student is still pushed
    # to move mass *off* the tail when the teacher has none there.
    top = logp.topk(5, dim=-1)
    assert sparse_kd_loss(s, top.indices, top.values, T).item() > 0


def test_sparse_kd_gradient_matches_online_with_full_vocab(
    logits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    s, t = logits
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    kd_loss(s1, t, 2.0).backward()
    ids = torch.arange(50).expand(7, 50)
    sparse_kd_loss(s2, ids, torch.log_softmax(t / 2.0, -1), 2.0).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)
