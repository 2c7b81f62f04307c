"""Sentence-embedding evaluation of a model folder: for students of sentence-embedding teachers.

* :func:`embed`: L2-normalised sentence embeddings of a Hugging Face folder (``AutoTokenizer`` +
  ``AutoModel``; a masked-LM export loads as its base encoder), pooled over the last hidden state
  as :func:`pool` does: ``mean`` (attention-mask-weighted mean, as sentence-transformers'
  all-MiniLM-L6-v2 does), ``cls`` (the first token) or ``auto`` (:func:`resolve_pooling`).
  :class:`Encoder` keeps the model loaded between calls.
* :func:`sts_spearman`: a semantic-similarity task that runs offline: the cosine similarities of
  sentence pairs against their gold scores (:func:`read_pairs`: jsonl, csv, tsv or parquet with
  columns ``sentence1``, ``sentence2`` and ``score`` or ``label``, so a GLUE STS-B validation
  file works as it is), as Spearman (average ranks for ties) and Pearson correlations
  (:func:`spearman`, :func:`pearson`).
* :func:`mteb_eval`: MTEB tasks through the ``mteb`` package, when it is installed and the tasks'
  data can be loaded; otherwise a one-line :class:`~data_prep.errors.UserError` saying what is
  missing.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data_prep.errors import UserError

POOLINGS = ("mean", "cls", "auto")
COLUMNS = ("sentence1", "sentence2", "score")  # "label" (GLUE STS-B's name) also stands for score
SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")
EXPORTED_CONFIG = "distil_config.yaml"  # pipeline.publish.folder.EXPORTED_CONFIG: names the teacher
MIN_PAIRS = 3


# --- pooling ------------------------------------------------------------------------------------
def _st_pooling(folder: Path) -> str | None:
    """The pooling a sentence-transformers folder declares (``modules.json`` and its Pooling
    module's ``config.json``), or None when the folder has no such files."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        path = next(
            m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")
        )
        config = json.loads((folder / path / "config.json").read_text(encoding="utf-8"))
    except StopIteration:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{modules_file}: cannot read its pooling ({type(exc).__name__}); "
            "pass pooling='mean' or 'cls' explicitly"
        ) from None
    mode = config.get("pooling_mode")  # newer sentence-transformers name the mode directly
    if mode in ("mean", "cls"):
        return str(mode)
    enabled = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    if enabled == ["pooling_mode_mean_tokens"]:
        return "mean"
    if enabled == ["pooling_mode_cls_token"]:
        return "cls"
    raise UserError(
        f"{folder / path / 'config.json'}: pooling {mode or ', '.join(enabled) or 'none'} is not "
        "supported (only mean or cls); pass pooling='mean' or 'cls' explicitly"
    )


def _export_teacher(folder: Path) -> Path | None:
    """The local teacher folder a student export's ``distil_config.yaml`` names, if any."""
    path = folder / EXPORTED_CONFIG
    if not path.is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        teacher = config["model"]["teacher"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(teacher, str) or not Path(teacher).is_dir():
        return None
    return Path(teacher)


def resolve_pooling(model_dir: str | Path, pooling: str = "auto") -> str:
    """``mean`` or ``cls``: ``pooling`` itself, or for ``auto`` the pooling the folder's
    sentence-transformers config declares, else that of the (local) teacher its
    ``distil_config.yaml`` names, else ``mean``."""
    if pooling not in POOLINGS:
        raise UserError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    if pooling != "auto":
        return pooling
    folder = Path(model_dir)
    found = _st_pooling(folder)
    if found is None and (teacher := _export_teacher(folder)) is not None:
        found = _st_pooling(teacher)
    return found or "mean"


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vectors ``[batch, hidden]`` of a last hidden state ``[batch, seq, hidden]``
    (``mean``: over the positions the mask keeps; ``cls``: the first position), not normalised."""
    if pooling == "cls":
        return last_hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling {pooling!r}: expected mean or cls")
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# --- embeddings ---------------------------------------------------------------------------------
class Encoder:
    """A model folder loaded once for :meth:`encode` (eval mode, float32, on ``device``)."""

    def __init__(
        self,
        model_dir: str | Path,
        pooling: str = "mean",
        max_len: int = 128,
        device: torch.device | str | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
        self.pooling = resolve_pooling(folder, pooling)
        self.max_len = max_len
        self.device = torch.device(device or "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModel.from_pretrained(str(folder), dtype=torch.float32)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{folder}: cannot load the model or its tokenizer ({first})") from None
        self.model = model.to(self.device).eval()
        # e.g. DistilBERT takes no token_type_ids: feed the model only what its forward accepts
        self.inputs = set(inspect.signature(self.model.forward).parameters)

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """L2-normalised embeddings ``[len(sentences), hidden]`` (float32, CPU)."""
        out = []
        for start in range(0, len(sentences), batch_size):
            enc = self.tokenizer(
                list(sentences[start : start + batch_size]),
                truncation=True,
                max_length=self.max_len,
                padding=True,
                return_tensors="pt",
            )
            feed = {k: v.to(self.device) for k, v in enc.items() if k in self.inputs}
            last = self.model(**feed).last_hidden_state
            vectors = pool(last.float(), feed["attention_mask"], self.pooling)
            out.append(F.normalize(vectors, p=2, dim=-1).cpu())
        if not out:
            return torch.empty(0, int(self.model.config.hidden_size))
        return torch.cat(out)


def embed(
    model_dir: str | Path,
    sentences: Sequence[str],
    pooling: str = "mean",
    batch_size: int = 32,
    max_len: int = 128,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """L2-normalised sentence embeddings ``[len(sentences), hidden]`` of the model in
    ``model_dir``, pooled by ``pooling`` (``mean``, ``cls`` or ``auto``)."""
    return Encoder(model_dir, pooling, max_len, device).encode(sentences, batch_size)


# --- correlations -------------------------------------------------------------------------------
def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing the average of their ranks."""
    a = np.asarray(values, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
    ends = np.concatenate((starts[1:], [len(a)]))
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson's r; NaN when either side is constant."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"pearson: expected two 1-d arrays of one length, got {a.shape}, {b.shape}"
        )
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else math.nan


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


# --- a local STS task ---------------------------------------------------------------------------
def _expected(path: Path) -> str:
    return (
        f"{path}: expected a .jsonl, .csv, .tsv or .parquet file (csv/tsv with a header) of "
        f"at least {MIN_PAIRS} pairs with columns sentence1, sentence2, score (or label)"
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{_expected(path)}; it is missing")
    kind = path.suffix.lower()
    if kind not in SUFFIXES:
        raise UserError(f"{_expected(path)}; its suffix {kind or '(none)'} is not one of these")
    try:
        if kind == ".parquet":
            import pyarrow.parquet as pq

            rows: list[Any] = pq.read_table(path).to_pylist()
        elif kind == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
        else:  # GLUE's tsv files hold stray quotes: no quoting there
            with open(path, encoding="utf-8", newline="") as fh:
                if kind == ".tsv":
                    rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
                else:
                    rows = list(csv.DictReader(fh))
    except (OSError, ValueError, csv.Error) as exc:
        raise UserError(f"{_expected(path)}; cannot read it ({type(exc).__name__})") from None
    if any(not isinstance(r, dict) for r in rows):
        raise UserError(f"{_expected(path)}; its lines are not all JSON objects")
    return rows


def read_pairs(path: str | Path) -> tuple[list[str], list[str], list[float]]:
    """``(sentences1, sentences2, gold scores)`` of a pairs file (see :func:`sts_spearman`)."""
    path = Path(path)
    rows = _read_rows(path)
    first, second, gold = [], [], []
    for i, row in enumerate(rows, 1):
        column = "score" if "score" in row else "label"
        missing = [c for c in ("sentence1", "sentence2", column) if c not in row]
        if missing:
            raise UserError(f"{_expected(path)}; row {i} has no {', '.join(missing)}")
        try:
            score = float(row[column])
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise UserError(f"{_expected(path)}; row {i}: {column} {row[column]!r} is not a number")
        first.append("" if row["sentence1"] is None else str(row["sentence1"]))
        second.append("" if row["sentence2"] is None else str(row["sentence2"]))
        gold.append(score)
    if len(gold) < MIN_PAIRS:
        raise UserError(f"{_expected(path)}; it has {len(gold)}")
    if len(set(gold)) == 1:
        raise UserError(
            f"{_expected(path)}; all its scores are {gold[0]:g} (a GLUE test split has no labels)"
        )
    return first, second, gold


def sts_spearman(
    model_dir: str | Path,
    path: str | Path,
    pooling: str = "auto",
    batch_size: int = 32,
    max_len: int = 128,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """``{"spearmanr", "pearson", "pairs"}`` of the cosine similarities of the model's sentence
    embeddings against the gold scores of the pairs in ``path``."""
    first, second, gold = read_pairs(path)
    encoder = Encoder(model_dir, pooling, max_len, device)
    unique = list(dict.fromkeys(first + second))  # each sentence embedded once
    vectors = encoder.encode(unique, batch_size)
    index = {s: i for i, s in enumerate(unique)}
    a = vectors[[index[s] for s in first]]
    b = vectors[[index[s] for s in second]]
    cosine = (a * b).sum(-1).double().numpy()
    return {
        "spearmanr": spearman(cosine, gold),
        "pearson": pearson(cosine, gold),
        "pairs": len(gold),
    }


# --- MTEB ---------------------------------------------------------------------------------------
def _network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) looks like data that could not be fetched."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        name = type(seen).__name__
        if isinstance(seen, OSError) or any(
            w in name for w in ("Offline", "Connect", "Timeout", "HTTP", "Network", "NotFound")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def mteb_eval(
    model_dir: str | Path,
    tasks: Sequence[str],
    output_dir: str | Path,
    pooling: str = "auto",
    batch_size: int = 32,
    max_len: int = 128,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """``{task name: main score}`` of MTEB ``tasks`` (names such as ``STSBenchmark``), run by the
    ``mteb`` package on a sentence-transformers model built from ``model_dir`` with the same
    pooling as :func:`embed`; mteb writes its result files under ``output_dir``."""
    try:
        import mteb
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise UserError(
            f"MTEB evaluation needs the mteb package ({exc.name or 'mteb'} is not installed): "
            "`pip install mteb` (it is not a dependency of distil; its task data comes from the "
            "Hugging Face hub)"
        ) from None
    try:
        modules = importlib.import_module("sentence_transformers.sentence_transformer.modules")
    except ImportError:  # sentence-transformers before 6
        modules = importlib.import_module("sentence_transformers.models")
    names = list(tasks)
    try:
        task_objs = mteb.get_tasks(tasks=names)
    except (KeyError, ValueError) as exc:
        raise UserError(f"MTEB tasks {', '.join(names)}: not all known to mteb ({exc})") from None
    mode = resolve_pooling(model_dir, pooling)
    from transformers import AutoConfig

    dim = int(AutoConfig.from_pretrained(str(model_dir)).hidden_size)
    word = modules.Transformer(str(model_dir), max_seq_length=max_len)
    model = SentenceTransformer(
        modules=[word, modules.Pooling(dim, pooling_mode=mode), modules.Normalize()],
        device=str(torch.device(device or "cpu")),
    )
    try:
        results = mteb.MTEB(tasks=task_objs).run(
            model, output_folder=str(output_dir), encode_kwargs={"batch_size": batch_size}
        )
    except Exception as exc:
        if not _network_error(exc):
            raise
        raise UserError(
            f"MTEB tasks {', '.join(names)}: their data cannot be loaded without the network "
            f"({type(exc).__name__}); run once with access to the Hugging Face hub (the datasets "
            "cache keeps it), or set HF_HOME to a cache that holds it"
        ) from None
    return {r.task_name: float(r.get_score()) for r in results}
