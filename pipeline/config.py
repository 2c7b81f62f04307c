"""The one typed configuration of a training run: dataclasses, YAML recipes, CLI overrides.

Defaults are the DistilBERT paper recipe. A recipe (``--config pipeline/recipes/X.yaml``) sets any
subset of fields by section; the command line overrides any field as ``--section.field VALUE``
(e.g. ``--loss.alpha_ce 5``), and the common ones have short forms (``--max-steps``, ``--teacher``,
``--data``...). The DeepSpeed JSON carries engine settings only; :mod:`pipeline.ds_config` checks it
against this config, which stays the single source of truth for batch sizes and optimisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_prep.errors import UserError


@dataclass
class ModelConfig:
    teacher: str | None = None
    """Hugging Face masked-LM folder of the teacher. Unset: MLM-only training of ``model``."""
    model: str | None = None
    """Without a teacher: a config.json or HF folder of the model to train with MLM only."""
    student_layers: int = 0
    """Layers of the student; 0 = half the teacher's."""
    layer_map: list[int] | None = None
    """Teacher layer (0-based) that initialises and supervises each student layer; None = default map."""
    init: str = "teacher"
    """Student initialisation: ``teacher`` (mapped teacher layers, embeddings, MLM head) or ``random``."""
    teacher_dtype: str = "auto"
    """Teacher weights: auto (fp16 on GPU, fp32 on CPU), fp16, bf16 or fp32."""
    attn_implementation: str = "sdpa"
    """Attention kernel for both models (sdpa, eager, flash_attention_2)."""
    compile: bool = False
    """torch.compile the student and teacher encoders."""
    dropout: float | None = None
    """Override the student's dropout (None: keep the teacher's / model config's)."""


@dataclass
class LossConfig:
    temperature: float = 2.0
    """Softmax temperature T of the distillation loss."""
    alpha_ce: float = 5.0
    """Weight of T^2 * KL(teacher || student) on the logits."""
    alpha_mlm: float = 2.0
    """Weight of the student's masked-LM cross-entropy."""
    alpha_cos: float = 1.0
    """Weight of 1 - cos(last hidden states) over non-pad positions."""
    alpha_mse: float = 0.0
    """Weight b of (1/M) sum_j MSE(h_S^j, h_T^map(j)) over the M student layers."""
    ce_positions: str = "masked"
    """Positions of the distillation loss: ``masked`` or ``all`` (every non-pad position)."""


@dataclass
class MaskingConfig:
    mlm_probability: float = 0.15
    """Fraction of non-special tokens selected for prediction."""
    mask_fraction: float = 0.8
    """Of the selected: replaced by [MASK]."""
    random_fraction: float = 0.1
    """Of the selected: replaced by a random token (the rest keep their token)."""
    smoothing: float = 0.7
    """Frequency smoothing of the training masks: select tokens with weight counts^-smoothing, as
    DistilBERT does (0.7); 0 = uniform, as BERT. Validation always masks uniformly."""


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    """Linear warm-up over this fraction of max_steps, then linear decay to 0."""
    grad_clip: float = 5.0
    """Gradient clipping by global norm (0 = off)."""


@dataclass
class DataConfig:
    data: str | None = None
    """DATA_DIR written by data_prep.build_shards."""
    teacher_cache: str | None = None
    """CACHE_DIR written by data_prep.cache_teacher: teacher logits instead of a teacher forward."""
    num_workers: int = 2
    """Background data-loader processes per rank."""


@dataclass
class TrainConfig:
    output: str | None = None
    """RUN_DIR: checkpoints, tensorboard/, metrics.jsonl, config.yaml."""
    ds_config: str = "ds_configs/zero2_bf16.json"
    """DeepSpeed JSON with the engine settings."""
    max_steps: int = 0
    """Optimizer steps; 0 = ``epochs`` passes over the train split."""
    epochs: float = 3.0
    global_batch_size: int = 4096
    """Sequences per optimizer step, over all ranks: micro x grad_accum x world_size."""
    micro_batch_size: int = 0
    """Sequences per rank per forward; 0 = the largest divisor that keeps ``max_micro_batch``."""
    max_micro_batch: int = 32
    seed: int = 56
    log_every: int = 10
    save_every: int = 1000
    """Checkpoint every N steps (and at the end); 0 = only at the end."""
    keep_last: int = 3
    eval_every: int = 1000
    """Validation every N steps (and at the end); 0 = only at the end."""
    eval_samples: int = 2048
    """Validation sequences per pass (the first ones of the valid split, split across ranks)."""
    resume: str = "auto"
    """``auto`` (newest complete checkpoint in RUN_DIR), ``none``, or a checkpoint path."""
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"])
    """Signals that make every rank checkpoint at the next step and exit with ``preempt_exit_code``."""
    preempt_exit_code: int = 42
    max_min_scale_steps: int = 200
    """fp16: stop (without saving) when the loss scale stays at its minimum this many steps."""
    sample_log: bool = False
    """Each rank appends the sample indices and mask views of every micro-batch to
    RUN_DIR/samples/rankR.jsonl (a data audit: none skipped, none repeated)."""
    stop_after_steps: int = 0
    """Stop (with a checkpoint) after this many steps of this process, leaving max_steps as it is (testing, time slices)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def distilling(self) -> bool:
        return self.model.teacher is not None


SHORT_FLAGS = {
    "--teacher": "model.teacher",
    "--model": "model.model",
    "--data": "data.data",
    "--teacher-cache": "data.teacher_cache",
    "--output": "train.output",
    "--ds-config": "train.ds_config",
    "--max-steps": "train.max_steps",
    "--global-batch-size": "train.global_batch_size",
    "--micro-batch-size": "train.micro_batch_size",
    "--seed": "train.seed",
    "--log-every": "train.log_every",
    "--save-every": "train.save_every",
    "--eval-every": "train.eval_every",
    "--resume": "train.resume",
    "--lr": "optim.lr",
    "--student-layers": "model.student_layers",
}


def _fields(cls: type) -> list[tuple[str, dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, f, hints[f.name]) for f in dataclasses.fields(cls)]


def _base(hint: Any) -> Any:
    """``X`` for ``X | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _parse_value(text: str, hint: Any, where: str) -> Any:
    """Parse a command-line string for a field of type ``hint`` (YAML syntax for lists)."""
    base = _base(hint)
    if text.lower() in ("none", "null") and base is not hint:
        return None
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base in (int, float, str):
            return base(text)
        if typing.get_origin(base) is list:
            value = yaml.safe_load(text)
            if not isinstance(value, list):
                value = [v.strip() for v in text.split(",") if v.strip()]
            return _coerce(value, base, where)
    except (ValueError, TypeError, yaml.YAMLError):
        raise UserError(f"{where}: cannot read {text!r} as {_type_name(base)}") from None
    raise TypeError(f"unsupported config type {hint}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and widen int -> float) a value from YAML or the command line against ``hint``."""
    if isinstance(value, str) and _base(hint) is not str:
        return _parse_value(value, hint, where)
    base = _base(hint)
    if value is None:
        if base is not hint:
            return None
        raise UserError(f"{where}: may not be null")
    if typing.get_origin(base) is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(base)
        try:
            return [item(v) for v in value]
        except (ValueError, TypeError):
            raise UserError(
                f"{where}: expected a list of {_type_name(item)}, got {value!r}"
            ) from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise UserError(f"{where}: expected {_type_name(base)}, got {value!r}")
    return value


def apply_overrides(cfg: Config, values: dict[str, Any], source: str) -> None:
    """Set ``section.field`` entries (or nested dicts) on ``cfg``; unknown names are errors."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    for dotted, value in flat.items():
        section_name, _, name = dotted.partition(".")
        section = getattr(cfg, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            raise UserError(
                f"{source}: unknown config section '{section_name}' (sections: {', '.join(f.name for f in dataclasses.fields(cfg))})"
            )
        known = {n: hint for n, _, hint in _fields(type(section))}
        if name not in known:
            raise UserError(
                f"{source}: unknown field '{dotted}' (fields of {section_name}: {', '.join(known)})"
            )
        setattr(section, name, _coerce(value, known[name], f"{source}: {dotted}"))


def load_recipe(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: recipe not found (recipes live in pipeline/recipes/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe is a mapping of sections to fields")
    return data


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description="Distil a student from a teacher (or train a masked LM) on DeepSpeed ZeRO-2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every config field can be set as --section.field VALUE; see pipeline/config.py.",
    )
    p.add_argument(
        "--config",
        help="YAML recipe (pipeline/recipes/*.yaml); default: the DistilBERT paper recipe",
    )
    for flag, dotted in SHORT_FLAGS.items():
        p.add_argument(flag, dest=dotted, default=None, metavar="VALUE", help=f"= --{dotted}")
    cfg = Config()
    for section in dataclasses.fields(cfg):
        for name, _f, _hint in _fields(type(getattr(cfg, section.name))):
            dotted = f"{section.name}.{name}"
            default = getattr(getattr(cfg, section.name), name)
            p.add_argument(
                f"--{dotted}",
                dest=dotted,
                default=None,
                metavar="VALUE",
                help=f"(default: {default})",
            )
    return p


def parse_config(argv: list[str] | None = None) -> Config:
    """Defaults, then the recipe, then command-line overrides."""
    args = build_arg_parser().parse_args(argv)
    cfg = Config()
    if args.config:
        apply_overrides(cfg, load_recipe(args.config), args.config)
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    apply_overrides(cfg, overrides, "command line")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that need no files: each failure says which field and what to do."""
    if cfg.model.teacher is None and cfg.model.model is None:
        raise UserError(
            "pass --teacher TEACHER_DIR to distil, or --model CONFIG_OR_DIR to train with MLM only"
        )
    if cfg.model.teacher is not None and cfg.model.model is not None:
        raise UserError(
            "--teacher and --model exclude each other: the student is derived from the teacher"
        )
    if cfg.data.data is None:
        raise UserError("pass --data DATA_DIR (written by python -m data_prep.build_shards)")
    if cfg.train.output is None:
        raise UserError("pass --output RUN_DIR")
    if cfg.model.init not in ("teacher", "random"):
        raise UserError(f"model.init must be 'teacher' or 'random', not {cfg.model.init!r}")
    if cfg.model.teacher_dtype not in ("auto", "fp16", "bf16", "fp32"):
        raise UserError(
            f"model.teacher_dtype must be auto, fp16, bf16 or fp32, not {cfg.model.teacher_dtype!r}"
        )
    if cfg.loss.ce_positions not in ("masked", "all"):
        raise UserError(
            f"loss.ce_positions must be 'masked' or 'all', not {cfg.loss.ce_positions!r}"
        )
    if cfg.loss.temperature <= 0:
        raise UserError("loss.temperature must be positive")
    weights = [cfg.loss.alpha_ce, cfg.loss.alpha_mlm, cfg.loss.alpha_cos, cfg.loss.alpha_mse]
    if any(w < 0 for w in weights):
        raise UserError("loss weights must be >= 0")
    if not cfg.distilling and cfg.loss.alpha_mlm <= 0:
        raise UserError("MLM-only training (no --teacher) needs loss.alpha_mlm > 0")
    if cfg.distilling and sum(weights) <= 0:
        raise UserError("every loss weight is 0: set at least one of loss.alpha_ce/mlm/cos/mse")
    m = cfg.masking
    if (
        not 0 < m.mlm_probability < 1
        or m.mask_fraction + m.random_fraction > 1
        or min(m.mask_fraction, m.random_fraction) < 0
    ):
        raise UserError(
            "masking: need 0 < mlm_probability < 1 and mask_fraction + random_fraction <= 1"
        )
    t = cfg.train
    if t.global_batch_size < 1 or t.micro_batch_size < 0:
        raise UserError("train.global_batch_size must be >= 1 and train.micro_batch_size >= 0")
    if t.max_steps < 0 or (t.max_steps == 0 and t.epochs <= 0):
        raise UserError("set train.max_steps > 0 or train.epochs > 0")
    if t.resume not in ("auto", "none") and not Path(t.resume).exists():
        raise UserError(
            f"--resume {t.resume}: no such checkpoint (use auto, none, or RUN_DIR/checkpoints/global_stepN)"
        )


def save_config(cfg: Config, path: Path, extra: dict[str, Any] | None = None) -> None:
    from data_prep.atomic import atomic_open

    body = cfg.to_dict()
    if extra:
        body["resolved"] = extra
    with atomic_open(path, "w") as fh:
        yaml.safe_dump(body, fh, sort_keys=False)
