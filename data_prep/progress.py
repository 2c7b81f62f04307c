"""Progress reporting: a one-line bar on a terminal, plain periodic log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}P"


class Progress:
    """Counts bytes and tokens (or any two quantities) and prints rates.

    On a TTY the line is redrawn at most every ``tty_interval`` seconds; elsewhere (Slurm logs,
    CI) a full line is printed every ``log_interval`` seconds, so logs stay readable.
    """

    def __init__(
        self,
        label: str,
        total_bytes: int = 0,
        stream: TextIO | None = None,
        log_interval: float = 30.0,
        tty_interval: float = 0.5,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.total_bytes = total_bytes
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = tty_interval if self.tty else log_interval
        self.enabled = enabled
        self.start = time.perf_counter()
        self._last = self.start
        self.bytes = 0
        self.tokens = 0
        self.items = 0
        self.note = ""

    def update(self, nbytes: int = 0, tokens: int = 0, items: int = 0) -> None:
        self.bytes += nbytes
        self.tokens += tokens
        self.items += items
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._print(final=False)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        parts = [f"{self.label}:", f"{self.bytes / 1e6:,.1f} MB"]
        if self.total_bytes:
            parts.append(f"({100 * min(self.bytes / self.total_bytes, 1):.0f}%)")
        parts += [
            f"{_human(self.tokens)} tokens",
            f"{self.bytes / 1e6 / elapsed:.2f} MB/s",
            f"{_human(self.tokens / elapsed)} tok/s",
            f"{elapsed:.0f}s",
        ]
        if self.note:
            parts.append(self.note)
        return " ".join(parts)

    def _print(self, final: bool) -> None:
        if self.tty:
            end = "\n" if final else ""
            self.stream.write("\r\x1b[K" + self.line() + end)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._print(final=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
