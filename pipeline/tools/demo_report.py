"""The demo's report: report.json, report.md (printed) and loss_curves.png from the stages' outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.atomic import atomic_open, write_json

MODELS = ("teacher", "student", "control", "ablation")


def _records(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    steps: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            (evals if "eval" in rec else steps).append(rec)
    return steps, evals


def collect(workdir: Path, times: dict[str, float]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name in MODELS:
        evaluation = json.loads((workdir / "eval" / f"{name}.json").read_text())
        steps, _ = _records(workdir / "runs" / name)
        speeds = [r["tokens_per_s"] for r in steps[1:]] or [r["tokens_per_s"] for r in steps]
        mlm = evaluation["mlm"]
        entry = {
            "params": evaluation["params"],
            "mlm_accuracy": mlm["mlm_accuracy"],
            "mlm_loss": mlm["mlm_loss"],
            "agreement": mlm.get("agreement"),
            "kl": mlm.get("kl"),
            "classification_accuracy": evaluation.get("classification", {}).get("accuracy"),
            "train_steps": steps[-1]["step"] if steps else 0,
            "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
            "wall_s": times.get(name),
        }
        report[name] = entry
    t, s, c, a = (report[n] for n in MODELS)
    report["bar"] = {
        "student_retention": s["mlm_accuracy"] / t["mlm_accuracy"] if t["mlm_accuracy"] else None,
        "student_keeps_90pct_of_teacher": s["mlm_accuracy"] >= 0.9 * t["mlm_accuracy"],
        "student_beats_control": s["mlm_accuracy"] > c["mlm_accuracy"],
        "student_vs_ablation_accuracy": s["mlm_accuracy"] - a["mlm_accuracy"],
        "student_vs_ablation_loss": s["mlm_loss"] - a["mlm_loss"],
    }
    report["stages_s"] = dict(times)
    return report


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}"


def markdown(report: dict[str, Any], fill_mask: str) -> str:
    rows = [
        "| model | params | held-out MLM acc | MLM loss | agreement w/ teacher | SOTU-era acc | steps | tokens/s | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        r = report[name]
        wall = f"{r['wall_s']:.0f} s" if r["wall_s"] else "-"
        rows.append(
            f"| {name} | {_fmt(r['params'])} | {_fmt(r['mlm_accuracy'], True)} | {_fmt(r['mlm_loss'])} | "
            f"{_fmt(r['agreement'], True)} | {_fmt(r['classification_accuracy'], True)} | {r['train_steps']} | "
            f"{_fmt(r['tokens_per_s'])} | {wall} |"
        )
    bar = report["bar"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in report["stages_s"].items())
    return "\n".join([
        "# distil demo report",
        "",
        "Teacher: 4-layer BERT pretrained here with MLM only. Student: 2 layers initialised from teacher",
        "layers 0 and 3, distilled with DeepSpeed ZeRO-2 on 2 ranks. Control: the student's architecture",
        "trained with MLM only from scratch, same steps. Ablation: the student's teacher-layer init, MLM only.",
        "",
        *rows,
        "",
        f"- student keeps {_fmt(bar['student_retention'], True)} of the teacher's held-out MLM accuracy "
        f"({'meets' if bar['student_keeps_90pct_of_teacher'] else 'MISSES'} the 90% bar)",
        f"- student {'beats' if bar['student_beats_control'] else 'does NOT beat'} the MLM-only control at equal steps",
        f"- against the ablation (same init, MLM only): {100 * bar['student_vs_ablation_accuracy']:+.2f} points of "
        f"accuracy, {bar['student_vs_ablation_loss']:+.3f} MLM loss",
        f"- stage wall times: {stages}",
        "",
        "Fill-mask with the exported student:",
        "",
        fill_mask.strip(),
        "",
        "![loss curves](loss_curves.png)",
        "",
    ])  # fmt: skip


def plot(workdir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {
        "teacher": "tab:blue",
        "student": "tab:orange",
        "control": "tab:green",
        "ablation": "tab:purple",
    }
    for name, style in (("teacher", "-"), ("student", "-"), ("control", "--"), ("ablation", ":")):
        steps, evals = _records(workdir / "runs" / name)
        color = colors[name]
        if steps:
            ax1.plot(
                [r["step"] for r in steps],
                [r["mlm"] for r in steps],
                style,
                color=color,
                label=f"{name}",
            )
        if evals:
            ax2.plot(
                [r["step"] for r in evals],
                [r["eval"]["mlm_accuracy"] for r in evals],
                style + "o",
                color=color,
                label=name,
            )
    ax1.set_xlabel("step")
    ax1.set_title("training MLM loss")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_title("held-out MLM accuracy")
    ax2.legend()
    fig.tight_layout()
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def write_report(workdir: Path, times: dict[str, float]) -> dict[str, Any]:
    report = collect(workdir, times)
    write_json(workdir / "report.json", report)
    fill = (workdir / "fill_mask.md").read_text() if (workdir / "fill_mask.md").is_file() else ""
    text = markdown(report, fill)
    with atomic_open(workdir / "report.md", "w") as fh:
        fh.write(text)
    plot(workdir, workdir / "loss_curves.png")
    print(text)
    return report
