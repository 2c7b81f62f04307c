"""A real huggingface_hub cache on disk, for tests that resolve hub IDs without a hub.

:func:`publish` lays a local folder out the way ``snapshot_download`` leaves a downloaded model::

    CACHE/models--ORG--NAME/blobs/<sha256>             the files' bytes
    CACHE/models--ORG--NAME/snapshots/<commit>/<file>  relative symlinks to the blobs
    CACHE/models--ORG--NAME/refs/main                  the commit hash (no newline)

With ``HF_HUB_CACHE=CACHE`` and ``HF_HUB_OFFLINE=1``, huggingface_hub (and so transformers and
our resolver) finds the repository in it and never touches the network.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def publish(folder: Path, cache: Path, repo_id: str) -> Path:
    """Put the files of ``folder`` into the hub cache ``cache`` as ``repo_id``; its snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex name is a commit to the cache
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def offline_env(cache: Path) -> dict[str, str]:
    """The environment of a subprocess that sees ``cache`` as its hub cache, offline."""
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def go_offline(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """This process: ``cache`` as the hub cache, offline (huggingface_hub reads its environment
    once, at import, so its constants are patched as well)."""
    from huggingface_hub import constants

    for name, value in offline_env(cache).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
