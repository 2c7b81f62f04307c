"""An exported folder pushed to the Hugging Face hub, through huggingface_hub's upload API.

:func:`check_push` refuses, before anything is exported, what cannot work (a repository ID the
hub would reject, ``HF_HUB_OFFLINE``, no token). :func:`plan_upload` says exactly what will be
uploaded (:class:`HubUpload`: the repository and the folder's files, named inside it; the
``.distil-output.json`` marker stays local) and :func:`push` does it with an ``HfApi``:
``create_repo(exist_ok=True)`` (a new repository is private with ``private``; an existing one
keeps its visibility), ``create_branch`` for a ``revision`` other than main, then one
``upload_folder`` commit of the planned files. What the hub or the network refuses (no or a bad
token, no write access, no connection) is one :class:`UserError` naming the repository and saying
where the complete export still is and how to push it later.
"""

from __future__ import annotations

import glob
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.atomic import OUTPUT_MARKER
from data_prep.errors import UserError
from data_prep.hub import is_hub_id

LOGIN = "run `hf auth login` (a token with write access) or set HF_TOKEN"


@dataclass(frozen=True)
class HubUpload:
    """One push of an exported folder: ``files`` (relative POSIX paths inside ``folder``) are
    exactly what is uploaded to ``repo_id``, at ``revision`` (None: the main branch)."""

    repo_id: str
    folder: Path
    files: tuple[str, ...]
    commit_message: str
    private: bool = False
    revision: str | None = None

    def later(self) -> str:
        """The command that pushes the folder by hand."""
        branch = f" --revision {self.revision}" if self.revision else ""
        folder = shlex.quote(str(self.folder))
        return f"`hf upload {self.repo_id} {folder} .{branch} --exclude {OUTPUT_MARKER}`"


def check_push(repo_id: str) -> None:
    """Refuse a push that cannot work, before the export: a malformed repository ID, the hub
    switched off (HF_HUB_OFFLINE) or no token."""
    from huggingface_hub import constants, get_token

    if not is_hub_id(repo_id):
        raise UserError(
            f"--push-to-hub {repo_id}: not a hub repository ID; give NAME or NAMESPACE/NAME "
            "(letters, digits, '-', '_', '.')"
        )
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so the hub cannot be reached; "
            "unset it (export where the hub is reachable, e.g. a login node)"
        )
    if get_token() is None:
        raise UserError(f"--push-to-hub {repo_id}: not logged in to the hub; {LOGIN}")


def plan_upload(
    folder: Path,
    repo_id: str,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
) -> HubUpload:
    """The upload of the exported ``folder`` to ``repo_id``: every file in it but the marker."""
    files = tuple(
        sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.name != OUTPUT_MARKER
        )
    )
    if commit_message is None:
        commit_message = "Upload a model exported by distil"
        record = folder / "distil_export.json"
        if record.is_file():
            r = json.loads(record.read_text())
            commit_message += f" (run {Path(r['run']).name}, step {r['step']})"
    return HubUpload(repo_id, folder, files, commit_message, private, revision)


def push(upload: HubUpload, api: Any) -> str:
    """Upload with ``api`` (a ``huggingface_hub.HfApi``); the URL of the commit."""
    try:
        api.create_repo(upload.repo_id, private=upload.private, exist_ok=True)
        if upload.revision:
            api.create_branch(upload.repo_id, branch=upload.revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(upload.folder),
            repo_id=upload.repo_id,
            revision=upload.revision,
            commit_message=upload.commit_message,
            allow_patterns=[glob.escape(f) for f in upload.files],
        )
    except Exception as exc:
        why = _why(exc, str(getattr(api, "endpoint", "the hub")))
        if why is None:
            raise
        raise UserError(
            f"--push-to-hub {upload.repo_id}: {why}. The export is complete and still at "
            f"{upload.folder}; push it later with {upload.later()}"
        ) from None
    return str(getattr(info, "commit_url", None) or f"{api.endpoint}/{upload.repo_id}")


def _why(exc: Exception, endpoint: str) -> str | None:
    """What went wrong, in a few words; None for an error that is not the hub's or the
    network's (a bug, raised as it is)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, LocalTokenNotFoundError):
        return f"not logged in to the hub; {LOGIN}"
    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the hub cannot be reached; unset it"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code
        if status == 401:
            return f"the hub did not accept the token (401); {LOGIN}"
        if status == 403:
            return (
                "the token may not write there (403); use a token with write access to that "
                f"namespace ({LOGIN}) or push to a namespace you own"
            )
        return f"the hub refused the upload ({status}: {exc.server_message or first})"
    # the HTTP library's own errors (httpx, requests, ... as the installed huggingface_hub uses)
    library = type(exc).__module__.split(".")[0]
    if isinstance(exc, (OSError, TimeoutError)) or library in {"httpx", "httpx2", "requests"}:
        return f"cannot reach the hub at {endpoint} ({type(exc).__name__}: {first})"
    return None
