"""The distillation losses, as pure functions, and the module the DeepSpeed engine trains.

Every loss is computed in fp32 on the rows it needs:

* ``kd_loss``: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over scored positions;
* ``sparse_kd_loss``: the same from a sparse teacher (cached top-k log-probs with the tail mass
  as one extra bucket, or sampled tokens with their frequencies); equal to ``kd_loss`` when the
  sparse teacher covers the whole vocabulary;
* ``mlm_loss``: cross-entropy at the masked positions;
* ``cosine_loss``: 1 - cos(h_S, h_T) of the last hidden states, mean over non-pad positions;
* ``hidden_mse_loss``: (1/M) sum_j MSE(h_S^j, h_T^map(j)) over the M student layers.

Their weighted sum, the module the engine trains, is :mod:`pipeline.objective`.
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
    total = sum(
        F.mse_loss(s.float(), t.float())
        for s, t in zip(student_layers, teacher_layers, strict=True)
    )
    return total / len(student_layers)  # type: ignore[return-value]
