"""Experiment trackers for real, offline: W&B in offline mode and MLflow in a local SQLite store
write what a user opens, the config becomes the run's parameters, and a resumed run continues the
same tracker run. A tracker asked for and not installed is one line naming the extra."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from wandb_log import read_run

from data_prep.errors import UserError
from pipeline.config.schema import Config, check_trackers
from pipeline.run.metrics import RunLogger

ALL = ["tensorboard", "wandb", "mlflow"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def _session(run: Path, start: int, steps: range, config: dict[str, Any]) -> None:
    log = RunLogger(run, True, 10, start, ALL, config)
    for step in steps:
        log.log_step({"step": step, "loss": 10.0 - step, "lr": 1e-3, "tokens_per_s": 5.0})
    log.log_eval(steps[-1], {"mlm_accuracy": 0.1 * steps[-1]})
    log.close()


@pytest.mark.usefixtures("offline")
def test_every_tracker_writes_the_run_and_a_resume_continues_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = Config().to_dict()
    _session(run, 0, range(1, 3), config)
    ids = json.loads((run / "trackers.json").read_text())
    assert set(ids) == {"wandb", "mlflow"}
    changed = Config().to_dict()
    changed["optim"]["lr"] = 1e-5  # resumed with --train.allow_config_change
    _session(run, 2, range(3, 5), changed)
    assert json.loads((run / "trackers.json").read_text()) == ids  # the same runs continued

    # W&B: two sessions of one run id, the config logged, every step in order
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{ids['wandb']}.wandb" for f in files)
    sessions = [read_run(f) for f in files]
    assert {s["id"] for s in sessions} == {ids["wandb"]}
    assert sessions[0]["config"]["optim"]["lr"] == config["optim"]["lr"]
    rows = [row for s in sessions for row in s["history"]]
    assert [(r["_step"], r.get("train/loss")) for r in rows if "train/loss" in r] == [
        (1, 9.0),
        (2, 8.0),
        (3, 7.0),
        (4, 6.0),
    ]
    assert any(r.get("eval/mlm_accuracy") == pytest.approx(0.4) for r in rows)

    # MLflow: one run in RUN_DIR/mlflow.db; parameters kept, the change tagged, metrics by step
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run}/mlflow.db")
    found = client.get_run(ids["mlflow"])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert float(found.data.params["optim.lr"]) == config["optim"]["lr"]
    assert float(found.data.tags["changed.optim.lr"]) == 1e-5
    history = client.get_metric_history(ids["mlflow"], "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0)]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "eval/mlm_accuracy")] == [2, 4]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_a_tracker_asked_for_and_not_installed_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_trackers(ALL)  # installed here (the dev set-up installs both extras)
    with pytest.raises(UserError, match=r"unknown tracker 'comet'"):
        check_trackers(["tensorboard", "comet"])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"pip install 'distil\[wandb\]'") as caught:
        check_trackers(["wandb"])
    assert "\n" not in str(caught.value)
    check_trackers(["none"])
