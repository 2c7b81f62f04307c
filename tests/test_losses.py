"""Each loss term against a direct computation, and the sparse (cached-teacher) KL."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.model.losses import (
    attention_loss,
    attention_target,
    cosine_loss,
    hidden_mse_loss,
    kd_loss,
    layer_sum_mse,
    mlm_loss,
    relation_kl,
    relation_probs,
    sparse_kd_loss,
)


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


# --- TinyBERT attention and MiniLMv2 relations, against loops over heads, rows and keys --------
def _qkv(b: int, s: int, width: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, width, generator=g) for _ in range(3)]


# sequence 0 is full, sequence 1 has two pad positions at the end
VALID = torch.tensor([[True] * 5, [True, True, True, False, False]])


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _dot_rows(x: torch.Tensor, heads: int, b: int, h: int, i: int) -> list[float]:
    """X_h[i] . X_h[j] / sqrt(d) for every j of sequence b (a relation row; Q.K when x = (q, k))."""
    q, k = x if isinstance(x, tuple) else (x, x)
    d = q.shape[-1] // heads
    qi = q[b, i, h * d : (h + 1) * d].double()
    return [
        float(qi @ k[b, j, h * d : (h + 1) * d].double()) / math.sqrt(d) for j in range(q.shape[1])
    ]


def test_attention_scores_mse_with_fewer_student_heads() -> None:
    """Teacher 4 heads of 6 (width 24), student 2 heads of 4 (width 8): each student head learns
    the mean of the scores of 2 consecutive teacher heads, at non-pad query-key pairs only."""
    tq, tk, _ = _qkv(2, 5, 24, 0)
    sq, sk, _ = _qkv(2, 5, 8, 1)
    target = attention_target(tq, tk, 4, 2, "scores", VALID)
    got = attention_loss(sq, sk, 2, target, "scores", VALID).item()
    total, count = 0.0, 0
    for b in range(2):
        keys = [j for j in range(5) if VALID[b, j]]
        for h in range(2):
            for i in keys:
                t0, t1 = (
                    _dot_rows((tq, tk), 4, b, 2 * h, i),
                    _dot_rows((tq, tk), 4, b, 2 * h + 1, i),
                )
                s = _dot_rows((sq, sk), 2, b, h, i)
                for j in keys:
                    total += (s[j] - (t0[j] + t1[j]) / 2) ** 2
                    count += 1
    assert got == pytest.approx(total / count, rel=1e-5)
    # the same heads and widths: zero
    same = attention_target(sq, sk, 2, 1, "scores", VALID)
    assert attention_loss(sq, sk, 2, same, "scores", VALID).item() == pytest.approx(0, abs=1e-6)


def test_attention_probs_kl_with_fewer_student_heads() -> None:
    tq, tk, _ = _qkv(2, 5, 24, 2)
    sq, sk, _ = _qkv(2, 5, 8, 3)
    target = attention_target(tq, tk, 4, 2, "probs", VALID)
    got = attention_loss(sq, sk, 2, target, "probs", VALID).item()
    total, rows = 0.0, 0
    for b in range(2):
        keys = [j for j in range(5) if VALID[b, j]]
        for h in range(2):
            for i in keys:
                p0 = _softmax([_dot_rows((tq, tk), 4, b, 2 * h, i)[j] for j in keys])
                p1 = _softmax([_dot_rows((tq, tk), 4, b, 2 * h + 1, i)[j] for j in keys])
                p = [(a + c) / 2 for a, c in zip(p0, p1)]
                q = _softmax([_dot_rows((sq, sk), 2, b, h, i)[j] for j in keys])
                total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
                rows += 1
    assert got == pytest.approx(total / rows, rel=1e-5)
    assert torch.allclose(target[1, :, :, 3:], torch.zeros(1))  # no mass on pad keys


@pytest.mark.parametrize("relation_heads", [1, 2, 4])
def test_relation_kl_across_widths_and_heads(relation_heads: int) -> None:
    """Teacher width 12, student width 8 (their attention heads do not matter): X of each split
    into R relation heads of 12/R and 8/R; KL per non-pad row of softmax(X_r X_r^T / sqrt(d_r))."""
    teacher_x = _qkv(2, 5, 12, 4)[2]
    student_x = _qkv(2, 5, 8, 5)[2]
    p = relation_probs(teacher_x, relation_heads, VALID)
    got = relation_kl(student_x, p, relation_heads, VALID).item()
    total, rows = 0.0, 0
    for b in range(2):
        keys = [j for j in range(5) if VALID[b, j]]
        for r in range(relation_heads):
            for i in keys:
                p = _softmax([_dot_rows(teacher_x, relation_heads, b, r, i)[j] for j in keys])
                q = _softmax([_dot_rows(student_x, relation_heads, b, r, i)[j] for j in keys])
                total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
                rows += 1
    assert got == pytest.approx(total / rows, rel=1e-5)
    # unpadded: every row counts
    full = relation_kl(
        student_x, relation_probs(teacher_x, relation_heads, None), relation_heads, None
    )
    assert full.item() > 0
    assert relation_kl(
        teacher_x, relation_probs(teacher_x, relation_heads, VALID), relation_heads, VALID
    ).item() == pytest.approx(0, abs=1e-6)


def test_pad_positions_change_nothing() -> None:
    """What sits at pad positions (garbage Q/K/V of padding tokens) does not move the losses."""
    tq, tk, tv = _qkv(2, 5, 12, 6)
    sq, sk, sv = _qkv(2, 5, 8, 7)
    before = [
        relation_kl(sv, relation_probs(tv, 4, VALID), 4, VALID),
        attention_loss(sq, sk, 2, attention_target(tq, tk, 2, 1, "scores", VALID), "scores", VALID),
        attention_loss(sq, sk, 2, attention_target(tq, tk, 2, 1, "probs", VALID), "probs", VALID),
    ]
    for x in (tq, tk, tv, sq, sk, sv):
        x[1, 3:] = 1e3
    after = [
        relation_kl(sv, relation_probs(tv, 4, VALID), 4, VALID),
        attention_loss(sq, sk, 2, attention_target(tq, tk, 2, 1, "scores", VALID), "scores", VALID),
        attention_loss(sq, sk, 2, attention_target(tq, tk, 2, 1, "probs", VALID), "probs", VALID),
    ]
    for a, b in zip(before, after):
        assert torch.isfinite(b) and b.item() == pytest.approx(a.item(), rel=1e-6)


def test_layer_sum_mse_sums_layers() -> None:
    s = [torch.zeros(4, 3), torch.ones(4, 3)]
    t = [torch.ones(4, 3), torch.ones(4, 3) * 3]
    assert layer_sum_mse(s, t).item() == pytest.approx(1 + 4)


def test_attention_losses_keep_about_two_maps_per_map_for_backward() -> None:
    """The memory the README states: per distilled [heads, S, S] map, the teacher's target and
    about one student map are held for the backward pass (measured with saved-tensor hooks)."""
    s, heads = 128, 12
    one_map = 4 * heads * s * s
    g = torch.Generator().manual_seed(0)
    tq, tk, tv = (torch.randn(1, s, 96, generator=g) for _ in range(3))
    sq, sk, sv = (torch.randn(1, s, 48, generator=g).requires_grad_() for _ in range(3))
    valid = torch.ones(1, s, dtype=torch.bool)
    valid[0, -5:] = False

    def held(fn, targets):  # type: ignore[no-untyped-def]
        seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in targets}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(seen.values())

    rel_targets = [relation_probs(x, heads, valid) for x in (tq, tk, tv)]
    rel = held(
        lambda: [relation_kl(x, t, heads, valid) for x, t in zip((sq, sk, sv), rel_targets)],
        rel_targets,
    )
    assert 6 * one_map <= rel <= 6.5 * one_map  # three relations, two maps each
    for kind in ("scores", "probs"):
        target = attention_target(tq, tk, heads, 1, kind, valid)
        att = held(lambda: attention_loss(sq, sk, heads, target, kind, valid), [target])  # noqa: B023
        assert 2 * one_map <= att <= 2.3 * one_map, kind
