"""The prepared shards of one split, by global sequence index: memory-mapped, zero-copy views.

:class:`ShardedDataset` opens every shard the manifest lists for a split (checking each index
against the manifest's counts) and returns sequences by their global index.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_prep.errors import UserError
from data_prep.indexed import IndexedReader, bin_path, idx_path, sha256_file
from data_prep.manifest import DataManifest, load_manifest


class ShardedDataset:
    """All sequences of one split, by global index, memory-mapped."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        split: str = "train",
        manifest: DataManifest | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.manifest = manifest if manifest is not None else load_manifest(data_dir)
        if split not in self.manifest.splits:
            raise UserError(f"{self.data_dir}/manifest.json: no split '{split}'")
        info = self.manifest.splits[split]
        self.readers: list[IndexedReader] = []
        for shard in info.shards:
            prefix = shard.prefix(self.data_dir)
            reader = IndexedReader(prefix)
            if len(reader) != shard.num_sequences or reader.num_tokens != shard.num_tokens:
                raise UserError(
                    f"{prefix}.idx: {len(reader)} sequences / {reader.num_tokens} tokens, the "
                    f"manifest says {shard.num_sequences} / {shard.num_tokens}; run "
                    f"python -m data_prep.verify {prefix.parent.parent}"
                )
            self.readers.append(reader)
        counts = np.array([len(r) for r in self.readers], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.split = split
        self.vocab_size = self.manifest.vocab_size
        self.seq_len = self.manifest.seq_len
        self.num_tokens = info.num_tokens

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        local = index - int(self._starts[shard])
        seq = self.readers[shard][local]
        # An id past the vocabulary is a device-side assert on a GPU (the process dies without a
        # word about the data); a max and a min over one sequence cost next to nothing.
        if seq.size and (int(seq.max()) >= self.vocab_size or int(seq.min()) < 0):
            bad = int(seq.max()) if int(seq.max()) >= self.vocab_size else int(seq.min())
            raise UserError(
                f"{bin_path(self.readers[shard].prefix)}: sequence {local} holds token id {bad}, outside "
                f"the vocabulary 0..{self.vocab_size - 1}; run python -m data_prep.verify "
                f"{self.data_dir} and rebuild what it names"
            )
        return seq

    def verify_checksums(self, rank: int = 0, world: int = 1) -> None:
        """sha256 of this rank's share of the shards (``i % world == rank``) against the
        manifest: a byte changed on disk is caught before training on it. About 1.5 GB/s per
        rank on these machines; ranks share the work."""
        shards = self.manifest.splits[self.split].shards
        for i, shard in enumerate(shards):
            if i % world != rank:
                continue
            prefix = shard.prefix(self.data_dir)
            for path, recorded in (
                (bin_path(prefix), shard.sha256_bin),
                (idx_path(prefix), shard.sha256_idx),
            ):
                if sha256_file(path) != recorded:
                    raise UserError(
                        f"{path}: its sha256 differs from the manifest's (the file changed or is "
                        f"corrupt); run python -m data_prep.verify {self.data_dir} and rebuild "
                        "what it names"
                    )
