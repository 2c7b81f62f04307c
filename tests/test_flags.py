"""One flag vocabulary across commands (data_prep.flags): every option of every command has help
text and shows its default; the old spellings still parse, to the same values, with a note.

Parsers only: nothing here loads a model or reads data.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from data_prep import build_shards, train_tokenizer, verify
from data_prep.errors import UserError
from data_prep.flags import HelpFormatter, options_without_help, renamed
from pipeline import evaluate
from pipeline.cache_teacher import job as cache_job
from pipeline.config.cli import field_docs
from pipeline.config.schema import Config, MaskingConfig
from pipeline.distributed import slurm_port
from pipeline.tools import bench_cache, speed

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "build_shards": build_shards.build_parser,
    "verify": verify.build_parser,
    "train_tokenizer": train_tokenizer.build_parser,
    "cache_teacher": cache_job.build_parser,
    "evaluate": evaluate.build_parser,
    "speed": speed.build_parser,
    "bench_cache": bench_cache.build_parser,
}


def _help_texts(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help as ``--help`` prints it (before line wrapping)."""
    formatter = parser._get_formatter()
    return {
        action.option_strings[0]: formatter._expand_help(action)
        for action in parser._actions
        if action.option_strings and action.help != argparse.SUPPRESS
    }


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    parser = PARSERS[name]()
    assert parser.formatter_class is HelpFormatter
    assert options_without_help(parser) == []
    helps = _help_texts(parser)
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.default not in (None, False, argparse.SUPPRESS) and not action.required:
            assert "default" in helps[action.option_strings[0]], (name, action.option_strings)
    text = parser.format_help()
    assert all(option in text for option in helps)


def test_slurm_port_uses_the_help_formatter(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        slurm_port.main(["--help"])
    assert stop.value.code == 0 and "SLURM_JOB_ID" in capsys.readouterr().out


def test_cache_teacher_config_flags_come_from_the_schema() -> None:
    """--section.field: the schema's docstring, type and default, not a copy of them."""
    helps = _help_texts(cache_job.build_parser())
    defaults = Config()
    for dotted in cache_job.RUN_FIELDS:
        section, _, field = dotted.partition(".")
        doc = field_docs(type(getattr(defaults, section)))[field]
        help_text = helps[f"--{dotted}"]
        assert doc in help_text and str(getattr(getattr(defaults, section), field)) in help_text
    assert set(cache_job.RENAMED.values()) - {"--output"} == {
        f"--{d}" for d in cache_job.RUN_FIELDS
    }


def test_old_spellings_parse_to_the_new_values(capsys: pytest.CaptureFixture[str]) -> None:
    values = {
        "--out": "CACHE",
        "--seed": "7",
        "--temperature": "3",
        "--mlm-probability": "0.2",
        "--mask-fraction": "0.7",
        "--random-fraction": "0.2",
        "--smoothing": "0",
        "--dtype": "bf16",
        "--attn": "eager",
    }
    assert set(values) == set(cache_job.RENAMED)
    parse = cache_job.build_parser().parse_args
    new = parse([arg for old, v in values.items() for arg in (cache_job.RENAMED[old], v)])
    assert capsys.readouterr().err == ""
    old = parse([arg for item in values.items() for arg in item])
    err = capsys.readouterr().err
    assert vars(old) == vars(new)
    assert (
        "python -m pipeline.cache_teacher: note: --out is deprecated and goes in the next "
        "release; use --output" in err
    )
    assert "--mlm-probability is deprecated" in err and "use --masking.mlm_probability" in err
    assert len(err.splitlines()) == len(values)  # one line per old name
    cfg = cache_job.run_config(old)
    assert (cfg.train.seed, cfg.loss.temperature, cfg.masking.mlm_probability) == (7, 3.0, 0.2)
    assert (cfg.masking.smoothing, cfg.model.teacher_dtype) == (0.0, "bf16")
    assert cfg.model.attn_implementation == "eager" and old.output == "CACHE"

    # the tools' --batch is --batch-size
    for tool in (speed, bench_cache):
        argv = ["--model", "M"] if tool is speed else []
        args = tool.build_parser().parse_args(renamed([*argv, "--batch", "5"], tool.RENAMED, "x"))
        assert args.batch_size == 5 and "--batch is deprecated" in capsys.readouterr().err


def test_renamed_handles_equals_and_leaves_the_rest() -> None:
    argv = ["--out=x", "--top-k", "8", "--output", "y", "--outer=1", "--out", "z", "out"]
    assert renamed(argv, {"--out": "--output"}, "prog") == [
        "--output=x", "--top-k", "8", "--output", "y", "--outer=1", "--output", "z", "out",
    ]  # fmt: skip
    args = cache_job.build_parser().parse_args(["--out=x=y", "--mlm-probability=0.25"])
    assert args.output == "x=y" and getattr(args, "masking.mlm_probability") == 0.25


def test_cache_teacher_defaults_recipe_flags(tmp_path: Path) -> None:
    """The training run's settings: the schema's defaults < --config RECIPE < the flags."""
    recipe = tmp_path / "run.yaml"
    recipe.write_text(
        "train: {seed: 7}\nloss: {temperature: 3.0}\n"
        "masking: {mlm_probability: 0.2, smoothing: 0.0}\nmodel: {teacher_dtype: bf16}\n"
    )
    parse = cache_job.build_parser().parse_args
    base = ["--output", "C"]
    cfg = cache_job.run_config(parse(base))
    assert cfg.train.seed == Config().train.seed and cfg.masking == MaskingConfig()
    assert cfg.model.teacher_dtype == "auto" and cfg.model.attn_implementation == "sdpa"
    cfg = cache_job.run_config(
        parse([*base, "--config", str(recipe), "--masking.mlm_probability", "0.3"])
    )
    assert (cfg.train.seed, cfg.loss.temperature, cfg.model.teacher_dtype) == (7, 3.0, "bf16")
    assert (cfg.masking.mlm_probability, cfg.masking.smoothing) == (0.3, 0.0)
    assert cfg.masking.mask_fraction == MaskingConfig().mask_fraction
    with pytest.raises(UserError, match=r"loss\.temperature must be positive"):
        cache_job.run_config(parse([*base, "--loss.temperature", "0"]))
    with pytest.raises(UserError, match="masking"):
        cache_job.run_config(parse([*base, "--masking.mlm_probability", "1.5"]))


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--masking.mlm_probability", "x", "invalid float value: 'x'"),
        ("--train.seed", "1.5", "invalid int value: '1.5'"),
        ("--model.teacher_dtype", "fp8", "invalid choice: 'fp8'"),
        ("--attn", "fast", "--model.attn_implementation: invalid choice: 'fast'"),
    ],
)
def test_cache_teacher_bad_values_are_usage_errors(
    flag: str, value: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        cache_job.build_parser().parse_args(["--output", "C", flag, value])
    assert stop.value.code == 2 and needle in capsys.readouterr().err
