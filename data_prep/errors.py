"""The error type for problems a user can fix, and the CLI wrapper that prints them in one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input, a bad setting or a mismatch the user can fix.

    Command-line entry points print the message alone (no traceback) and exit with status 2.
    The message names the offending file or setting and says what to do.
    """


def error_line(message: str) -> None:
    """Write one line to stderr in a single write, so lines of several ranks never interleave."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def cli_main(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI ``main`` so that a ``UserError`` becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            prog = getattr(fn, "__module__", "distil")
            if prog == "__main__":  # run as ``python -m data_prep.X``: name the module
                spec = getattr(sys.modules["__main__"], "__spec__", None)
                prog = spec.name if spec is not None else "distil"
            error_line(f"{prog.removesuffix('.__main__')}: error: {exc}")
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper
