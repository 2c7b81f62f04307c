"""Experiment trackers of a run, on rank 0: TensorBoard, Weights & Biases, MLflow, any combination.

``train.report_to`` names them (:func:`pipeline.config.schema.check_trackers` refused unknown or
uninstalled ones before the run started). Each tracker gets every scalar the log writes to
metrics.jsonl, under the same ``train/...`` and ``eval/...`` names, and the resolved config as
the run's parameters (flattened to ``section.field``). A resumed run continues the tracker run it
started: the W&B run id and the MLflow run id are kept in ``RUN_DIR/trackers.json``.

* TensorBoard: ``RUN_DIR/tensorboard``; a resume purges the events past the checkpoint's step.
* W&B: ``wandb.init(dir=RUN_DIR, id=..., resume="allow")``; project ``WANDB_PROJECT`` (default
  ``distil``), the run named after RUN_DIR. ``WANDB_MODE=offline`` on a cluster without network
  (``wandb sync RUN_DIR/wandb/offline-run-*`` later).
* MLflow: ``MLFLOW_TRACKING_URI`` (default ``sqlite:///RUN_DIR/mlflow.db``: MLflow 3 keeps its
  plain file store in maintenance mode and refuses it unless told otherwise), experiment
  ``MLFLOW_EXPERIMENT_NAME`` (default ``distil``). On resume, parameters the run already has are
  not logged again (MLflow refuses to change one); a changed one is set as the tag
  ``changed.NAME`` with its new value.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from data_prep.atomic import write_json

IDS_FILE = "trackers.json"


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-4}}`` -> ``{"optim.lr": 1e-4}``; lists and None become strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict[str, Any], start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )
        if not start_step:
            table = "\n".join(f"    {k}: {v}" for k, v in flatten(config).items())
            self.writer.add_text("config", table, 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandB:
    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "distil"),
            name=run_dir.resolve().name,
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            config=config,
            settings=wandb.Settings(console="off", quiet=True),
        )
        self.id = str(self.run.id)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.resolve()}/mlflow.db"
        self.client = MlflowClient(tracking_uri=uri)
        params = {k: str(v)[:6000] for k, v in flatten(config).items()}
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "distil")
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
            run = self.client.create_run(experiment, run_name=run_dir.resolve().name)
            self.id = run.info.run_id
            new = params
        else:
            self.id = run_id
            self.client.update_run(run_id, status="RUNNING")
            had = self.client.get_run(run_id).data.params
            new = {k: v for k, v in params.items() if k not in had}
            for key, value in params.items():
                if key in had and had[key] != value:
                    self.client.set_tag(run_id, f"changed.{key}", value)
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.id, params=items[i : i + 100])

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items()]
        self.client.log_batch(self.id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.id)


def open_trackers(
    names: list[str], run_dir: Path, config: dict[str, Any], start_step: int
) -> list[Tracker]:
    """The trackers of ``names`` (rank 0), continuing the runs of RUN_DIR/trackers.json."""
    ids_path = run_dir / IDS_FILE
    ids: dict[str, str] = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    trackers: list[Tracker] = []
    for name in dict.fromkeys(names):  # in order, once each
        if name == "tensorboard":
            trackers.append(TensorBoard(run_dir, config, start_step))
        elif name == "wandb":
            wb = WandB(run_dir, config, ids.get("wandb"))
            ids["wandb"] = wb.id
            trackers.append(wb)
        elif name == "mlflow":
            ml = MLflow(run_dir, config, ids.get("mlflow"))
            ids["mlflow"] = ml.id
            trackers.append(ml)
    if ids:
        write_json(ids_path, ids)
    return trackers
