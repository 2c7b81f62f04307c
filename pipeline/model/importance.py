"""How much each part of a teacher matters, measured on calibration data: what ``init prune`` keeps.

Activation-based importance, after Minitron (Muralidharan et al. 2024, "Compact Language Models
via Pruning and Knowledge Distillation", sec. 2.2) and ShortGPT's block importance (Men et al.
2024). One forward pass of the teacher over the calibration sequences, with forward hooks; every
score is a mean over the non-pad tokens of all the sequences:

* head ``h`` of layer ``l``: the L2 norm of the head's attention output (its slice of the input
  of the attention output projection, before that projection mixes the heads);
* FFN neuron ``n`` of layer ``l``: the magnitude of its activation (the input of the FFN's second
  matrix, after the nonlinearity);
* residual channel ``c`` (the embedding width): the magnitude of channel ``c`` at the output of
  every LayerNorm of the encoder (the embeddings' and each layer's), summed over those LayerNorms;
* layer ``l``: block importance, 1 - cos(x, y) of the layer's input and output hidden states
  (a layer that barely changes the residual stream scores near 0).

Minitron sums signed LayerNorm outputs and activations; magnitudes are used here so that large
values of either sign count (a sum of signed values cancels). Nothing here chooses: the choice
at a student's shape is :func:`pipeline.model.student.pruned_selection`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pipeline.model.masked_lm import MaskedLM


@dataclass(frozen=True)
class Importance:
    """Scores of a teacher's parts; larger matters more. Lists indexed by teacher layer."""

    heads: list[list[float]]  # [layer][head]
    neurons: list[list[float]]  # [layer][FFN neuron]
    channels: list[float]  # [residual channel]
    layers: list[float]  # [layer]: block importance
    sequences: int
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Importance:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


class _Sums:
    """Running sums over non-pad tokens, in float64, keyed by hook name."""

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.keep: torch.Tensor | None = None  # [B*S] bool: the non-pad tokens of this batch

    def add(self, name: str, per_token: torch.Tensor) -> None:
        """``per_token`` is [B, S, K]: summed over this batch's non-pad tokens into ``name``."""
        assert self.keep is not None
        rows = per_token.reshape(-1, per_token.shape[-1])[self.keep].double().sum(0)
        self.values[name] = self.values.get(name, 0) + rows


def _hooks(teacher: MaskedLM, sums: _Sums) -> list[Any]:
    shape = teacher.config
    heads = int(getattr(shape, "num_attention_heads", 0) or shape.n_heads)
    handles = []

    def heads_norm(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            sums.add(name, x.reshape(*x.shape[:-1], heads, -1).float().norm(dim=-1))

        return hook

    def magnitude(name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            sums.add(name, args[0].float().abs())

        return hook

    def norm_out(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
        sums.add("channels", out.float().abs())

    for layer in range(teacher.num_layers):
        attn_out, ffn_out = teacher.projections_out(layer)
        handles.append(attn_out.register_forward_pre_hook(heads_norm(f"heads.{layer}")))
        handles.append(ffn_out.register_forward_pre_hook(magnitude(f"neurons.{layer}")))
    for norm in teacher.residual_norms():
        handles.append(norm.register_forward_hook(norm_out))
    return handles


@torch.no_grad()
def measure_importance(
    teacher: MaskedLM, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> Importance:
    """The scores over ``batches`` of (input_ids, attention_mask), each [B, S], on the teacher's
    device. Deterministic for the same batches (a fixed order of float64 sums)."""
    sums = _Sums()
    layers = teacher.num_layers
    block = torch.zeros(layers, dtype=torch.float64)
    tokens = sequences = 0
    handles = _hooks(teacher, sums)
    try:
        for input_ids, attention_mask in batches:
            sums.keep = attention_mask.reshape(-1).bool()
            _, hidden = teacher.encode(input_ids, attention_mask, all_layers=True)
            assert hidden is not None
            for layer in range(layers):
                x, y = hidden[layer].float(), hidden[layer + 1].float()
                cos = torch.nn.functional.cosine_similarity(x, y, dim=-1).reshape(-1)
                block[layer] += (1 - cos[sums.keep].double()).sum().cpu()
            tokens += int(sums.keep.sum())
            sequences += int(input_ids.shape[0])
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise ValueError("importance: the calibration batches hold no tokens")

    def mean(name: str) -> list[float]:
        return (sums.values[name].cpu() / tokens).tolist()

    return Importance(
        heads=[mean(f"heads.{i}") for i in range(layers)],
        neurons=[mean(f"neurons.{i}") for i in range(layers)],
        channels=mean("channels"),
        layers=(block / tokens).tolist(),
        sequences=sequences,
        tokens=tokens,
    )


def top(scores: list[float], k: int) -> list[int]:
    """The indices of the ``k`` largest scores, in ascending index order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


def kept_share(scores: list[float], kept: list[int]) -> float:
    """The share of the total score held by ``kept``."""
    total = sum(scores)
    return sum(scores[i] for i in kept) / total if total > 0 else 1.0
