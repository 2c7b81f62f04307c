"""From ``--input`` specs to a list of input files, each with its layout (kind) and compression.

A spec is a file, a glob, a folder or ``hf:NAME[:CONFIG]``. A folder is either a ``datasets``
``save_to_disk`` folder or a plain folder of corpus files, taken recursively in sorted order
(hidden files left out). The kind comes from the suffix (``.txt``, ``.jsonl``/``.json``/
``.ndjson``, ``.parquet``, ``.xml`` for a MediaWiki dump, each optionally ``.gz``/``.zst``/
``.bz2``); a file without a known suffix inside a folder or glob, or without any suffix (as
WikiExtractor names its ``wiki_00`` files), is recognised by its first bytes: ``<doc``
(WikiExtractor), ``{`` (JSON lines), ``<mediawiki``, other UTF-8 text, or binary (NUL bytes or
not UTF-8), which the job counts as bad input rather than reading.

``hf:LOCAL_DIR[:CONFIG]`` finds the data files the way ``datasets.load_dataset`` would (the
README's ``configs``, or CONFIG as a sub-folder, the split from the file names) and reads
parquet / JSON lines / text files directly, with no Arrow cache; anything else, and hub names,
goes through ``datasets.load_dataset``.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Any

from data_prep.errors import UserError
from data_prep.sources.compressed import COMPRESSIONS, dump_index_path, sniff

SUFFIX_KINDS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".xml": "mediawiki",
}
TEXT_KINDS = ("txt", "jsonl", "wikiextractor", "mediawiki")
_INDEX_NAME = re.compile(r"-multistream-index\.txt(\.bz2)?$")


@dataclass(frozen=True)
class Input:
    """One input: a file (or an ``hf:`` spec) and how to read it."""

    path: str
    kind: str  # txt | jsonl | wikiextractor | mediawiki | parquet | arrow | hf | binary
    compression: str = ""
    docs: str = ""  # the document rule when not --txt-docs (HF text files: line)
    size: int = 0
    evidence: int = 0  # binary: offset of the first NUL or undecodable byte


def split_suffix(path: str) -> tuple[str, str]:
    """(lower-case content suffix, compression) of a file name."""
    lower = os.path.basename(path).lower()
    compression = ""
    for suffix, name in COMPRESSIONS.items():
        if lower.endswith(suffix):
            compression, lower = name, lower[: -len(suffix)]
            break
    return os.path.splitext(lower)[1], compression


def sniff_kind(head: bytes, known: str = "") -> tuple[str, int]:
    """(kind, evidence offset) from the first bytes of a file; ``known``: the suffix's kind."""
    nul = head.find(b"\x00")
    if nul >= 0:
        return "binary", nul
    start = head.lstrip()[:16]
    if start.startswith((b"<doc ", b"<doc>")) and known in ("", "txt"):
        return "wikiextractor", 0  # WikiExtractor's output, even renamed to .txt
    if known:
        return known, 0
    if start.startswith(b"<mediawiki"):
        return "mediawiki", 0
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut by the sniff's length
            return "binary", exc.start
    return ("jsonl" if start.startswith(b"{") else "txt"), 0


def _file_input(path: str, explicit: bool) -> Input:
    ext, compression = split_suffix(path)
    known = SUFFIX_KINDS.get(ext, "")
    if not known and ext and explicit:
        raise UserError(
            f"{path}: unknown input type {ext}; use .txt, .jsonl, .json, .parquet or .xml "
            "(optionally .gz, .zst or .bz2), a folder, a datasets save_to_disk folder, or "
            "hf:NAME[:CONFIG]"
        )
    size = os.path.getsize(path)
    if known in ("parquet", "mediawiki"):
        return Input(path, known, compression, size=size)
    kind, evidence = sniff_kind(sniff(path, compression), known)
    return Input(path, kind, compression, size=size, evidence=evidence)


def _folder_files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return out


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, n)) for n in ("state.json", "dataset_dict.json"))


def _spec_files(spec: str) -> list[tuple[str, bool]]:
    """(path, named explicitly) of the files and save_to_disk folders a spec stands for."""
    if any(ch in spec for ch in "*?["):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise UserError(f"{spec}: no file matches this pattern")
    elif not os.path.exists(spec):
        raise UserError(f"{spec}: no such file or folder")
    else:
        matches = [spec]
    out: list[tuple[str, bool]] = []
    for path in matches:
        if os.path.isdir(path) and not _is_saved_dataset(path):
            files = _folder_files(path)
            if not files:
                raise UserError(f"{path}: an empty folder; pass a folder with corpus files in it")
            out += [(f, False) for f in files]
        else:
            out.append((path, path == spec))
    return out


def expand_inputs(
    specs: list[str], hf_split: str = "train", hf_streaming: bool = False
) -> list[Input]:
    """Resolve specs into inputs, in the order given (globs and folders sorted)."""
    out: list[Input] = []
    for spec in specs:
        if spec.startswith("hf:"):
            out += hf_inputs(spec, hf_split, hf_streaming)
            continue
        for path, explicit in _spec_files(spec):
            if os.path.isdir(path):
                out.append(Input(path, "arrow"))
                continue
            if not os.access(path, os.R_OK):
                raise UserError(f"{path}: not readable")
            out.append(_file_input(path, explicit))
    if not out:
        raise UserError("no input given; pass --input FILE_OR_GLOB ...")
    dumps = {i.path for i in out if i.kind == "mediawiki"}
    return [i for i in out if not (_INDEX_NAME.search(i.path) and _index_of_a_dump(i.path, dumps))]


def input_signature(specs: list[str]) -> list[list[Any]]:
    """Every file the specs name (folders walked), with its size, and the dump indexes beside
    them: a cheap check that a plan still fits the inputs."""
    out: list[list[Any]] = []
    for spec in specs:
        if spec.startswith("hf:"):
            name = spec[3:].partition(":")[0]
            paths = _folder_files(name) if os.path.isdir(name) else []
        else:
            paths = []
            for path, _ in _spec_files(spec):
                paths += _folder_files(path) if os.path.isdir(path) else [path]
        paths += [str(i) for p in paths if (i := dump_index_path(p)) is not None]
        out.append([spec, [[p, os.path.getsize(p)] for p in paths]])
    return out


def _index_of_a_dump(path: str, dumps: set[str]) -> bool:
    """A dump index among the inputs whose dump is also there (a folder holding both)."""
    stem = _INDEX_NAME.sub("", path)
    return any(d.startswith(stem + "-multistream.xml") for d in dumps)


# --- Hugging Face datasets ---------------------------------------------------------------------
HF_BUILDER_KINDS = {"parquet": "parquet", "json": "jsonl", "text": "txt"}


def _hf_builder(name: str, config: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset_builder(name, config or None)
    except ValueError as exc:
        if config and os.path.isdir(os.path.join(name, config)) and "not found" in str(exc):
            return datasets.load_dataset_builder(name, data_dir=config)
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"hf:{name}: {first}") from None


def hf_inputs(spec: str, split: str, streaming: bool) -> list[Input]:
    """The data files of a local ``hf:`` folder as inputs, or the spec itself (loaded by
    ``datasets.load_dataset`` when it runs)."""
    name, _, config = spec[3:].partition(":")
    if streaming or not os.path.isdir(name):
        return [Input(spec, "hf")]
    builder = _hf_builder(name, config)
    kind = HF_BUILDER_KINDS.get(builder.name, "")
    files = {str(k): list(v) for k, v in (builder.config.data_files or {}).items()}
    if not kind or not files:
        return [Input(spec, "hf")]
    if split not in files:
        raise UserError(f"{spec}: no split '{split}' (has {', '.join(files)}); pass --hf-split")
    out = []
    for path in files[split]:
        _ext, compression = split_suffix(path)
        size = os.path.getsize(path)
        out.append(Input(path, kind, compression, "line" if kind == "txt" else "", size))
    return out
