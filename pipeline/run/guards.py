"""Run guards: the reasons a run stops early, each decided the same way on every rank.

* :class:`Preemption`: SIGUSR1/SIGTERM (``train.preempt_signals``) set a flag; at each step
  boundary the ranks agree on the control group whether any rank was signalled, and then all
  of them checkpoint and exit with ``train.preempt_exit_code``. The handlers are installed when
  the process starts (before the teacher loads, DeepSpeed starts or a checkpoint converts), so a
  signal during start-up is a request to stop before the first step, never a crash.
* :class:`LossScaleWatch`: fp16 steps that keep overflowing at the floor of the dynamic loss
  scale make no progress. It is the one owner of that decision (the trainer turns off
  DeepSpeed's own exception at the floor); a run that merely sits at the floor and no longer
  overflows goes on.
* :func:`nonfinite_loss`: in bf16/fp32 a non-finite loss is an error (in fp16 it is a skipped step).
Each check returns what is wrong, or None; the trainer stops without saving and names the last
good checkpoint.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from data_prep.errors import UserError

if (
    TYPE_CHECKING
):  # importing pipeline.distributed.comm imports torch: keep this module quick to import
    from pipeline.distributed.comm import ControlGroup


class Preemption:
    """Signal handlers that only set a flag; :meth:`agreed` is the collective decision."""

    def __init__(self, signals: list[str]) -> None:
        self.signalled: str | None = None
        self.installed: list[str] = []
        self.install(signals)

    def install(self, signals: list[str]) -> None:
        """Handle these signals (and give back their default action to the others it handled)."""
        for name in self.installed:
            if name not in signals:
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        for name in signals:
            try:
                signal.signal(getattr(signal, name), self._handler)
            except (AttributeError, ValueError, TypeError):
                raise UserError(f"train.preempt_signals: unknown signal {name}") from None
        self.installed = list(signals)

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signalled = signal.Signals(signum).name

    def agreed(self, control: ControlGroup) -> bool:
        """True on every rank when any rank got a signal (collective)."""
        return control.any(self.signalled is not None)


class LossScaleWatch:
    """Counts consecutive optimizer steps that overflowed (were skipped) with the fp16 loss scale
    at its floor.

    A few skipped steps are normal with dynamic loss scaling; steps that keep overflowing at the
    minimum scale can never succeed. A scale that sits at the floor while steps succeed is fine.
    """

    def __init__(self, min_scale: float, patience: int) -> None:
        self.min_scale = min_scale
        self.patience = patience
        self.at_floor = 0
        self.skipped: int | None = None

    def update(self, scale: float | None, skipped_total: int) -> bool:
        """Record this step (its scale, the engine's count of skipped steps so far); True when
        the run should stop."""
        if scale is None:
            return False
        overflowed = self.skipped is not None and skipped_total > self.skipped
        self.skipped = skipped_total
        self.at_floor = self.at_floor + 1 if overflowed and scale <= self.min_scale else 0
        return self.patience > 0 and self.at_floor >= self.patience

    def check(self, scale: float | None, skipped_total: int) -> str | None:
        if not self.update(scale, skipped_total):
            return None
        return (
            f"{self.at_floor} steps in a row overflowed at the minimum fp16 loss scale "
            f"({self.min_scale:g}): no step can succeed"
        )


def nonfinite_loss(record: dict[str, Any], step: int, fp16: bool) -> str | None:
    """A logged window with a non-finite loss, outside fp16 (where it is a skipped step)."""
    if record.get("nonfinite_losses") and not fp16:
        return f"non-finite loss at step {step}"
    return None
