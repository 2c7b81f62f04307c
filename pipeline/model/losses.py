"""The distillation losses, as pure functions, and the module the DeepSpeed engine trains.

Every loss is computed in fp32 on the rows it needs:

* ``kd_loss``: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over scored positions;
* ``sparse_kd_loss``: the same from a sparse teacher (cached top-k log-probs with the tail mass
  as one extra bucket, or sampled tokens with their frequencies); equal to ``kd_loss`` when the
  sparse teacher covers the whole vocabulary;
* ``mlm_loss``: cross-entropy at the masked positions;
* ``cosine_loss``: 1 - cos(h_S, h_T) of the last hidden states, mean over non-pad positions;
* ``hidden_mse_loss``: (1/M) sum_j MSE(h_S^j, h_T^map(j)) over the M student layers;
* ``layer_sum_mse``: sum_j MSE(h_S^j W, h_T^j), TinyBERT's embedding and hidden-state loss (the
  projection W is applied by the caller, :mod:`pipeline.model.objective`);
* ``attention_loss``: TinyBERT's attention loss at one layer, against ``attention_target``: MSE
  of the scaled scores QK^T/sqrt(d) over non-pad query-key pairs, or KL(teacher || student) of the
  attention distributions per non-pad query; teacher heads averaged in groups, one per student
  head;
* ``relation_kl``: MiniLMv2's loss of one relation (Q-Q, K-K or V-V) against
  ``relation_probs`` of the teacher: X of each model is split into R relation heads of size
  d_r = H / R, the relation of head r is softmax(X_r X_r^T / sqrt(d_r)) over the non-pad keys,
  and the loss is KL(teacher || student) per non-pad query row, averaged over rows and heads.

The attention losses take Q, K, V as the projections output them, [B, S, H] with the heads side
by side, and ``valid`` [B, S] (True at non-pad positions; None when nothing is padded).

Their weighted sum, the module the engine trains, is :mod:`pipeline.model.objective`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over rows, in fp32."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2


def sparse_kd_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T^2 * KL between the teacher and student distributions coarsened to K tokens + one tail bucket.

    ``teacher_logp`` [N, K] are the teacher's log-probabilities at temperature T of ``teacher_ids``
    (top-k: exact values; sampled: log of each token's sample frequency). The teacher's tail mass is
    ``1 - sum(p)``; the student's is the mass outside the K ids. With K = V this is ``kd_loss``.
    """
    log_q_all = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = log_q_all.gather(-1, teacher_ids.long())
    log_p = teacher_logp.float()
    p = log_p.exp()
    # Entries with p = 0 (log p = -inf: unused slots of a sampled row) add exactly nothing.
    kl_k = (p * torch.where(p > 0, log_p - log_q, torch.zeros_like(log_p))).sum(-1)
    log_q_tail = torch.logsumexp(log_q_all.scatter(-1, teacher_ids.long(), float("-inf")), dim=-1)
    # Tail mass below rounding noise (sampled frequencies summing to 1) counts as none, and so does
    # any when the K ids cover the whole vocabulary (K = V: the fp32 sum of V probabilities is
    # off by more than 1e-6, and there is no student tail to put it in).
    p_tail = 1.0 - p.sum(-1)
    p_tail = torch.where(
        (p_tail > 1e-6) & torch.isfinite(log_q_tail), p_tail, torch.zeros_like(p_tail)
    )
    kl_tail = torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail.clamp_min(-100.0)
    return (kl_k + kl_tail).mean() * temperature**2


def mlm_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student at the scored rows (``labels`` holds their true ids)."""
    return F.cross_entropy(student_logits.float(), labels)


def cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos over rows (the non-pad positions, already selected)."""
    return (
        1.0 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    ).mean()


def hidden_mse_loss(
    student_layers: list[torch.Tensor], teacher_layers: list[torch.Tensor]
) -> torch.Tensor:
    """(1/M) sum over the M student layers of the MSE to the mapped teacher layer."""
    return layer_sum_mse(student_layers, teacher_layers) / len(student_layers)


def layer_sum_mse(
    student_layers: list[torch.Tensor], teacher_layers: list[torch.Tensor]
) -> torch.Tensor:
    """sum over the layers of MSE(student, teacher): TinyBERT's L_embd + sum_m L_hidn (weights 1)."""
    total = sum(
        F.mse_loss(s.float(), t.float())
        for s, t in zip(student_layers, teacher_layers, strict=True)
    )
    return total  # type: ignore[return-value]


_MASKED = -1e9  # a key at a pad position: exp() is exactly 0 in fp32, and nothing is inf or nan


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, S, H] -> [B, heads, S, H / heads] in fp32 (the layout of multi-head attention)."""
    b, s, h = x.shape
    return x.float().view(b, s, heads, h // heads).transpose(1, 2)


def scaled_dot(x: torch.Tensor, y: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, heads, S, S]: X_h Y_h^T / sqrt(d_h) per head (attention scores when X = Q, Y = K)."""
    xs, ys = split_heads(x, heads), split_heads(y, heads)
    return xs @ ys.transpose(-1, -2) * xs.shape[-1] ** -0.5


def _mask_keys(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return scores if valid is None else scores.masked_fill(~valid[:, None, None, :], _MASKED)


def _row_mean(per_row: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of [B, h, S] over the non-pad rows (and heads)."""
    if valid is None:
        return per_row.mean()
    weight = valid[:, None, :].to(per_row.dtype).expand_as(per_row)
    return (per_row * weight).sum() / weight.sum()


def attention_target(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: int,
    groups: int,
    kind: str,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    """The teacher's side of ``attention_loss``, [B, heads / groups, S, S]: the scaled scores
    (``scores``) or the attention probabilities over non-pad keys (``probs``), averaged over each
    group of ``groups`` consecutive heads (an average of distributions is a distribution)."""
    scores = scaled_dot(q, k, heads)
    maps = scores if kind == "scores" else _mask_keys(scores, valid).softmax(-1)
    b, h, s, _ = maps.shape
    return maps.view(b, h // groups, groups, s, s).mean(2)


def attention_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: int,
    target: torch.Tensor,
    kind: str,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    """TinyBERT's attention loss of one layer: the student's Q, K against the teacher's target."""
    scores = scaled_dot(q, k, heads)
    if kind == "scores":
        sq = (scores - target).square()
        if valid is None:
            return sq.mean()
        pairs = (valid[:, None, :, None] & valid[:, None, None, :]).to(sq.dtype).expand_as(sq)
        return (sq * pairs).sum() / pairs.sum()
    log_q = _mask_keys(scores, valid).log_softmax(-1)
    # p log p - p log q, with 0 log 0 = 0 at pad keys (where p is exactly 0); p log p is constant
    with torch.no_grad():
        neg_entropy = torch.xlogy(target, target).sum(-1)
    return _row_mean(neg_entropy - (target * log_q).sum(-1), valid)


def relation_log_probs(x: torch.Tensor, heads: int, valid: torch.Tensor | None) -> torch.Tensor:
    """[B, R, S, S]: log softmax(X_r X_r^T / sqrt(d_r)) over the non-pad keys, R = ``heads``."""
    return _mask_keys(scaled_dot(x, x, heads), valid).log_softmax(-1)


def relation_probs(x: torch.Tensor, heads: int, valid: torch.Tensor | None) -> torch.Tensor:
    """[B, R, S, S]: softmax(X_r X_r^T / sqrt(d_r)) over the non-pad keys (0 at pad keys)."""
    return _mask_keys(scaled_dot(x, x, heads), valid).softmax(-1)


def relation_kl(
    student_x: torch.Tensor,
    teacher_p: torch.Tensor,
    heads: int,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    """MiniLMv2's loss of one relation: KL(teacher || student) per non-pad query row, averaged
    over rows and the R relation heads. ``teacher_p`` is :func:`relation_probs` of the teacher."""
    log_q = relation_log_probs(student_x, heads, valid)
    # sum p log p is a constant: computed outside the graph, so that the backward pass keeps only
    # the student's log-probabilities (and the teacher's target), one map per relation
    with torch.no_grad():
        neg_entropy = torch.xlogy(teacher_p, teacher_p).sum(-1)
    kl = neg_entropy - (teacher_p * log_q).sum(-1)
    return _row_mean(kl, valid)
