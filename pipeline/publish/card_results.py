"""Evaluation results in the model card: the hub's model-index, and a table beside the teacher's.

The input is what ``pipeline.evaluate --json FILE`` writes: GLUE results (``"format":
"distil-glue-1"``, per task the median, min, max and per-seed values of each of GLUE's metrics)
and, with ``--data``, held-out MLM metrics (``"mlm"``). :func:`eval_results` turns a model's file
into huggingface_hub ``EvalResult`` entries (the card's ``model-index``: a GLUE task as
``text-classification`` on ``nyu-mll/glue`` with its config and validation split, a task from a
local folder under the folder's name, held-out MLM accuracy as ``fill-mask``); the values are
medians over seeds, as fractions, as GLUE's metrics return them. :func:`results_table` is the
card's table: the model and, where the teacher was evaluated on the same task, the teacher.
No path of the machine is written: a local folder is named by its last component.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.errors import UserError

GLUE_HUB = "nyu-mll/glue"
SPLITS = {"mnli": "validation_matched", "mnli-mm": "validation_mismatched"}


def read_results(path: Path) -> dict[str, Any]:
    """A results file of ``pipeline.evaluate --json``, checked enough to be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(
            f"{path}: not a results file of pipeline.evaluate --json (unreadable or not JSON)"
        ) from None
    if not isinstance(data, dict) or not ({"tasks", "mlm"} & set(data)):
        raise UserError(
            f"{path}: holds no GLUE tasks and no MLM metrics; write it with pipeline.evaluate "
            "--json (with --tasks and/or --data)"
        )
    return data


def _glue_rows(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(result key, metric) -> {"median", "min", "max", "seeds", "source"} of a GLUE file."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for task in data.get("tasks", {}).values():
        source = str(task.get("data", {}).get("source", ""))
        seeds = len(task.get("seeds", []))
        for key, metrics in task.get("results", {}).items():
            for metric, v in metrics.items():
                rows[(key, metric)] = {**v, "seeds": seeds, "source": source}
    return rows


def _dataset(key: str, source: str) -> tuple[str, str, str | None]:
    """(dataset_type, dataset_name, dataset_config) of a result key and its data source."""
    task = "mnli" if key == "mnli-mm" else key
    if source.startswith("folder:"):
        folder = Path(source.removeprefix("folder:")).name
        return folder, f"{key} (local files: {folder})", None
    return GLUE_HUB, f"GLUE {key.upper()}", task


def eval_results(data: dict[str, Any]) -> list[Any]:
    """huggingface_hub ``EvalResult`` entries of a results file."""
    from huggingface_hub import EvalResult

    out = []
    for (key, metric), v in _glue_rows(data).items():
        kind, name, config = _dataset(key, v["source"])
        out.append(
            EvalResult(
                task_type="text-classification",
                dataset_type=kind,
                dataset_name=name,
                dataset_config=config,
                dataset_split=SPLITS.get(key, "validation"),
                metric_type=metric,
                metric_name=f"{metric} (median of {v['seeds']} fine-tuning seeds)",
                metric_value=round(float(v["median"]), 4),
            )
        )
    mlm = data.get("mlm")
    if isinstance(mlm, dict) and "mlm_accuracy" in mlm:
        out.append(
            EvalResult(
                task_type="fill-mask",
                dataset_type="held-out",
                dataset_name="the training data's held-out split",
                metric_type="accuracy",
                metric_name="masked-token accuracy",
                metric_value=round(float(mlm["mlm_accuracy"]), 4),
            )
        )
    return out


def _cell(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    if v.get("seeds", 1) > 1:
        return f"{100 * v['median']:.1f} ({100 * v['min']:.1f}-{100 * v['max']:.1f})"
    return f"{100 * v['median']:.1f}"


def results_table(model: dict[str, Any], teacher: dict[str, Any] | None) -> list[str]:
    """The card's results section: one row per (task, metric), this model beside the teacher."""
    ours, theirs = _glue_rows(model), _glue_rows(teacher or {})
    lines: list[str] = []
    if ours:
        seeds = max(v["seeds"] for v in ours.values())
        head = "| task | metric | this model |" + (" teacher |" if theirs else "")
        lines += [
            f"GLUE validation sets, median over {seeds} fine-tuning seeds (min-max), in %:",
            "",
            head,
            "|---|---|---|" + ("---|" if theirs else ""),
        ]
        for (key, metric), v in ours.items():
            teacher_cell = f" {_cell(theirs.get((key, metric)))} |" if theirs else ""
            lines.append(f"| {key} | {metric} | {_cell(v)} |{teacher_cell}")
        lines.append("")
    mlm = model.get("mlm")
    if isinstance(mlm, dict) and "mlm_accuracy" in mlm:
        other = (teacher or {}).get("mlm") or {}
        line = f"Held-out masked-token accuracy: {100 * mlm['mlm_accuracy']:.2f}%"
        if "mlm_accuracy" in other:
            line += f" (teacher: {100 * other['mlm_accuracy']:.2f}%)"
        lines += [line + ".", ""]
    return lines
