"""Run guards: preemption flags and their agreement, the fp16 loss-scale watch, non-finite losses."""

from __future__ import annotations

import os
import signal

import pytest

from data_prep.errors import UserError
from pipeline.distributed.comm import ControlGroup
from pipeline.run.guards import LossScaleWatch, Preemption, nonfinite_loss


def test_loss_scale_watch_stops_only_on_overflows_at_the_floor() -> None:
    watch = LossScaleWatch(min_scale=1.0, patience=3)
    # (scale, skipped steps so far): overflows that halve the scale, then recover: no stop
    steps = [(65536.0, 0), (32768.0, 1), (1.0, 2), (1.0, 3), (2.0, 3), (1.0, 4), (1.0, 5)]
    assert not any(watch.update(s, k) for s, k in steps)
    assert watch.update(1.0, 6)  # the third overflow in a row at the floor
    assert not LossScaleWatch(1.0, 3).update(None, 0)  # bf16/fp32: no loss scale, never stops
    assert not any(LossScaleWatch(1.0, 0).update(1.0, k) for k in range(10))  # patience 0: off
    pinned = LossScaleWatch(1.0, 2)
    assert pinned.check(1.0, 0) is None and pinned.check(1.0, 1) is None
    assert "2 steps in a row overflowed at the minimum fp16 loss scale (1)" in (
        pinned.check(1.0, 2) or ""
    )


def test_a_healthy_run_that_sits_at_the_floor_goes_on() -> None:
    """The old watch counted steps *at* the floor and stopped runs that no longer overflowed."""
    watch = LossScaleWatch(min_scale=1.0, patience=3)
    assert not any(watch.update(1.0, 7) for _ in range(100))  # no new skipped step: healthy


def test_nonfinite_loss_is_an_error_except_in_fp16() -> None:
    assert nonfinite_loss({"nonfinite_losses": 0}, 5, fp16=False) is None
    assert nonfinite_loss({"nonfinite_losses": 2}, 5, fp16=False) == "non-finite loss at step 5"
    assert nonfinite_loss({"nonfinite_losses": 2}, 5, fp16=True) is None  # skipped steps


def test_preemption_signal_sets_a_flag_that_the_ranks_agree_on() -> None:
    old = signal.getsignal(signal.SIGUSR1)
    try:
        preemption = Preemption(["SIGUSR1"])
        control = ControlGroup()  # no process group: a world of one
        assert not preemption.agreed(control)
        os.kill(os.getpid(), signal.SIGUSR1)  # handled: the test process lives on
        assert preemption.signalled == "SIGUSR1" and preemption.agreed(control)
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_unknown_preemption_signal_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown signal SIGNOPE"):
        Preemption(["SIGNOPE"])
