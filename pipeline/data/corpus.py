"""The training corpus: one DATA_DIR, or several blended by weight, as Megatron blends datasets.

``--data DIR`` trains on one prepared folder; ``--data 0.3:BOOKS_DIR 0.7:WIKI_DIR`` (YAML:
``data: {data: ["0.3:BOOKS_DIR", "0.7:WIKI_DIR"]}``) draws 30% of every stretch of samples from
the first and 70% from the second, whatever their sizes (a source smaller than its share is seen
more often per epoch of the other). The sources must agree on what a sample is: tokenizer,
seq_len, vocabulary and special ids; a disagreement is one line naming the folder.

:class:`Corpus` gives the trainer one view of all sources:

* :attr:`Corpus.manifest`: a combined manifest (the first source's tokenizer and ids, summed token
  counts for masking, each split's shards of every source in source order, each shard with its
  own ``file`` and a ``path`` key unique across sources, e.g. ``s1/train/00000-000``);
* :attr:`Corpus.order`: the sample order, a pure function of (seed, stream position):
  :class:`BlendOrder` assigns the positions of a cycle of :data:`CYCLE` samples to the sources
  greedily by weight (each position to the source furthest behind its share, as Megatron's
  blended index does), repeats the cycle, and takes each source's samples in that source's own
  keyed per-epoch permutation (:func:`pipeline.data.sampling.samples_at`); memory O(CYCLE), exact
  resume from ``consumed_samples``, the same order at any world size;
* :meth:`Corpus.consumed_per_source`: how many samples of each source the run has drawn;
* :attr:`Corpus.identity`: what the checkpoint and the teacher cache must match (each source's
  manifest fingerprint and weight; a single unweighted source keeps its plain fingerprint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from data_prep.errors import UserError
from data_prep.manifest import SPLITS, DataManifest, Split, load_manifest, manifest_fingerprint
from pipeline.config.sources import Source
from pipeline.data.sampling import BlendOrder, UniformOrder

SAME = ("seq_len", "vocab_size", "special_ids")  # what every source must share with the first


class Corpus:
    """The sources of a run, checked against each other, seen as one corpus."""

    def __init__(self, sources: tuple[Source, ...]) -> None:
        if not sources:
            raise UserError("pass --data DATA_DIR (written by python -m data_prep.build_shards)")
        self.sources = sources
        self.manifests = [load_manifest(s.path) for s in sources]
        first = self.manifests[0]
        for source, m in zip(sources[1:], self.manifests[1:]):
            for key in SAME:
                if getattr(m, key) != getattr(first, key):
                    raise UserError(
                        f"{source.path}/manifest.json: {key} {getattr(m, key)} differs from "
                        f"{sources[0].path}'s {getattr(first, key)}; blend only data prepared alike"
                    )
            if m.tokenizer.fingerprint != first.tokenizer.fingerprint:
                raise UserError(
                    f"{source.path}/manifest.json: made with another tokenizer than "
                    f"{sources[0].path} (fingerprint {m.tokenizer.fingerprint[:12]} vs "
                    f"{first.tokenizer.fingerprint[:12]}); rebuild it with the teacher's"
                )
        self.manifest = first if len(sources) == 1 else self._combined()

    @property
    def blended(self) -> bool:
        return len(self.sources) > 1

    def _combined(self) -> DataManifest:
        """The first manifest, with every source's shards (keys ``sK/...``, each with its own
        ``file``) and summed counts."""
        splits = {}
        for split in SPLITS:
            shards = [
                dataclasses.replace(
                    shard, path=f"s{k}/{shard.path}", file=str(shard.prefix(source.path))
                )
                for k, (source, m) in enumerate(zip(self.sources, self.manifests))
                for shard in m.splits[split].shards
            ]
            splits[split] = Split(
                sum(m.splits[split].num_sequences for m in self.manifests),
                sum(m.splits[split].num_tokens for m in self.manifests),
                tuple(shards),
            )
        counts = np.sum([np.asarray(m.token_counts, dtype=np.int64) for m in self.manifests], 0)
        return dataclasses.replace(
            self.manifests[0],
            splits=splits,
            token_counts=counts.tolist(),
            blend=[{"path": s.path, "weight": s.weight} for s in self.sources],
        )

    @property
    def fingerprint(self) -> str:
        """What a checkpoint must match: every source's data and the blend's weights (they make
        the sample order). One source keeps the plain fingerprint of its manifest."""
        return self._fingerprint(with_weights=True)

    @property
    def content_fingerprint(self) -> str:
        """What a teacher cache must match: every source's data, in order (a cache holds every
        sample of every source, so it serves a blend of any weights)."""
        return self._fingerprint(with_weights=False)

    def _fingerprint(self, with_weights: bool) -> str:
        prints = [manifest_fingerprint(s.path) for s in self.sources]
        if not self.blended:
            return prints[0]
        body = [[p, s.weight] if with_weights else p for p, s in zip(prints, self.sources)]
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()

    def train_sizes(self) -> list[int]:
        return [m.train.num_sequences for m in self.manifests]

    def order(self, seed: int) -> BlendOrder | UniformOrder:
        sizes = self.train_sizes()
        if not self.blended:
            return UniformOrder(seed, sizes[0])
        return BlendOrder(seed, sizes, [s.weight for s in self.sources])

    def describe(self) -> str:
        if not self.blended:
            return self.sources[0].path
        total = sum(s.weight for s in self.sources)
        return " + ".join(f"{s.weight / total:.0%} {s.path}" for s in self.sources)
