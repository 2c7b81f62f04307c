"""Masked-LM masking as a pure function of (seed, view, global sample index).

The trainer, the evaluator and the teacher cache call :func:`mask_sequence` with the same
arguments and get the same masks on any launcher, world size or resume point. ``view`` selects
one of several independent maskings of the same sample (the trainer uses the epoch; with a teacher
cache of V views, the epoch mod V).

Selection: ``round(p * n)`` of the ``n`` maskable tokens (at least one), uniformly, or with weights
``counts^-smoothing`` (DistilBERT's frequency smoothing, 0.7) from the manifest's token counts.
Of the selected: ``mask_fraction`` become the mask id, ``random_fraction`` a random non-special
token, the rest keep their token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.manifest import DataManifest
from pipeline.config.schema import MaskingConfig

IGNORE_INDEX = -100
EVAL_MASKING = MaskingConfig(smoothing=0.0)
"""Validation masking (the trainer's and pipeline.evaluate's): plain BERT, 15% with 80/10/10."""


@dataclass(frozen=True)
class MaskingSpec:
    """Everything a mask depends on besides (seed, view, index) and the tokens."""

    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]
    mlm_probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    smoothing: float = 0.0

    def fingerprint(self) -> dict[str, object]:
        return {
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "special_ids": list(self.special_ids),
            "mlm_probability": self.mlm_probability,
            "mask_fraction": self.mask_fraction,
            "random_fraction": self.random_fraction,
            "smoothing": self.smoothing,
        }


class Masker:
    """Precomputes the tables of a :class:`MaskingSpec`; :meth:`__call__` is the pure function."""

    def __init__(self, spec: MaskingSpec, token_counts: np.ndarray | None = None) -> None:
        self.spec = spec
        special = np.zeros(spec.vocab_size, dtype=bool)
        special[list(spec.special_ids)] = True
        self._special = special
        self._random_pool = np.flatnonzero(~special).astype(np.int64)
        self._weights: np.ndarray | None = None
        if spec.smoothing > 0:
            if token_counts is None or len(token_counts) != spec.vocab_size:
                raise ValueError("frequency smoothing needs token counts of vocab_size entries")
            # Unseen tokens get the weight of a count of 1 (as if seen once), not infinity.
            self._weights = (
                np.maximum(np.asarray(token_counts, dtype=np.float64), 1.0) ** -spec.smoothing
            )

    def __call__(
        self, tokens: np.ndarray, seed: int, view: int, index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input ids with masking applied, labels: original id at selected positions, else -100)."""
        spec = self.spec
        ids = np.asarray(tokens, dtype=np.int64)
        labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
        candidates = np.flatnonzero(~self._special[ids])
        if candidates.size == 0:
            return ids.copy(), labels
        rng = np.random.Generator(np.random.PCG64([seed, view, index]))
        n = max(1, round(spec.mlm_probability * candidates.size))
        if self._weights is None:
            chosen = rng.choice(candidates, size=n, replace=False, shuffle=False)
        else:
            w = self._weights[ids[candidates]]
            chosen = rng.choice(candidates, size=n, replace=False, p=w / w.sum(), shuffle=False)
        chosen.sort()
        labels[chosen] = ids[chosen]
        out = ids.copy()
        u = rng.random(n)
        to_mask = chosen[u < spec.mask_fraction]
        to_random = chosen[
            (u >= spec.mask_fraction) & (u < spec.mask_fraction + spec.random_fraction)
        ]
        out[to_mask] = spec.mask_id
        if to_random.size:
            out[to_random] = self._random_pool[
                rng.integers(0, self._random_pool.size, size=to_random.size)
            ]
        return out, labels


def masking_spec(manifest: DataManifest, m: MaskingConfig) -> MaskingSpec:
    """The spec of masking settings ``m`` over the data of ``manifest`` (its vocabulary and ids)."""
    sid = manifest.special_ids
    return MaskingSpec(
        vocab_size=manifest.vocab_size,
        mask_id=sid.mask,
        special_ids=tuple(sorted({sid.cls, sid.sep, sid.pad, sid.mask})),
        mlm_probability=m.mlm_probability,
        mask_fraction=m.mask_fraction,
        random_fraction=m.random_fraction,
        smoothing=m.smoothing,
    )


def make_masker(manifest: DataManifest, m: MaskingConfig) -> Masker:
    """The masker of settings ``m``; frequency smoothing takes the manifest's token counts."""
    spec = masking_spec(manifest, m)
    counts = np.asarray(manifest.token_counts, dtype=np.int64) if spec.smoothing > 0 else None
    return Masker(spec, counts)
