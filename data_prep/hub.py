"""Hugging Face hub IDs, resolved as transformers resolves them: through huggingface_hub's cache.

Every stage that takes a model or tokenizer folder (``--teacher``, ``--model``, ``--tokenizer``)
also takes a hub ID such as ``bert-base-uncased`` or ``google-bert/bert-base-cased``:

* an existing local path always wins (a folder that happens to be named like an ID is that folder);
* a string shaped like an ID is handed to ``huggingface_hub.snapshot_download``, which honours
  ``HF_HOME`` / ``HF_HUB_CACHE`` (where the cache lives) and ``HF_HUB_OFFLINE`` (the cache only):
  online it downloads what is missing, offline it returns the cached snapshot folder;
* only the files a stage reads are fetched: config and tokenizer files, and the weights in
  safetensors (``pytorch_model*.bin`` only when a repository has no safetensors), never the
  TF/Flax/ONNX copies that many repositories carry beside them.

Compute nodes are often offline: download once where the hub is reachable (``hf download ID`` on a
login node, into the ``HF_HOME`` the jobs see) and run the jobs with ``HF_HUB_OFFLINE=1``. The
stages work on the resolved folder, so the fingerprints of an ID and of a local copy of the same
files are the same.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from data_prep.errors import UserError

# What each kind of use reads. Top-level files only (IGNORE): subfolders hold other formats.
TOKENIZER_PATTERNS = (
    "tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "config.json",  # AutoTokenizer reads the model type from it when tokenizer_config lacks a class
)
MODEL_PATTERNS = ("*.json", "*.safetensors", "vocab.*", "merges.txt", "*.model")
LEGACY_WEIGHTS = ("pytorch_model*.bin",)
IGNORE = ("*/*",)
DOWNLOAD_FILTER = " ".join(
    [*(f"--include '{p}'" for p in MODEL_PATTERNS), *(f"--exclude '{p}'" for p in IGNORE)]
)
"""The ``hf download`` options that fetch what distil reads of a model, and nothing else (the
``hf`` CLI takes one pattern per ``--include``)."""

# huggingface_hub's rule for repository IDs: "name" or "namespace/name", at most 96 characters of
# letters, digits, "-", "_" and ".", no "--" or "..", not ending in ".git".
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` can name a hub repository (it may still be meant as a local path)."""
    return (
        bool(_ID.fullmatch(spec))
        and len(spec) <= 96
        and "--" not in spec
        and ".." not in spec
        and not spec.endswith(".git")
    )


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it and where its files are: resolved once, then passed on."""

    name: str  # as given: a folder, a file or a hub ID
    path: Path  # the local folder (or file) with the model's files
    revision: str | None = None  # the hub commit of a snapshot; None for a local path

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "path": str(self.path), "revision": self.revision}


def resolve_ref(
    spec: str | os.PathLike[str], what: str, kind: Literal["model", "tokenizer"] = "model"
) -> ModelRef:
    """:func:`resolve`, keeping the name as given and the hub revision of a snapshot folder."""
    path = resolve(spec, what, kind)
    revision = (
        path.name if path != Path(spec).expanduser() and path.parent.name == "snapshots" else None
    )
    return ModelRef(str(spec), path, revision)


def resolve(
    spec: str | os.PathLike[str], what: str, kind: Literal["model", "tokenizer"] = "model"
) -> Path:
    """The local folder of ``spec``: the path itself when it exists, else the hub cache's snapshot.

    ``what`` names the option in messages (``--teacher``). A missing path that cannot be a hub ID
    is returned unchanged, so the caller reports it in its own words. A hub ID that cannot be had
    (offline and not cached, unknown, unreachable) is one :class:`UserError` that names it and
    says what to do.
    """
    path = Path(spec).expanduser()
    if path.exists() or not is_hub_id(str(spec)):
        return path
    repo = str(spec)
    patterns = MODEL_PATTERNS if kind == "model" else TOKENIZER_PATTERNS
    folder = _snapshot(repo, what, patterns)
    if kind == "model" and not any(folder.glob("*.safetensors")):
        folder = _snapshot(repo, what, LEGACY_WEIGHTS)
    return folder


def _snapshot(repo: str, what: str, patterns: tuple[str, ...]) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"the hub cache {constants.HF_HUB_CACHE}"
    fetch = (
        f"download it where the hub is reachable (a login node) with `hf download {repo} "
        f"{DOWNLOAD_FILTER}` into "
        "the HF_HOME / HF_HUB_CACHE the jobs use"
    )
    try:
        folder = snapshot_download(
            repo, allow_patterns=list(patterns), ignore_patterns=list(IGNORE)
        )
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError):
        raise UserError(
            f"{what} {repo}: no such local path, and no repository {repo!r} on the Hugging Face hub "
            "(or it is private or gated: log in with `hf auth login`); pass a local folder or a hub ID"
        ) from None
    except LocalEntryNotFoundError as exc:
        if constants.HF_HUB_OFFLINE:
            raise UserError(
                f"{what} {repo}: no such local path, and the Hugging Face hub ID {repo} is not in "
                f"{where} (HF_HUB_OFFLINE is set: no downloads); {fetch}, or set HF_HUB_OFFLINE=0 "
                "where the hub is reachable"
            ) from None
        raise UserError(
            f"{what} {repo}: no such local path, and the Hugging Face hub ID {repo} is not in "
            f"{where} and could not be downloaded ({_first_line(exc)}); {fetch}, then run with "
            "HF_HUB_OFFLINE=1"
        ) from None
    except OSError as exc:  # network and HTTP errors of huggingface_hub are OSErrors
        raise UserError(
            f"{what} {repo}: no such local path, and downloading it from the Hugging Face hub "
            f"failed ({type(exc).__name__}: {_first_line(exc)}); {fetch}"
        ) from None
    return Path(folder)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
