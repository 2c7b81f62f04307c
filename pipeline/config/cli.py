"""The command line of ``pipeline.train``: YAML recipes, ``--section.field`` overrides, ``--help``.

Order of precedence: the defaults of :mod:`pipeline.config.schema`, then the recipe (``--config
pipeline/recipes/X.yaml``, any subset of fields by section), then the command line, where every
field is ``--section.field VALUE`` (e.g. ``--loss.alpha_ce 5``) and the common ones have short
forms (``--max-steps``, ``--teacher``, ``--data``...); a boolean field given bare is true
(``--train.deterministic``, like every other command's switches). Values are checked against the field's type
(``Literal`` choices included) with an error that names the field. ``--help`` prints every field
with its type, default and docstring, section by section: the docstrings in config.py are the
documentation.

Kept by hand rather than with jsonargparse/tyro: those add a dependency and their own error and
help formats for about the ~150 lines below, and the short flags and one-line errors are ours.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from data_prep.errors import UserError
from pipeline.config.schema import Config, RunPaths, validate

SHORT_FLAGS = {
    "--teacher": "model.teacher",
    "--model": "model.model",
    "--data": "data.data",
    "--teacher-cache": "data.teacher_cache",
    "--output": "train.output",
    "--ds-config": "train.ds_config",
    "--max-steps": "train.max_steps",
    "--global-batch-size": "train.global_batch_size",
    "--micro-batch-size": "train.micro_batch_size",
    "--seed": "train.seed",
    "--log-every": "train.log_every",
    "--save-every": "train.save_every",
    "--eval-every": "train.eval_every",
    "--resume": "train.resume",
    "--lr": "optim.lr",
    "--student-layers": "model.student_layers",
}


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


def _sections() -> list[tuple[str, type]]:
    hints = typing.get_type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config)]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base(hint: Any) -> Any:
    """``X`` for ``X | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def type_name(hint: Any) -> str:
    base = _base(hint)
    if typing.get_origin(base) is Literal:
        name = "|".join(map(str, typing.get_args(base)))
    elif typing.get_origin(base) is list:
        name = f"list[{type_name(typing.get_args(base)[0])}]"
    else:
        name = getattr(base, "__name__", str(base))
    return name + (" or none" if base is not hint else "")


def _is_list(hint: Any) -> bool:
    return typing.get_origin(_base(hint)) is list


def _metavar(hint: Any) -> str:
    base = _base(hint)
    if typing.get_origin(base) is Literal:
        return "{" + ",".join(map(str, typing.get_args(base))) + "}"
    return type_name(base).upper()


def _parse_value(text: str, hint: Any, where: str) -> Any:
    """Parse a command-line string for a field of type ``hint`` (YAML syntax for lists)."""
    base = _base(hint)
    if text.lower() in ("none", "null") and base is not hint:
        return None
    try:
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base in (int, float, str):
            return base(text)
        if typing.get_origin(base) is Literal:
            return _coerce(text, hint, where)
        if typing.get_origin(base) is list:
            value = yaml.safe_load(text)
            if not isinstance(value, list):
                value = [v.strip() for v in text.split(",") if v.strip()]
            return _coerce(value, base, where)
    except (ValueError, TypeError, yaml.YAMLError):
        raise UserError(f"{where}: cannot read {text!r} as {type_name(base)}") from None
    raise TypeError(f"unsupported config type {hint}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and widen int -> float) a value from YAML or the command line against ``hint``."""
    base = _base(hint)
    if typing.get_origin(base) is Literal:
        if value not in typing.get_args(base):
            choices = ", ".join(map(str, typing.get_args(base)))
            raise UserError(f"{where}: must be one of {choices}, not {value!r}")
        return value
    if isinstance(value, str) and base is not str:
        return _parse_value(value, hint, where)
    if value is None:
        if base is not hint:
            return None
        raise UserError(f"{where}: may not be null")
    if typing.get_origin(base) is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(base)
        try:
            return [item(v) for v in value]
        except (ValueError, TypeError):
            raise UserError(
                f"{where}: expected a list of {type_name(item)}, got {value!r}"
            ) from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise UserError(f"{where}: expected {type_name(base)}, got {value!r}")
    return value


def apply_overrides(cfg: Config, values: dict[str, Any], source: str) -> None:
    """Set ``section.field`` entries (or nested dicts) on ``cfg``; unknown names are errors."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    sections = dict(_sections())
    for dotted, value in flat.items():
        section_name, _, name = dotted.partition(".")
        if section_name not in sections:
            raise UserError(
                f"{source}: unknown config section '{section_name}' (sections: {', '.join(sections)})"
            )
        known = dict(_fields(sections[section_name]))
        if name not in known:
            raise UserError(
                f"{source}: unknown field '{dotted}' (fields of {section_name}: {', '.join(known)})"
            )
        section = getattr(cfg, section_name)
        setattr(section, name, _coerce(value, known[name], f"{source}: {dotted}"))


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def recipe_path(spec: str | Path) -> Path:
    """A recipe file, or the name of a shipped one (``distilbert`` -> pipeline/recipes/distilbert.yaml)."""
    p = Path(spec)
    if p.is_file():
        return p
    shipped = RECIPES / f"{spec}.yaml"
    if "/" not in str(spec) and shipped.is_file():
        return shipped
    names = ", ".join(sorted(r.stem for r in RECIPES.glob("*.yaml")))
    raise UserError(f"{p}: recipe not found; give a YAML file or a shipped recipe's name ({names})")


def load_recipe(path: str | Path) -> dict[str, Any]:
    p = recipe_path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe is a mapping of sections to fields")
    return data


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        usage="%(prog)s [--config RECIPE] [--teacher T | --model M] --data D --output R "
        "[--section.field VALUE ...]",
        description="Distil a student from a teacher (or train a masked LM) on DeepSpeed ZeRO-2. "
        "Defaults < --config RECIPE.yaml < --section.field VALUE.",
    )
    p.add_argument(
        "--config",
        metavar="RECIPE",
        help="a YAML recipe, or a shipped recipe's name (distilbert, distilbert_mse, "
        "tinybert_general, minilmv2, minitron_encoder); default: the DistilBERT paper recipe",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (defaults < recipe < flags) as a YAML recipe and exit",
    )
    cfg = Config()
    sections = dict(_sections())
    short = p.add_argument_group("short forms")
    for flag, dotted in SHORT_FLAGS.items():
        section, _, name = dotted.partition(".")
        doc = field_docs(sections[section]).get(name, "")
        hint = dict(_fields(sections[section]))[name]
        short.add_argument(
            flag,
            dest=dotted,
            default=None,
            nargs="+" if _is_list(hint) else None,
            metavar="VALUE",
            help=f"--{dotted}: {doc}",
        )
    for section_name, cls in _sections():
        group = p.add_argument_group(f"{section_name}", (cls.__doc__ or "").strip())
        docs = field_docs(cls)
        section = getattr(cfg, section_name)
        for name, hint in _fields(cls):
            default = getattr(section, name)
            switch = _base(hint) is bool  # a bare --train.x means true, as elsewhere
            group.add_argument(
                f"--{section_name}.{name}",
                dest=f"{section_name}.{name}",
                default=None,
                nargs="+" if _is_list(hint) else ("?" if switch else None),
                const="true" if switch else None,
                metavar=_metavar(hint),
                help=f"{docs.get(name, '')} (default: {default})".replace("%", "%%"),
            )
    return p


def parse_config(argv: list[str] | None = None) -> tuple[Config, RunPaths]:
    """Defaults, then the recipe, then command-line overrides; checked."""
    args = build_arg_parser().parse_args(argv)
    cfg = Config()
    if args.config:
        apply_overrides(cfg, load_recipe(args.config), args.config)
    overrides = {
        # a list field given one value on the command line keeps the YAML/comma syntax: [0, 3]
        k: v[0] if isinstance(v, list) and len(v) == 1 else v
        for k, v in vars(args).items()
        if "." in k and v is not None
    }
    apply_overrides(cfg, overrides, "command line")
    if args.print_config:  # like --help: print and leave; the output works as --config
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="", flush=True)
        raise SystemExit(0)
    return cfg, validate(cfg)
