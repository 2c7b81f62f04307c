"""One flag vocabulary for every command: the help formatter and the deprecated spellings.

The vocabulary (README, "Commands and flags"): ``--output`` names what a command writes (a folder,
or a file where the command writes one); ``--json FILE`` is always a machine-readable copy of the
results; ``--batch-size`` is a batch size in sequences; a boolean is a bare switch (``--quiet``,
``--overwrite``; ``pipeline.train``'s config switches also take ``true``/``false`` since recipes
set them); options read from the training config are spelled as its fields
(``--masking.mlm_probability``). Old spellings keep working for one release: :func:`renamed`
rewrites them and says so in one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (when it has one and does not say it already)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if text == argparse.SUPPRESS or not action.option_strings:
            return text
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})".replace("%", "%%").replace("%%(", "%(").strip()


def renamed(argv: Sequence[str], old_to_new: Mapping[str, str], prog: str) -> list[str]:
    """``argv`` with deprecated option names replaced by their new ones (``--out x`` and
    ``--out=x`` alike), one note on stderr per old name used."""
    out: list[str] = []
    said: set[str] = set()
    for arg in argv:
        name, eq, value = arg.partition("=")
        new = old_to_new.get(name) if name.startswith("--") else None
        if new is None:
            out.append(arg)
            continue
        if name not in said:
            said.add(name)
            sys.stderr.write(
                f"{prog}: note: {name} is deprecated and goes in the next release; use {new}\n"
            )
        out.append(f"{new}{eq}{value}" if eq else new)
    return out


def options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """The options of ``parser`` whose help text is missing (a check for the tests)."""
    return [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and not action.help and action.help != argparse.SUPPRESS
    ]
