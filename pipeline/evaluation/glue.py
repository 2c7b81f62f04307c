"""GLUE evaluation as papers report it: fine-tune a model on each task with several seeds and
report, per task and metric, the median over seeds with its spread, in a resumable JSON file.

API (the command line of :mod:`pipeline.evaluate` builds on it)::

    from pipeline.evaluation.glue import GLUE_TASKS, DEFAULT_SEEDS, run_glue, format_table

    results = run_glue(
        model_dir,                 # HF folder (or hub ID) loadable as AutoModelForSequenceClassification
        ["rte", "mrpc=data/mrpc"], # GLUE_TASKS: all nine; NAME (the hub's nyu-mll/glue) or
                                   # NAME=FOLDER (local files)
        DEFAULT_SEEDS,             # (0, 1, 2, 3, 4): the DistilBERT paper's median of 5 runs
        "glue.json",               # output_json: state and results; rerun to resume
        epochs=None, lr=None, batch_size=None, max_len=None,  # None: the task's default
        warmup_ratio=None, weight_decay=None,
        max_train_examples=None, max_eval_examples=None,      # quick runs: fixed random subsets
        precision="auto",          # bf16 autocast on a CUDA device with bf16, else fp32
        device=None,               # cuda when available, else cpu
        progress=None,             # called with each progress line; None: stderr
    )
    print(format_table(results))

Tasks: :data:`.glue_tasks.TASKS` (specs, metrics, the data rules of
:func:`.glue_tasks.load_task`). Defaults: batch 32, max_len 128, AdamW with weight decay 0.01,
10% linear warmup then linear decay, 3 epochs at lr 2e-5, except the small tasks cola, mrpc,
stsb and rte: 5 epochs at 3e-5 (:func:`.glue_finetune.task_settings`). Overrides apply to every
task of a call.

The JSON file (metric values are fractions, as GLUE's metrics return them; the table shows %)::

    {"format": "distil-glue-1",
     "model": {"name": ..., "path": ..., "fingerprint": sha256 of its config, weights, tokenizer},
     "tasks": {"mnli": {
         "settings": {"lr", "epochs", "batch_size", "max_len", "warmup_ratio", "weight_decay",
                      "max_train_examples", "max_eval_examples", "precision"},
         "data": {"source", "fingerprint", "train_examples", "eval_examples": {"mnli": N, ...}},
         "runs": {"0": {"metrics": {"mnli": {"accuracy": ..}, "mnli-mm": {..}}, "seconds",
                        "steps", "train_loss", "device", "finished"}, "1": ...},
         "seeds": [0, 1, 2],       # the seeds the results summarise (this call's)
         "results": {"mnli": {"accuracy": {"median", "min", "max", "per_seed": {"0": ..}}},
                     "mnli-mm": {...}},
         "seconds": total fine-tuning time of those seeds},
       ...},
     "summary": {"cola": {"matthews_correlation": median}, ..., "mnli": .., "mnli-mm": ..},
     "score": mean of the task scores (a task's score: the mean of its medians; mnli's over
              matched and mismatched), "score_tasks": the tasks averaged}

MNLI is fine-tuned once per seed and reported under two result keys, ``mnli`` (validation
matched) and ``mnli-mm`` (validation mismatched); every other task under its own name. The
spread is the min and max over seeds (with 3-5 seeds, an interquartile range says no more).

Resuming: the file is rewritten atomically after every (task, seed); a rerun skips the pairs
it holds, so adding seeds or tasks runs only what is new (runs of seeds a call does not ask for
stay in "runs", outside its results). A rerun with another model, other settings or other data
for a task the file holds is refused in one line (:class:`UserError`): choose another output
file, or delete the file (or that task's entry) to start over. Bad input (an unknown task, a
missing file or column, a bad label) is a one-line :class:`UserError` too, before any training.

Progress: ``progress`` gets one line per task (``glue: rte: 2490 train / 277 eval examples,
5 epoch(s) at lr 3e-05, seed(s) 0, 1, 2 to run``; or the seeds kept from the file) and one per
(task, seed) when it is done (``glue: rte seed 1: 41.2 s, rte accuracy 0.6354``).

Data offline (details in :func:`.glue_tasks.load_task`): a hub name is served by datasets' own
cache (``HF_DATASETS_CACHE``, filled by one ``load_dataset("nyu-mll/glue", NAME)`` online with
the same ``HF_HOME``), else by a snapshot in the hub cache (``hf download nyu-mll/glue
--repo-type dataset``); ``NAME=FOLDER`` needs neither.

The parts, for other uses: :func:`.glue_tasks.load_task` (a task's splits),
:func:`.glue_tasks.compute_metrics` (GLUE's metrics), :func:`.glue_finetune.finetune` (one seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from data_prep.atomic import write_json
from data_prep.errors import UserError, error_line
from data_prep.hub import resolve
from data_prep.indexed import sha256_file
from pipeline.evaluation.glue_finetune import (
    FinetuneSettings,
    encode,
    finetune,
    subset,
    task_settings,
)
from pipeline.evaluation.glue_tasks import GLUE_TASKS, TASKS, TaskData, load_task, parse_task

__all__ = ["DEFAULT_SEEDS", "FORMAT", "GLUE_TASKS", "TASKS", "format_table", "run_glue"]

FORMAT = "distil-glue-1"
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
MODEL_FILES = ("config.json", "*.safetensors", "pytorch_model*.bin", "tokenizer*.json",
               "special_tokens_map.json", "vocab.*", "merges.txt", "*.model")  # fmt: skip


def model_fingerprint(folder: Path) -> str:
    """sha256 over the model's config, weights and tokenizer files (by name, not folder)."""
    files = {
        f.name: sha256_file(f)
        for pattern in MODEL_FILES
        for f in sorted(folder.glob(pattern))
        if f.is_file()
    }
    if not files:
        raise UserError(f"{folder}: no model files (config.json, *.safetensors, ...)")
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def run_glue(
    model_dir: str | os.PathLike[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    output_json: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    max_len: int | None = None,
    warmup_ratio: float | None = None,
    weight_decay: float | None = None,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    precision: str = "auto",
    device: torch.device | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune and score ``model_dir`` on ``tasks`` with each of ``seeds``; the results as
    written to ``output_json`` (layout in the module docstring). Pairs already in that file with
    the same model, settings and data are not run again."""
    say = progress or error_line
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"GLUE seeds: expected distinct seeds, got {list(seeds)}")
    specs = [parse_task(t) for t in tasks]
    names = [spec.name for spec, _ in specs]
    if len(set(names)) != len(names):
        raise UserError(f"GLUE tasks: a task is named twice in {list(tasks)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and dev.type != "cuda":
        raise UserError(f"GLUE: precision bf16 needs a CUDA device, not {dev}; use fp32 or auto")
    folder = resolve(model_dir, "model")
    if not folder.is_dir():
        raise UserError(f"{model_dir}: no such model folder")
    out = Path(output_json)
    model = {"name": str(model_dir), "path": str(folder.resolve())}
    model["fingerprint"] = model_fingerprint(folder)
    state = _load_state(out, model)
    overrides = dict(epochs=epochs, lr=lr, batch_size=batch_size, max_len=max_len,
                     warmup_ratio=warmup_ratio, weight_decay=weight_decay,
                     max_train_examples=max_train_examples, max_eval_examples=max_eval_examples,
                     precision=precision)  # fmt: skip
    prepared = []  # every task's data read and checked against the file before any training
    for spec_str, (task, _) in zip(tasks, specs):
        settings = task_settings(task, **overrides)
        data = load_task(spec_str)
        data.splits["train"] = subset(data.splits["train"], settings.max_train_examples)
        for split in task.evals.values():
            data.splits[split] = subset(data.splits[split], settings.max_eval_examples)
        prepared.append((data, settings, _task_entry(state, out, data, settings)))
    for data, settings, entry in prepared:
        task = data.task
        todo = [s for s in seeds if str(s) not in entry["runs"]]
        done = [s for s in seeds if str(s) in entry["runs"]]
        if done:
            say(f"glue: {task.name}: seed(s) {', '.join(map(str, done))} done earlier, kept")
        if todo:
            _run_seeds(folder, data, settings, todo, entry, state, out, dev, say)
        _summarise_task(entry, task.name, seeds)
        _summarise(state)
        write_json(out, state)
    return state


def _load_state(out: Path, model: dict[str, str]) -> dict[str, Any]:
    if not out.exists():
        return {"format": FORMAT, "model": model, "tasks": {}}
    try:
        state = json.loads(out.read_text())
        if state.get("format") != FORMAT or not isinstance(state["tasks"], dict):
            raise ValueError
        old_model = state["model"]["fingerprint"]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        raise UserError(
            f"{out}: exists and is not a GLUE results file ({FORMAT}); choose another output file"
        ) from None
    if old_model != model["fingerprint"]:
        raise UserError(
            f"{out}: holds GLUE results of another model ({state['model']['path']}); choose "
            "another output file, or delete it to start over"
        )
    state["model"] = model
    return state


def _task_entry(
    state: dict[str, Any], out: Path, data: TaskData, settings: FinetuneSettings
) -> dict[str, Any]:
    """The task's entry in the state, new or (same settings and data) resumed."""
    task = data.task
    info = {
        "source": data.source,
        "fingerprint": data.fingerprint(),
        "train_examples": len(data.splits["train"]),
        "eval_examples": {key: len(data.splits[split]) for key, split in task.evals.items()},
    }
    entry = state["tasks"].get(task.name)
    if entry and entry.get("runs"):
        was, now = entry["settings"], settings.to_json()
        changed = [f"{k} {was.get(k)} -> {now[k]}" for k in now if was.get(k) != now[k]]
        if entry["data"]["fingerprint"] != info["fingerprint"]:
            changed.append(f"data {entry['data']['source']} -> {data.source} (other examples)")
        if changed:
            raise UserError(
                f"{out}: holds {task.name} results of other settings ({'; '.join(changed)}); "
                f"choose another output file, or delete it (or its {task.name} entry) to start over"
            )
        entry.update(settings=settings.to_json(), data=info)
    else:
        entry = state["tasks"][task.name] = {"settings": settings.to_json(), "data": info}
        entry["runs"] = {}
    return entry


def _run_seeds(
    folder: Path,
    data: TaskData,
    settings: FinetuneSettings,
    seeds: list[int],
    entry: dict[str, Any],
    state: dict[str, Any],
    out: Path,
    device: torch.device,
    say: Callable[[str], None],
) -> None:
    from transformers import AutoTokenizer

    task = data.task
    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token_id is None:
        raise UserError(f"{folder}: the tokenizer has no padding token")
    train = encode(tok, data.splits["train"], settings.max_len)
    evals = {k: encode(tok, data.splits[s], settings.max_len) for k, s in task.evals.items()}
    sizes = "+".join(str(len(e)) for e in evals.values())
    say(
        f"glue: {task.name}: {len(train)} train / {sizes} eval examples, {settings.epochs} "
        f"epoch(s) at lr {settings.lr:g}, seed(s) {', '.join(map(str, seeds))} to run"
    )
    for seed in seeds:
        run = finetune(folder, task, train, evals, settings, seed, tok.pad_token_id, device)
        run["device"] = device.type
        run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        entry["runs"][str(seed)] = run
        write_json(out, state)
        scores = ", ".join(
            f"{key} {metric} {value:.4f}"
            for key, metrics in run["metrics"].items()
            for metric, value in metrics.items()
        )
        say(f"glue: {task.name} seed {seed}: {run['seconds']:.1f} s, {scores}")


def _summarise_task(entry: dict[str, Any], name: str, seeds: Sequence[int]) -> None:
    runs = [entry["runs"][str(s)] for s in seeds]
    results: dict[str, dict[str, Any]] = {}
    for key, metrics in runs[0]["metrics"].items():
        results[key] = {}
        for metric in metrics:
            values = [r["metrics"][key][metric] for r in runs]
            results[key][metric] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "per_seed": {str(s): v for s, v in zip(seeds, values)},
            }
    entry.update(
        seeds=list(seeds),
        results=results,
        seconds=round(sum(r["seconds"] for r in runs), 3),
    )


def _summarise(state: dict[str, Any]) -> None:
    summary: dict[str, dict[str, float]] = {}
    scores: dict[str, float] = {}
    for name in sorted(state["tasks"], key=lambda n: GLUE_TASKS.index(n)):
        entry = state["tasks"][name]
        if "results" not in entry:
            continue
        medians: list[float] = []
        for key, metrics in entry["results"].items():
            summary[key] = {m: v["median"] for m, v in metrics.items()}
            medians += summary[key].values()
        scores[name] = sum(medians) / len(medians)
    state["summary"] = summary
    state["score"] = sum(scores.values()) / len(scores) if scores else None
    state["score_tasks"] = list(scores)


def format_table(results: dict[str, Any]) -> str:
    """The results of :func:`run_glue` as a plain-text table, in % as papers print them."""
    lines = [
        f"GLUE dev, {results['model']['name']}: median over seeds [min, max], %",
        f"{'task':<8} {'metric':<21} {'median':>7} {'min':>7} {'max':>7}  seeds",
    ]
    for name in GLUE_TASKS:
        entry = results["tasks"].get(name)
        if not entry or "results" not in entry:
            continue
        for key, metrics in entry["results"].items():
            for metric, v in metrics.items():
                lines.append(
                    f"{key:<8} {metric:<21} {100 * v['median']:7.1f} {100 * v['min']:7.1f} "
                    f"{100 * v['max']:7.1f}  {len(v['per_seed'])}"
                )
    if results.get("score") is not None:
        lines.append(
            f"{'score':<8} {'mean of task scores':<21} {100 * results['score']:7.1f}"
            f"  ({', '.join(results['score_tasks'])})"
        )
    return "\n".join(lines)
