"""The README's Slurm chain, run as a user would paste it, against a stand-in sbatch that answers
like a federated cluster's (``jobid;cluster``): every dependency names a bare job id."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _slurm_chain() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("Real-world use: BooksCorpus") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's Slurm chain block is gone"
    lines = block.group(1).splitlines()
    return "\n".join(line for line in lines if not line.startswith("python -m"))  # step 4: no jobs


def test_readme_chain_passes_bare_job_ids(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "sbatch.log"
    (fake / "sbatch").write_text(
        f'#!/bin/bash\necho "$*" >> {log}\nn=$(wc -l < {log})\necho "$((1000 + n));cluster7"\n'
    )
    (fake / "sbatch").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "DISTIL_VENV": str(Path(sys.executable).parent.parent),
        "SCRATCH": str(tmp_path),
        "USER": "me",
    }
    script = f"set -euo pipefail\ncd {REPO}\n{_slurm_chain()}"
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 4, calls  # prep array, prep finalize, cache, pretrain
    deps = [m.group(1) for c in calls for m in [re.search(r"--dependency=afterok:(\S+)", c)] if m]
    assert deps == ["1001", "1002", "1003"], calls


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_inside_the_readme_lands_on_a_heading() -> None:
    text = (REPO / "README.md").read_text()
    text_outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    headings = {
        _slug(line.lstrip("#"))
        for line in text_outside_code.splitlines()
        if re.match(r"#{1,6} ", line)
    }
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= headings, sorted(links - headings)
