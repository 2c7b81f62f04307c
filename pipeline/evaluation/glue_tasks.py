"""The nine GLUE tasks: their specs (:data:`TASKS`), their metrics computed by our own code, and
their data, from the hub's ``nyu-mll/glue`` or from a local folder (:func:`load_task`).

Fine-tuning and the resumable runner that use them are in :mod:`.glue` (its docstring is the
guide). Metrics take predictions and labels and return plain floats under GLUE's metric names:

* ``accuracy``; ``f1`` of the positive class 1 (0 when nothing is predicted or labelled 1);
* ``matthews_correlation`` from the confusion matrix (multi-class form; 0 when a prediction or
  the labels are one class, as sklearn, never NaN);
* ``pearson`` and ``spearmanr`` (Pearson of average ranks, ties sharing their mean rank); 0 when
  either side is constant (scipy says NaN: no correlation can be measured).

Data: a task is named ``NAME`` (the hub) or ``NAME=FOLDER`` (local files), see :func:`load_task`.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from data_prep.errors import UserError

HUB_DATASET = "nyu-mll/glue"
Values = Sequence[float] | np.ndarray  # predictions or labels


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: its input columns, labels, metrics, evaluation splits and defaults."""

    name: str
    columns: tuple[str, ...]  # one column (a sentence) or two (a pair), GLUE's names
    num_labels: int  # 1: regression (stsb, labels 0-5)
    metrics: tuple[str, ...]  # GLUE's metric names, the first is the task's headline
    label_names: tuple[str, ...] = ()  # GLUE's class names, accepted in local files too
    # result key -> split: what is reported (mnli: matched and mismatched validation)
    evals: dict[str, str] = field(default_factory=dict)
    lr: float = 2e-5  # fine-tuning defaults (the rest: glue_finetune)
    epochs: int = 3

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits fine-tuning reads: train, then the evaluation splits."""
        return ("train", *self.evals.values())


def _spec(name: str, columns: tuple[str, ...], labels: tuple[str, ...], metrics: tuple[str, ...],
          lr: float = 2e-5, epochs: int = 3, evals: dict[str, str] | None = None) -> TaskSpec:  # fmt: skip
    evals = evals or {name: "validation"}
    return TaskSpec(name, columns, max(1, len(labels)), metrics, labels, evals, lr, epochs)


_PAIR = ("sentence1", "sentence2")
_ENTAIL = ("entailment", "not_entailment")
# Small tasks (cola, mrpc, stsb, rte) get more epochs and a higher rate, as is usual for them.
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        _spec("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
              3e-5, 5),
        _spec("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
        _spec("mrpc", _PAIR, ("not_equivalent", "equivalent"), ("f1", "accuracy"), 3e-5, 5),
        _spec("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
              ("f1", "accuracy")),
        _spec("stsb", _PAIR, (), ("pearson", "spearmanr"), 3e-5, 5),
        _spec("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
              ("accuracy",),
              evals={"mnli": "validation_matched", "mnli-mm": "validation_mismatched"}),
        _spec("qnli", ("question", "sentence"), _ENTAIL, ("accuracy",)),
        _spec("rte", _PAIR, _ENTAIL, ("accuracy",), 3e-5, 5),
        _spec("wnli", _PAIR, ("not_entailment", "entailment"), ("accuracy",)),
    )
}  # fmt: skip
GLUE_TASKS: tuple[str, ...] = tuple(TASKS)  # GLUE's order


# --- metrics ----------------------------------------------------------------------------------
def accuracy(preds: Values, labels: Values) -> float:
    p, y = np.asarray(preds), np.asarray(labels)
    return float((p == y).mean()) if len(y) else 0.0


def f1(preds: Values, labels: Values) -> float:
    """F1 of the positive class 1; 0 when there is no true positive."""
    p, y = np.asarray(preds) == 1, np.asarray(labels) == 1
    tp = int((p & y).sum())
    return 2 * tp / (int(p.sum()) + int(y.sum())) if tp else 0.0


def matthews_correlation(preds: Values, labels: Values) -> float:
    """Matthews correlation coefficient (Gorodkin's multi-class form); 0 when undefined."""
    p, y = np.asarray(preds), np.asarray(labels)
    classes, inverse = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (inverse[:n], inverse[n:]), 1)
    t, q = conf.sum(axis=1), conf.sum(axis=0)  # true and predicted counts per class
    s, c = float(n), float(np.trace(conf))
    denom = math.sqrt((s * s - float(q @ q)) * (s * s - float(t @ t)))
    return (c * s - float(t @ q)) / denom if denom else 0.0


def pearson(preds: Values, labels: Values) -> float:
    """Pearson's r; 0 when either side is constant."""
    x = np.asarray(preds, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return max(-1.0, min(1.0, float(x @ y) / denom)) if denom else 0.0


def average_ranks(values: Values) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy's ``rankdata``)."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1 if len(a) else order
    counts = np.bincount(group)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearmanr(preds: Values, labels: Values) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(average_ranks(preds), average_ranks(labels))


METRICS: dict[str, Callable[[Values, Values], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}


def compute_metrics(task: TaskSpec, preds: Values, labels: Values) -> dict[str, float]:
    """The task's metrics of ``preds`` (class ids, or scores for stsb) against ``labels``."""
    return {name: METRICS[name](preds, labels) for name in task.metrics}


# --- data -------------------------------------------------------------------------------------
@dataclass
class Split:
    """The examples of one split: a list of strings per input column, and the labels."""

    texts: tuple[list[str], ...]
    labels: list[float]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    """A task's splits by GLUE split name, and where they came from (for the results)."""

    task: TaskSpec
    splits: dict[str, Split]
    source: str  # "hub:nyu-mll/glue", "hub-cache:SNAPSHOT/mrpc" or "folder:/abs/FOLDER"

    def fingerprint(self) -> str:
        """sha256 over every example and label: a changed data set is other results."""
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(self.splits):
            split = self.splits[name]
            digest.update(json.dumps([name, *split.texts, split.labels]).encode())
        return digest.hexdigest()


def parse_task(spec: str) -> tuple[TaskSpec, Path | None]:
    """``NAME`` or ``NAME=FOLDER``: the task and its local folder (None: the hub)."""
    name, sep, folder = spec.partition("=")
    key = name.strip().lower().replace("-", "")
    if key not in TASKS:
        raise UserError(
            f"GLUE task {name!r}: unknown; expected one of {', '.join(GLUE_TASKS)} "
            "(NAME for the hub's nyu-mll/glue, NAME=FOLDER for local files)"
        )
    if sep and not folder:
        raise UserError(f"GLUE task {spec!r}: no folder after '='; expected NAME=FOLDER")
    return TASKS[key], (Path(folder).expanduser() if sep else None)


def load_task(spec: str) -> TaskData:
    """The train and evaluation splits of ``NAME`` or ``NAME=FOLDER``.

    ``NAME=FOLDER``: FOLDER holds ``train.*`` and ``validation.*`` (mnli:
    ``validation_matched.*`` and ``validation_mismatched.*``) as .jsonl, .json (lines), .csv or
    .tsv (a header row; .gz allowed) or .parquet, with GLUE's column names; the hub's shard
    names (``train-00000-of-00001.parquet``) are read too, so a downloaded snapshot's task folder
    works. Labels are GLUE's ints (or its class names), stsb's floats 0-5.

    ``NAME``: ``datasets.load_dataset("nyu-mll/glue", NAME)``: online it downloads (and caches)
    the task; offline (``HF_HUB_OFFLINE=1``) datasets serves it from its own cache
    (``HF_DATASETS_CACHE``, filled by one such call online). When that fails, a snapshot of the
    repository in the hub cache (``hf download nyu-mll/glue --repo-type dataset``) is read as a
    folder. Anything missing is one :class:`UserError` naming the file and the expected columns.
    """
    task, folder = parse_task(spec)
    if folder is not None:
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder (GLUE task {task.name}={folder})")
        return TaskData(task, _read_folder(task, folder), f"folder:{folder.resolve()}")
    return _load_hub(task)


def _load_hub(task: TaskSpec) -> TaskData:
    import datasets

    try:
        dd = datasets.load_dataset(HUB_DATASET, task.name)
    except Exception as exc:  # offline and not cached, unreachable, ...: try the hub cache
        snapshot = _hub_snapshot(task)
        if snapshot is None:
            raise UserError(
                f"GLUE task {task.name}: datasets.load_dataset({HUB_DATASET!r}, {task.name!r}) "
                f"failed ({type(exc).__name__}: {_first_line(exc)}) and the hub cache has no "
                f"snapshot of {HUB_DATASET}; load it once where the hub is reachable with the "
                f"HF_HOME the jobs use, or pass {task.name}=FOLDER with local files"
            ) from None
        return TaskData(task, _read_folder(task, snapshot), f"hub-cache:{snapshot}")
    splits = {}
    for name in task.splits:
        if name not in dd:
            raise UserError(f"{HUB_DATASET} {task.name}: no split {name!r} (has {list(dd)})")
        ds = dd[name]
        missing = [c for c in (*task.columns, "label") if c not in ds.column_names]
        if missing:
            raise UserError(
                f"{HUB_DATASET} {task.name} {name}: missing column(s) {', '.join(missing)}; "
                f"expected {', '.join((*task.columns, 'label'))}"
            )
        rows = ds.select_columns([*task.columns, "label"]).to_dict()
        splits[name] = Split(
            tuple([str(t) for t in rows[c]] for c in task.columns),
            [_label(task, v, f"{HUB_DATASET} {task.name} {name}") for v in rows["label"]],
        )
    return TaskData(task, splits, f"hub:{HUB_DATASET}")


def _hub_snapshot(task: TaskSpec) -> Path | None:
    """The task's folder in a cached snapshot of the hub repository, or None."""
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(
            HUB_DATASET,
            repo_type="dataset",
            allow_patterns=[f"{task.name}/*"],
            local_files_only=True,
        )
    except Exception:
        return None
    folder = Path(root) / task.name
    return folder if folder.is_dir() else None


SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def _split_files(folder: Path, split: str) -> list[Path]:
    names = [f"{split}{s}" for s in SUFFIXES] + [f"{split}{s}.gz" for s in SUFFIXES[:4]]
    found = [folder / n for n in names if (folder / n).is_file()]
    shards = sorted(folder.glob(f"{split}-[0-9]*-of-[0-9]*.parquet"))
    if (found and shards) or len(found) > 1:
        raise UserError(
            f"{folder}: several {split} files ({', '.join(p.name for p in [*found, *shards])}); "
            "keep one"
        )
    return found or shards


def _read_folder(task: TaskSpec, folder: Path) -> dict[str, Split]:
    expected = ", ".join((*task.columns, "label"))
    splits = {}
    for split in task.splits:
        files = _split_files(folder, split)
        if not files:
            raise UserError(
                f"{folder / split}.*: missing; GLUE task {task.name} needs a {split} file "
                f"(.jsonl, .csv, .tsv or .parquet) with columns {expected}"
            )
        texts: tuple[list[str], ...] = tuple([] for _ in task.columns)
        labels: list[float] = []
        for path in files:
            rows = _read_rows(path)
            for i, row in enumerate(rows, 1):
                missing = [c for c in (*task.columns, "label") if c not in row]
                if missing:
                    where = f"{path}" if i == 1 else f"{path}: row {i}"
                    raise UserError(
                        f"{where}: missing column(s) {', '.join(missing)}; GLUE task {task.name} "
                        f"expects columns {expected}"
                    )
                for col, out in zip(task.columns, texts):
                    out.append("" if row.get(col) is None else str(row[col]))
                labels.append(_label(task, row.get("label"), f"{path}: row {i}"))
        splits[split] = Split(texts, labels)
    return splits


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of one file as dicts (the reader by suffix); none is a UserError."""
    kind = path.suffixes[-2] if path.suffix == ".gz" else path.suffix
    try:
        if kind == ".parquet":
            import pyarrow.parquet as pq

            rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        elif kind in (".jsonl", ".json"):
            with _open_text(path) as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            if any(not isinstance(r, dict) for r in rows):
                raise UserError(f"{path}: expected one JSON object per line")
        else:  # GLUE's tsv files hold stray quotes: no quoting there
            with _open_text(path) as fh:
                if kind == ".tsv":
                    rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
                else:
                    rows = list(csv.DictReader(fh))
    except (OSError, ValueError, csv.Error) as exc:
        raise UserError(
            f"{path}: cannot read it ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not rows:
        raise UserError(f"{path}: no examples")
    return rows


def _label(task: TaskSpec, value: Any, where: str) -> float:
    """A label as GLUE has it: a class id (or one of its names), or stsb's float score."""
    try:
        if task.regression:
            score = float(value)
            if not 0.0 <= score <= 5.0:
                raise ValueError
            return score
        if isinstance(value, str) and value.strip() in task.label_names:
            return task.label_names.index(value.strip())
        number = float(value)
        label = int(number)
        if label != number or not 0 <= label < task.num_labels:
            raise ValueError
        return label
    except (TypeError, ValueError):
        expected = (
            "a score from 0 to 5"
            if task.regression
            else f"a class id 0..{task.num_labels - 1} or one of {', '.join(task.label_names)}"
        )
        raise UserError(f"{where}: label {value!r} is not {expected} ({task.name})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
