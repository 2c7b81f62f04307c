"""The model card (README.md) of an exported model: what it is, how it was made, how well it does.

Everything comes from the run: its resolved config (the checkpoint's ``config.yaml``, or the run
folder's: the teacher or model as the user named it, the recipe, the resolved batch layout), the
checkpoint's commit record (step, samples seen, the data and tokenizer fingerprints the run
checked) and ``metrics.jsonl`` (the last validation at or before the exported step). Nothing is
measured here; figures the run does not have are not shown.

The card opens with the hub's metadata (YAML front matter written by huggingface_hub's
``ModelCardData``): ``base_model`` (the teacher, or the model MLM training started from, when it is
a hub ID), ``license`` (the teacher's, when its card or config names one), ``datasets`` (the hub
datasets of ``hf:`` data sources), ``library_name``, ``pipeline_tag`` and tags. The card names
no path of the machine it was made on: a folder is shown by its last component, a hub model or
dataset by its ID.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.hub import is_hub_id
from pipeline.config.sources import parse_sources
from pipeline.model.masked_lm import count_parameters, num_layers
from pipeline.model.selection import PRUNING_DIR, REPORT_FILE
from pipeline.publish.card_results import eval_results, results_table


def last_validation(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The last ``{"step", "eval"}`` record of metrics.jsonl at or before ``step``, if any."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a crash: the rest of the file is still good
            continue
        if "eval" in record and int(record.get("step", -1)) <= step:
            found = record
    return found


def _recipe(cfg: dict[str, Any], distilling: bool) -> str:
    loss, m, o = cfg["loss"], cfg["masking"], cfg["optim"]
    if distilling:
        terms = [
            f"{loss['alpha_ce']} x T²·KL(teacher ‖ student) at T={loss['temperature']} "
            f"({loss['ce_positions']} positions)",
            f"{loss['alpha_mlm']} x masked-LM cross-entropy",
            f"{loss['alpha_cos']} x cosine of the last hidden states",
        ]
        if loss["alpha_mse"]:
            terms.append(f"{loss['alpha_mse']} x per-layer hidden-state MSE")
        objective = " + ".join(terms)
    else:
        objective = "masked-LM cross-entropy"
    return (
        f"{objective}; masking {m['mlm_probability']:.0%} of tokens "
        f"({m['mask_fraction']:.0%} [MASK] / {m['random_fraction']:.0%} random, frequency "
        f"smoothing {m['smoothing']}); AdamW lr {o['lr']}, betas {tuple(o['betas'])}, "
        f"weight decay {o['weight_decay']}, {o['warmup_fraction']:.0%} warm-up then linear "
        f"decay, clipping {o['grad_clip']}"
    )


def _evaluation(record: dict[str, Any] | None) -> list[str]:
    if record is None:
        return [
            "The run logged no validation before this step (its metrics.jsonl). Measure it with "
            "`python -m pipeline.evaluate --model THIS_FOLDER --data DATA_DIR`."
        ]
    e = record["eval"]
    lines = [
        f"Held-out masked-LM figures from the run's last validation (step {record['step']}, "
        f"{int(e['masked_tokens']):,} masked tokens of the valid split; the run's metrics.jsonl):",
        "",
        "| metric | value |",
        "|---|---|",
        f"| MLM accuracy | {e['mlm_accuracy']:.2%} |",
        f"| MLM loss | {e['mlm_loss']:.4f} |",
    ]
    if "teacher_mlm_accuracy" in e:
        lines += [
            f"| teacher's MLM accuracy | {e['teacher_mlm_accuracy']:.2%} |",
            f"| top-1 agreement with the teacher | {e['agreement']:.2%} |",
            f"| KL(teacher ‖ model), T=1 | {e['kl']:.4f} |",
        ]
    return lines


_INITS = {
    "teacher": "the mapped teacher layers, embeddings and MLM head, copied (DistilBERT)",
    "select": "weight selection: evenly spread teacher neurons (Xu et al. 2023)",
    "prune": "pruned: the teacher's most important heads, neurons, channels and layers "
    "(after Minitron, Muralidharan et al. 2024)",
    "random": "random (the architecture's own initialisation)",
}


def _pruning(run_dir: Path) -> list[str]:
    """The section saying what a pruned student kept (nothing for other inits)."""
    path = run_dir / PRUNING_DIR / REPORT_FILE
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    t = r["teacher"]
    lines = [
        "## Pruning",
        "",
        f"Importance measured on {r['calibration']['sequences']} training sequences "
        f"({r['calibration']['tokens']:,} tokens). Kept {len(r['layers_kept'])} of the teacher's "
        f"{t['layers']} layers ({r['layers_kept']}, {r['layers_share']:.0%} of the block "
        f"importance) and {r['channels_kept']} of its {t['hidden']} residual channels "
        f"({r['channels_share']:.0%} of their importance).",
        "",
        "| student layer | teacher layer | heads kept | share of head importance | FFN neurons "
        "| share of neuron importance |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["per_layer"]:
        lines.append(
            f"| {row['student_layer']} | {row['teacher_layer']} | {row['heads']} | "
            f"{row['heads_share']:.0%} | {row['ffn_neurons']} of {t['intermediate']} | "
            f"{row['ffn_share']:.0%} |"
        )
    return [*lines, ""]


def shown(name: str) -> str:
    """A model or folder as the card shows it: a hub ID as it is, a path by its last component."""
    path = Path(name)
    return path.name or path.resolve().name or name


def hub_model(cfg: dict[str, Any], role: str) -> tuple[str, str | None] | None:
    """The hub ID and revision of the run's ``role`` model (``teacher`` or ``model``); None when
    it is a local folder or file (or the run has none)."""
    name = cfg["model"].get(role)
    if not name:
        return None
    ref = cfg.get("resolved", {}).get(role)
    if isinstance(ref, dict):  # the run resolved it: a hub ID came from a hub cache snapshot
        return (str(name), ref.get("revision")) if ref.get("revision") else None
    # a run of an earlier release kept no resolution: an ID-shaped name that is no path here
    return (str(name), None) if is_hub_id(str(name)) and not Path(name).exists() else None


def model_license(cfg: dict[str, Any], role: str) -> str | None:
    """The licence the run's ``role`` model's own card (or config.json) names, if it has one."""
    ref = cfg.get("resolved", {}).get(role)
    name = ref.get("path") if isinstance(ref, dict) else cfg["model"].get(role)
    folder = Path(name) if name else None
    if folder is None or not folder.is_dir():
        return None
    found: Any = None
    try:
        if (folder / "README.md").is_file():
            from huggingface_hub import ModelCard

            found = ModelCard.load(folder / "README.md", ignore_metadata_errors=True).data.license
        if not found and (folder / "config.json").is_file():
            found = json.loads((folder / "config.json").read_text()).get("license")
    except Exception:  # a card or config that cannot be read names no licence
        return None
    return str(found) if found else None


def hub_datasets(inputs: list[str]) -> list[str]:
    """The hub dataset IDs among data-prep inputs (``hf:NAME[:CONFIG]``; not local folders)."""
    found: list[str] = []
    for spec in inputs:
        if not spec.startswith("hf:"):
            continue
        name = spec[3:].partition(":")[0]
        if is_hub_id(name) and not Path(name).is_dir() and name not in found:
            found.append(name)
    return found


def data_inputs(data_dirs: list[str]) -> list[str]:
    """The data-prep inputs of the run's DATA_DIRs (their manifests' settings), where readable."""
    inputs: list[str] = []
    for data_dir in data_dirs:
        try:
            manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
            inputs += [str(i) for i in manifest.get("settings", {}).get("inputs", [])]
        except (OSError, ValueError, AttributeError):  # moved or unreadable: unknown sources
            continue
    return inputs


def card_data(
    cfg: dict[str, Any], data_dirs: list[str], name: str = "", results: list[Any] | None = None
) -> Any:
    """The hub metadata of the card (huggingface_hub's ``ModelCardData``); with ``results``
    (``EvalResult`` entries), the model-index of ``name``."""
    from huggingface_hub import ModelCardData

    teacher = bool(cfg["model"].get("teacher"))
    role = "teacher" if teacher else "model"
    base = hub_model(cfg, role)
    tags = ["distil", "masked-lm"] + (["distillation", "knowledge-distillation"] if teacher else [])
    return ModelCardData(
        base_model=base[0] if base else None,
        license=model_license(cfg, role),
        datasets=hub_datasets(data_inputs(data_dirs)) or None,
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=tags,
        model_name=name.rsplit("/", 1)[-1] if results else None,
        eval_results=results or None,
    )


def _named(cfg: dict[str, Any], role: str) -> str:
    """The run's ``role`` model in the card: its hub ID (and revision) or its folder's name."""
    hub = hub_model(cfg, role)
    if hub is None:
        return f"`{shown(str(cfg['model'][role]))}`"
    return f"`{hub[0]}`" + (f" (revision `{hub[1][:12]}`)" if hub[1] else "")


def _use(name: str, local: bool) -> list[str]:
    where = "# the folder's path" if local else "# from the hub"
    return [
        "```python",
        "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
        "",
        f"name = {json.dumps(name)}  {where}",
        "tokenizer = AutoTokenizer.from_pretrained(name)",
        "model = AutoModelForMaskedLM.from_pretrained(name)",
        'inputs = tokenizer(f"It was a {tokenizer.mask_token} day.", return_tensors="pt")',
        "logits = model(**inputs).logits  # (1, tokens, vocabulary)",
        "",
        'fill = pipeline("fill-mask", model=name)',
        'print(fill(f"It was a {fill.tokenizer.mask_token} day."))',
        "```",
    ]


def model_card(
    run_dir: Path,
    cfg: dict[str, Any],
    model: Any,
    step: int,
    commit: dict[str, Any],
    name: str,
    hub: bool = False,
    results: dict[str, Any] | None = None,
    teacher_results: dict[str, Any] | None = None,
) -> str:
    """README.md of the export of ``run_dir`` at ``step`` (``cfg``: the resolved config it was
    saved under; ``commit``: its COMMIT.json), named ``name``: its hub repository ID (``hub``)
    or its folder's name. ``results`` / ``teacher_results``: files of ``pipeline.evaluate
    --json`` for this model and its teacher (the model-index and a table side by side)."""
    from huggingface_hub import ModelCard

    resolved = cfg.get("resolved", {})
    teacher = cfg["model"]["teacher"]
    data, t = cfg["data"], cfg["train"]
    # one DATA_DIR, or a blend of WEIGHT:DIR (older runs wrote a single string)
    entries = data["data"] if isinstance(data["data"], list) else [data["data"]]
    sources = parse_sources([str(e) for e in entries], need_weights=False)
    shown_sources = " ".join(
        f"{s.weight:g}:{s.name}" if len(sources) > 1 else s.name for s in sources
    )
    entries_ = eval_results(results) if results else None
    meta = card_data(cfg, [s.path for s in sources], name, entries_)
    ident = commit.get("identity", {})
    c = model.config
    kind = (
        f"{num_layers(c)}-layer {c.model_type} masked LM ({count_parameters(model):,} parameters)"
    )
    rows = {"teacher": _named(cfg, "teacher") if teacher else "none: masked-LM training only"}
    if teacher and resolved.get("layer_map"):
        rows["layer map"] = (
            f"student layers initialised from teacher layers {resolved['layer_map']}"
        )
    if teacher:
        rows["initialisation"] = _INITS.get(cfg["model"].get("init", "teacher"), "")
    if not teacher:
        rows["initial model"] = _named(cfg, "model")
    rows["data"] = (
        f"`{shown_sources}` (data fingerprint `{str(ident.get('data_manifest'))[:16]}`, "
        f"tokenizer fingerprint `{str(ident.get('tokenizer'))[:16]}`)"
    )
    if meta.datasets:
        rows["data"] += ", prepared from " + ", ".join(f"`{d}`" for d in meta.datasets)
    if data.get("teacher_cache"):
        rows["teacher cache"] = f"`{shown(str(data['teacher_cache']))}`"
    rows["recipe"] = _recipe(cfg, bool(teacher))
    rows["batch"] = (
        f"{t['global_batch_size']} sequences per step = {resolved.get('micro_batch_size')} x "
        f"{resolved.get('grad_accum')} accumulation x {resolved.get('world_size')} ranks, "
        f"{resolved.get('precision')}, seed {t['seed']}"
    )
    rows["steps"] = (
        f"{step} of {resolved.get('max_steps', t['max_steps'])} "
        f"({int(commit.get('consumed_samples', 0)):,} sequences seen)"
    )
    what = (
        f"distilled from {_named(cfg, 'teacher')}" if teacher else "pretrained with masked-LM only"
    )
    origin = "the teacher's" if teacher else "the initial model's"
    licence = (
        f"Licence: `{meta.license}`, {origin} (its card says so); the training data's terms "
        "apply too."
        if meta.license
        else f"No licence is recorded here ({origin} card names none that the export could "
        "read): check the teacher's and the training data's licences before you use or share it."
    )
    body = [
        f"# {name.rsplit('/', 1)[-1]}",
        "",
        f"A {kind} {what}, trained with distil (DistilBERT-style knowledge distillation on "
        f"DeepSpeed ZeRO-2). {licence}",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows.items()),
        "",
        "The run's full configuration: `distil_config.yaml`, beside this card.",
        "",
        *_pruning(run_dir),
        "## Evaluation",
        "",
        *_evaluation(last_validation(run_dir, step)),
        "",
        *(results_table(results, teacher_results) if results else []),
        "## Use",
        "",
        *_use(name, not hub),
        "",
    ]
    card = ModelCard("---\n" + meta.to_yaml() + "\n---\n\n" + "\n".join(body))
    return str(card)
