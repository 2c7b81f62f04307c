"""The one reader of the versioned JSON files we write: the data manifest, the prep plan, the
teacher cache's plan and manifest, and a checkpoint's COMMIT.json.

Each carries ``format`` (what the file is) and ``format_version``; :func:`load_versioned` refuses
anything else in one line that names the file and what to do. Files written before a format
recorded its name (prep plans and COMMIT.json of earlier releases) are read as version
``unversioned``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.errors import UserError


def stamp(body: dict[str, Any], format: str, version: int) -> dict[str, Any]:
    """``body`` with its format and version first."""
    rest = {k: v for k, v in body.items() if k not in ("format", "format_version")}
    return {"format": format, "format_version": version, **rest}


def load_versioned(
    path: Path, format: str, version: int, fix: str, unversioned: int | None = None
) -> dict[str, Any]:
    """The JSON object at ``path``, checked to be ``format`` at ``version``; ``fix`` says what to
    do when it is missing, unreadable or of another format or version."""
    if not path.is_file():
        raise UserError(f"{path}: missing; {fix}")
    try:
        body = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(body, dict):
        raise UserError(f"{path}: not a JSON object; {fix}")
    found, found_version = body.get("format"), body.get("format_version")
    if found is None and unversioned is not None:
        found, found_version = format, unversioned
    if found != format or found_version != version:
        raise UserError(
            f"{path}: format {found!r} v{found_version}, expected {format!r} v{version}; {fix}"
        )
    return body
