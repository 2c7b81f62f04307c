"""The model card (README.md) of an exported model: what it is, how it was made, how well it does.

Everything comes from the run folder: ``config.yaml`` (the teacher or model as the user named it,
the recipe, the resolved batch layout), the checkpoint's commit record (step, samples seen, the
data and tokenizer fingerprints the run checked) and ``metrics.jsonl`` (the last validation at or
before the exported step). Nothing is measured here; figures the run does not have are not shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.model.masked_lm import count_parameters, num_layers
from pipeline.model.selection import PRUNING_DIR, REPORT_FILE


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


def _evaluation(record: dict[str, Any] | None, run_dir: Path, data: str) -> list[str]:
    if record is None:
        return [
            f"The run logged no validation before this step ({run_dir}/metrics.jsonl). Measure "
            f"it with `python -m pipeline.evaluate --model THIS_FOLDER --data {data}`."
        ]
    e = record["eval"]
    lines = [
        f"Held-out masked-LM figures from the run's last validation (step {record['step']}, "
        f"{int(e['masked_tokens']):,} masked tokens of the valid split; {run_dir}/metrics.jsonl):",
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


def model_card(run_dir: Path, model: Any, step: int, commit: dict[str, Any], location: str) -> str:
    """README.md of the export of ``run_dir`` at ``step`` (``commit``: its COMMIT.json) that will
    live at ``location``."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    resolved = cfg.get("resolved", {})
    teacher = cfg["model"]["teacher"]
    data, t = cfg["data"], cfg["train"]
    # one DATA_DIR, or a blend of WEIGHT:DIR (older runs wrote a single string)
    sources = " ".join(data["data"]) if isinstance(data["data"], list) else str(data["data"])
    ident = commit.get("identity", {})
    c = model.config
    kind = (
        f"{num_layers(c)}-layer {c.model_type} masked LM ({count_parameters(model):,} parameters)"
    )
    rows = {"teacher": f"`{teacher}`" if teacher else "none: masked-LM training only"}
    if teacher and resolved.get("layer_map"):
        rows["layer map"] = (
            f"student layers initialised from teacher layers {resolved['layer_map']}"
        )
    if teacher:
        rows["initialisation"] = _INITS.get(cfg["model"].get("init", "teacher"), "")
    if not teacher:
        rows["initial model"] = f"`{cfg['model']['model']}`"
    rows["data"] = (
        f"`{sources}` (data fingerprint `{str(ident.get('data_manifest'))[:16]}`, "
        f"tokenizer fingerprint `{str(ident.get('tokenizer'))[:16]}`)"
    )
    if data.get("teacher_cache"):
        rows["teacher cache"] = f"`{data['teacher_cache']}`"
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
    what = f"distilled from `{teacher}`" if teacher else "pretrained with masked-LM only"
    tags = ["masked-lm", "distil"] + (["knowledge-distillation"] if teacher else [])
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: fill-mask",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "---",
        "",
        f"# {Path(location).name}",
        "",
        f"A {kind} {what}, trained with distil (DistilBERT-style knowledge distillation on "
        "DeepSpeed ZeRO-2). Its licence and fitness for a use follow the teacher's and the "
        "training data's.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows.items()),
        "",
        f"The full configuration: `{run_dir}/config.yaml`.",
        "",
        *_pruning(run_dir),
        "## Evaluation",
        "",
        *_evaluation(last_validation(run_dir, step), run_dir, sources),
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
        "",
        f"model = AutoModelForMaskedLM.from_pretrained({json.dumps(location)})",
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(location)})",
        'fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)',
        'print(fill(f"It was a {tokenizer.mask_token} day."))',
        "```",
        "",
    ]
    return "\n".join(lines)
