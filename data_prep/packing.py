"""Packing documents into training sequences ``[CLS] tokens [SEP]`` of at most ``seq_len`` tokens.

``full`` (RoBERTa FULL-SENTENCES): documents are concatenated with ``[SEP]`` between them and the
stream is cut into full-length sequences; a separator that would fall first or last in a sequence
is dropped rather than wasting a slot. ``doc``: sequences never cross a document boundary; the
last piece of each document is shorter. In both modes every corpus token lands in exactly one
sequence, once, in order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

PACK_MODES = ("full", "doc")


class Packer:
    """Turns a stream of documents (id arrays) into sequences; call :meth:`flush` at the end."""

    def __init__(
        self, seq_len: int, cls_id: int, sep_id: int, mode: str, dtype: type[np.number]
    ) -> None:
        if seq_len < 3:
            raise ValueError("seq_len must be at least 3 ([CLS] token [SEP])")
        if mode not in PACK_MODES:
            raise ValueError(f"pack mode must be one of {PACK_MODES}, got {mode!r}")
        self.capacity = seq_len - 2
        self.mode = mode
        self.dtype = np.dtype(dtype)
        self._cls = np.array([cls_id], dtype=self.dtype)
        self._sep = np.array([sep_id], dtype=self.dtype)
        self._parts: list[np.ndarray] = []
        self._fill = 0

    def _emit(self) -> np.ndarray:
        seq = np.concatenate([self._cls, *self._parts, self._sep])
        self._parts, self._fill = [], 0
        return seq

    def add(self, doc: np.ndarray) -> Iterator[np.ndarray]:
        """Add one document; yield every sequence it completes."""
        if doc.size == 0:
            return
        if self.mode == "doc":
            for start in range(0, doc.size, self.capacity):
                self._parts = [doc[start : start + self.capacity]]
                yield self._emit()
            return
        if self._fill:
            if self._fill >= self.capacity - 1:  # no room for a separator and a token
                yield self._emit()
            else:
                self._parts.append(self._sep)
                self._fill += 1
        pos = 0
        while pos < doc.size:
            take = min(self.capacity - self._fill, doc.size - pos)
            self._parts.append(doc[pos : pos + take])
            self._fill += take
            pos += take
            if self._fill == self.capacity:
                yield self._emit()

    def flush(self) -> Iterator[np.ndarray]:
        """Yield the last, partial sequence, if any."""
        if self._fill:
            yield self._emit()
