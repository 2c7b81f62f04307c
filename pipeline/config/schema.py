"""The one typed configuration of a training run, and the rules that need no files.

Defaults are the DistilBERT paper recipe. Each field's docstring is its documentation: it is what
``python -m pipeline.train --help`` prints (see :mod:`pipeline.config.cli`, which also reads YAML
recipes and ``--section.field VALUE`` overrides). The DeepSpeed JSON carries engine settings only;
:mod:`pipeline.run.ds_config` checks it against this config, the single source of truth for batch
sizes and optimisation. :func:`validate` checks everything that needs no files and turns the
required paths into :class:`RunPaths`, whose fields are never None where a run needs them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from data_prep.errors import UserError
from pipeline.config.sources import Source, parse_sources

DEFAULT_SEED = 56
LOSS_WEIGHTS = (
    "alpha_ce",
    "alpha_mlm",
    "alpha_cos",
    "alpha_mse",
    "alpha_hidden",
    "alpha_attn",
    "alpha_relation",
)
INTERNAL_LOSSES = ("alpha_cos", "alpha_mse", "alpha_hidden", "alpha_attn", "alpha_relation")
"""The losses on the teacher's internals: they need the online teacher, cache or not."""
TeacherDtype = Literal["auto", "fp16", "bf16", "fp32"]


@dataclass
class ModelConfig:
    """The teacher, and the student derived from it (or the model of MLM-only training)."""

    teacher: str | None = None
    """The teacher: a Hugging Face masked-LM folder or hub ID (``bert-base-uncased``; resolved
    through the hub cache, HF_HUB_OFFLINE honoured). Unset: MLM-only training of ``model``."""
    model: str | None = None
    """Without a teacher: a config.json, HF folder or hub ID of the model to train with MLM only."""
    student_layers: int = 0
    """Layers of the student; 0 = half the teacher's."""
    student_hidden: int = 0
    """Hidden size (width) of the student; 0 = the teacher's."""
    student_heads: int = 0
    """Attention heads of the student; 0 = the teacher's at the teacher's width, else the
    teacher's head size is kept (student_hidden / teacher head size)."""
    student_intermediate: int = 0
    """FFN size of the student; 0 = the teacher's FFN-to-width ratio times the student's width."""
    student_config: str | None = None
    """A config.json (BERT or DistilBERT key names) giving the student's layers, hidden size, heads
    and FFN size; a student_* field set as well must agree with it."""
    student_type: str | None = None
    """The student's family as a ``model_type`` (``bert``, ``modernbert``, ``deberta-v2``, ...);
    None: the teacher's own (a DistilBERT for a BERT teacher). Another family than the teacher's
    shares the teacher's tokenizer (vocabulary, special tokens, positions) and starts from
    ``init random``: teacher weights map only onto a student of their own family."""
    layer_map: list[int] | None = None
    """Teacher layer (0-based) that initialises and supervises each student layer; None = default map."""
    layer_map_rule: Literal["distilbert", "tinybert", "importance"] = "distilbert"
    """Default layer map: ``distilbert`` (evenly spread, first and last included: 12 -> 6 gives
    0,2,4,7,9,11), ``tinybert`` (the top layer of each of M equal blocks: 12 -> 4 gives 2,5,8,11)
    or, with ``init prune``, ``importance`` (the layers of the highest block importance)."""
    init: Literal["teacher", "select", "prune", "random"] = "teacher"
    """Student initialisation: ``teacher`` (copy of the mapped teacher layers, embeddings and MLM
    head; the teacher's width only), ``select`` (weight selection, Xu et al. 2023: a consistent
    subset of the teacher's neurons in every layer, for any narrower student; equal to
    ``teacher`` at the teacher's width), ``prune`` (after Minitron: the teacher's most important
    heads, FFN neurons and residual channels, and with layer_map_rule importance its layers,
    measured on prune_samples training sequences) or ``random``."""
    prune_samples: int = 256
    """Calibration sequences for ``init prune``: evenly spread over the training split, read once
    and the scores kept in RUN_DIR/pruning/ (a requeue reuses them)."""
    teacher_dtype: TeacherDtype = "auto"
    """Teacher weights: auto (fp16 on GPU, fp32 on CPU), fp16, bf16 or fp32."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel for both models."""
    compile: bool = False
    """torch.compile the student and teacher encoders."""
    dropout: float | None = None
    """Override the student's dropout (None: keep the teacher's / model config's)."""


@dataclass
class LossConfig:
    """The weighted distillation losses."""

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
    alpha_hidden: float = 0.0
    """Weight of TinyBERT's hidden-state loss: MSE(E_S W_e, E_T) of the embeddings plus, for every
    student layer j, MSE(h_S^j W_h, h_T^map(j)), summed; W_e, W_h are learned projections (student
    width -> teacher width), checkpointed with the run and left out of the export. Any widths."""
    alpha_attn: float = 0.0
    """Weight of TinyBERT's attention loss: for every student layer j, the distance between its
    attention and teacher layer map(j)'s (loss.attn_target), mean over heads, summed over layers.
    Teacher heads are averaged in consecutive groups of h_T / h_S, one group per student head."""
    attn_target: Literal["scores", "probs"] = "scores"
    """``scores``: MSE of the scaled scores QK^T/sqrt(d) over non-pad query-key pairs (TinyBERT);
    ``probs``: KL(teacher || student) of the attention distributions per non-pad query."""
    alpha_relation: float = 0.0
    """Weight of MiniLMv2's self-attention relation loss: for X = Q, K, V of one teacher and one
    student layer, each split into relation_heads heads X_r, KL(teacher || student) of
    softmax(X_r X_r^T / sqrt(d_r)) per non-pad query, averaged, summed over Q-Q, K-K and V-V.
    Any widths and head counts."""
    relation_heads: int = 0
    """Relation heads R (must divide both widths); 0 = the teacher's attention heads, or the
    largest number below that divides both widths."""
    relation_teacher_layer: int = -1
    """Teacher layer of the relations (0-based; negative counts from the end): -1, the last, is
    MiniLMv2's choice for base-size teachers; for large ones the paper takes an upper-middle layer."""
    relation_student_layer: int = -1
    """Student layer of the relations (0-based; negative counts from the end): -1, the last (MiniLMv2)."""
    ce_positions: Literal["masked", "all"] = "masked"
    """Positions of the distillation loss: ``masked`` or ``all`` (every non-pad position)."""


@dataclass
class MaskingConfig:
    """Masked-LM masking of the training samples (a pure function of seed, view and index)."""

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
    """AdamW and its learning-rate schedule."""

    lr: float = 5e-4
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay of matrices (never of biases and LayerNorms)."""
    warmup_fraction: float = 0.05
    """Linear warm-up over this fraction of max_steps, then linear decay to 0."""
    grad_clip: float = 5.0
    """Gradient clipping by global norm (0 = off)."""


@dataclass
class DataConfig:
    """The prepared shards and where the teacher's targets come from."""

    data: list[str] = field(default_factory=list)
    """DATA_DIR written by data_prep.build_shards; or several as WEIGHT:DIR to blend them by weight
    (``--data 0.3:BOOKS 0.7:WIKI``), as Megatron blends datasets."""
    teacher_cache: str | None = None
    """CACHE_DIR written by pipeline.cache_teacher: teacher logits instead of a teacher forward."""
    num_workers: int = 2
    """Background data-loader processes per rank."""
    verify_checksums: bool = True
    """Before training, check every shard's sha256 against the manifest (the ranks share the
    work): a byte changed on disk stops the run in one line instead of being trained on."""


@dataclass
class TrainConfig:
    """The run: its folder, engine, length, batch, logging, checkpoints and preemption."""

    output: str | None = None
    """RUN_DIR: checkpoints, tensorboard/, metrics.jsonl, config.yaml."""
    ds_config: str = "ds_configs/zero2_bf16.json"
    """DeepSpeed JSON with the engine settings: a path, or the name of a shipped one
    (``zero2_bf16``, ``ds_configs/zero2_fp16.json``: found from any working directory)."""
    max_steps: int = 0
    """Optimizer steps; 0 = ``epochs`` passes over the train split."""
    epochs: float = 3.0
    """Passes over the train split when max_steps is 0."""
    global_batch_size: int = 4096
    """Sequences per optimizer step, over all ranks: micro x grad_accum x world_size."""
    micro_batch_size: int = 0
    """Sequences per rank per forward; 0 = the largest divisor that keeps ``max_micro_batch``."""
    max_micro_batch: int = 32
    """Upper bound of the derived micro-batch."""
    seed: int = DEFAULT_SEED
    """Seed of the sample order and the masks."""
    log_every: int = 10
    """Log (progress line, metrics.jsonl, trackers) every N steps."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers (rank 0), any of tensorboard, wandb, mlflow, or none; the resolved
    config is logged as the run's parameters and a resumed run continues the same tracker run
    (ids in RUN_DIR/trackers.json). wandb: WANDB_PROJECT (default distil), WANDB_MODE=offline
    for a cluster without network. mlflow: MLFLOW_TRACKING_URI (default
    sqlite:///RUN_DIR/mlflow.db), MLFLOW_EXPERIMENT_NAME (default distil)."""
    peak_tflops: float = 0.0
    """The device's peak dense bf16 TFLOP/s for the MFU of the log; 0 = the datasheet figure of
    a known GPU, none on a CPU."""
    save_every: int = 1000
    """Checkpoint every N steps (and at the end); 0 = only at the end."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted."""
    eval_every: int = 1000
    """Validation every N steps (and at the end); 0 = only at the end."""
    eval_samples: int = 2048
    """Validation sequences per pass (the first ones of the valid split, split across ranks)."""
    eval_on_start: bool = False
    """Validate once before the first step of a fresh run (logged as step 0: what the
    initialisation alone gives; a resumed run does not repeat it)."""
    probe: str | None = None
    """A quick downstream check at every validation: FOLDER of a small labelled classification
    set in GLUE's format (train.jsonl and validation.jsonl, or .csv/.tsv/.parquet; columns
    sentence and label, or sentence1, sentence2 and label for pairs). A logistic regression on
    the student's frozen mean-pooled features, fitted on train, adds probe_accuracy (on
    validation), probe_train_accuracy and probe_seconds to the validation metrics. Rank 0 runs
    it in seconds; training is unchanged (pipeline/evaluation/probe.py)."""
    probe_examples: int = 512
    """Examples of each probe split (a fixed subset of a larger file)."""
    resume: str = "auto"
    """``auto`` (newest complete checkpoint in RUN_DIR), ``none``, or a checkpoint path."""
    allow_config_change: bool = False
    """Resume although a setting that shapes training (learning rate, loss weights, masking,
    batch, seed) differs from the checkpoint's; each change is printed and recorded in
    RUN_DIR/config_changes.jsonl. Without it such a resume is refused; a new length
    (max_steps, epochs) is always allowed, and recorded the same way."""
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"])
    """Signals that make every rank checkpoint at the next step and exit with ``preempt_exit_code``."""
    preempt_exit_code: int = 42
    """Exit code after a preemption checkpoint (slurm/pretrain.sbatch requeues on it)."""
    max_min_scale_steps: int = 200
    """fp16: stop (without saving) when this many steps in a row overflow at the minimum loss scale."""
    sample_log: bool = False
    """Each rank appends the sample indices and mask views of every micro-batch to
    RUN_DIR/samples/rankR.jsonl (a data audit: none skipped, none repeated)."""
    stop_after_steps: int = 0
    """Stop (with a checkpoint) after this many steps of this process, leaving max_steps as it is (testing, time slices)."""
    collective_timeout_s: int = 1800
    """Longest wait of any collective (the process group and the control group): a rank that
    died without a word (SIGKILL, a lost node) ends every other rank's wait after this long.
    Failures a rank can report (a failed save, a failed conversion, bad input) end every rank's
    wait at once, whatever this is."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG=:4096:8: the same
    bits from run to run on a GPU too, at some cost in speed (CPU runs are deterministic anyway)."""
    dry_run: bool = False
    """Plan only: every check of a real run at this world size (config, data manifest and shards,
    teacher and its family, student shape, objectives, DeepSpeed config, batch split, the
    checkpoint a resume would take), then a summary on rank 0 and exit 0, writing nothing into
    RUN_DIR and starting no engine. Run it under the job's launcher to check its batch split."""


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

    @property
    def hidden_losses(self) -> bool:
        """A loss on the teacher's internals (hidden states, attention, relations) is on: the
        teacher must run, teacher cache or not (the cache carries logits only)."""
        return self.distilling and any(getattr(self.loss, name) > 0 for name in INTERNAL_LOSSES)


@dataclass(frozen=True)
class RunPaths:
    """The run's data and output, checked by :func:`validate` (the teacher and the model of
    MLM-only training are resolved once, by :func:`pipeline.run.plan.resolve_models`)."""

    sources: tuple[Source, ...]  # the data: one DATA_DIR, or several blended by weight
    output: str
    teacher_cache: str | None


def check_masking(m: MaskingConfig) -> None:
    """The one check of masking settings (training and the teacher cache alike)."""
    if (
        not 0 < m.mlm_probability < 1
        or m.mask_fraction + m.random_fraction > 1
        or min(m.mask_fraction, m.random_fraction) < 0
        or m.smoothing < 0
    ):
        raise UserError(
            "masking: need 0 < mlm_probability < 1, mask_fraction and random_fraction >= 0 with "
            "mask_fraction + random_fraction <= 1, and smoothing >= 0"
        )


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""train.report_to names, and the extra of distil that installs each (``pip install distil[X]``)."""


def check_trackers(names: list[str]) -> None:
    """Known names, and each one's package installed: one line naming the extra otherwise."""
    import importlib.util

    for name in names:
        if name == "none":
            continue
        if name not in TRACKERS:
            raise UserError(
                f"train.report_to: unknown tracker {name!r} (choose from "
                f"{', '.join(TRACKERS)}, or none)"
            )
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"train.report_to {name}: the {name} package is not installed; pip install "
                f"'distil[{TRACKERS[name]}]' (or leave {name} out of --train.report_to)"
            )


def validate(cfg: Config) -> RunPaths:
    """Checks that need no files: each failure says which field and what to do."""
    if cfg.model.teacher is None and cfg.model.model is None:
        raise UserError(
            "pass --teacher TEACHER_DIR to distil, or --model CONFIG_OR_DIR to train with MLM only"
        )
    if cfg.model.teacher is not None and cfg.model.model is not None:
        raise UserError(
            "--teacher and --model exclude each other: the student is derived from the teacher"
        )
    if not cfg.data.data:
        raise UserError("pass --data DATA_DIR (written by python -m data_prep.build_shards)")
    if cfg.train.output is None:
        raise UserError("pass --output RUN_DIR")
    if cfg.loss.temperature <= 0:
        raise UserError("loss.temperature must be positive")
    weights = [getattr(cfg.loss, name) for name in LOSS_WEIGHTS]
    if any(w < 0 for w in weights):
        raise UserError("loss weights must be >= 0")
    m = cfg.model
    shape = [m.student_layers, m.student_hidden, m.student_heads, m.student_intermediate]
    if min(shape) < 0 or cfg.loss.relation_heads < 0:
        raise UserError("model.student_* sizes and loss.relation_heads must be >= 0 (0 = default)")
    if m.layer_map_rule == "importance" and m.init != "prune":
        raise UserError(
            "model.layer_map_rule importance chooses layers by the scores of model.init prune: "
            "set model.init prune, or use the distilbert or tinybert rule"
        )
    if m.init == "prune" and m.prune_samples < 1:
        raise UserError("model.prune_samples must be >= 1 (calibration sequences of init prune)")
    if not cfg.distilling and cfg.loss.alpha_mlm <= 0:
        raise UserError("MLM-only training (no --teacher) needs loss.alpha_mlm > 0")
    if cfg.distilling and sum(weights) <= 0:
        raise UserError(
            "every loss weight is 0: set at least one of loss.alpha_ce/mlm/cos/mse/hidden/attn/relation"
        )
    check_masking(cfg.masking)
    t = cfg.train
    check_trackers(t.report_to)
    if t.collective_timeout_s < 1:
        raise UserError("train.collective_timeout_s must be at least 1 (seconds)")
    if t.global_batch_size < 1 or t.micro_batch_size < 0:
        raise UserError("train.global_batch_size must be >= 1 and train.micro_batch_size >= 0")
    if t.max_steps < 0 or (t.max_steps == 0 and t.epochs <= 0):
        raise UserError("set train.max_steps > 0 or train.epochs > 0")
    if t.resume not in ("auto", "none") and not Path(t.resume).exists():
        raise UserError(
            f"--resume {t.resume}: no such checkpoint (use auto, none, or RUN_DIR/checkpoints/global_stepN)"
        )
    return RunPaths(
        sources=parse_sources(cfg.data.data),
        output=cfg.train.output,
        teacher_cache=cfg.data.teacher_cache,
    )


def save_config(cfg: Config, path: Path, extra: dict[str, Any] | None = None) -> None:
    from data_prep.atomic import atomic_open

    body = cfg.to_dict()
    if extra:
        body["resolved"] = extra
    with atomic_open(path, "w") as fh:
        yaml.safe_dump(body, fh, sort_keys=False)
