"""The config and its command line: precedence, types, Literal choices, errors in one line, and
--help built from the field docstrings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from data_prep.errors import UserError
from pipeline.config.cli import (
    SHORT_FLAGS,
    apply_overrides,
    build_arg_parser,
    field_docs,
    parse_config,
)
from pipeline.config.schema import Config, MaskingConfig, check_masking, validate

REQUIRED = ["--teacher", "T", "--data", "D", "--output", "R"]


def test_defaults_then_recipe_then_command_line(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss:\n  alpha_ce: 3\n  temperature: 4.0\ntrain:\n  max_steps: 7\n")
    cfg, paths = parse_config(
        ["--config", str(recipe), *REQUIRED, "--loss.temperature", "1.5", "--max-steps", "9"]
    )
    assert cfg.loss.alpha_ce == 3.0 and isinstance(cfg.loss.alpha_ce, float)  # int widened
    assert cfg.loss.temperature == 1.5 and cfg.train.max_steps == 9  # the command line wins
    assert cfg.loss.alpha_mlm == 2.0  # untouched default: the DistilBERT recipe
    assert (cfg.model.teacher, paths.output, cfg.model.model) == ("T", "R", None)
    assert [(s.path, s.weight) for s in paths.sources] == [("D", 1.0)]


def test_values_are_parsed_by_their_field_type() -> None:
    cfg, _ = parse_config([
        *REQUIRED, "--model.layer_map", "[0, 3]", "--optim.betas", "0.8,0.9",
        "--model.dropout", "none", "--train.sample_log", "yes", "--loss.ce_positions", "all",
    ])  # fmt: skip
    assert cfg.model.layer_map == [0, 3] and cfg.optim.betas == [0.8, 0.9]
    assert cfg.model.dropout is None and cfg.train.sample_log is True
    assert cfg.loss.ce_positions == "all"


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--loss.alpha_ce", "lots"], ["loss.alpha_ce", "'lots'", "float"]),
        (["--loss.ce_positions", "some"], ["loss.ce_positions", "masked, all", "'some'"]),
        (["--model.init", "zeros"], ["model.init", "teacher, select, prune, random"]),
        (["--train.sample_log", "maybe"], ["train.sample_log", "bool"]),
        (["--model.teacher_dtype", "fp8"], ["model.teacher_dtype", "auto, fp16, bf16, fp32"]),
        (["--lr", "[1]"], ["optim.lr"]),
    ],
)
def test_bad_values_name_the_field(argv: list[str], needles: list[str]) -> None:
    with pytest.raises(UserError) as exc:
        parse_config([*REQUIRED, *argv])
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_recipe_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    for text, needle in (
        ("loss:\n  alpha_zz: 1\n", "unknown field 'loss.alpha_zz'"),
        ("losses:\n  alpha_ce: 1\n", "unknown config section 'losses'"),
        ("loss: [1, 2\n", "not valid YAML"),
        ("- 1\n", "a recipe is a mapping"),
        ("model:\n  init: null\n", "model.init"),
    ):
        bad.write_text(text)
        with pytest.raises(UserError, match=needle):
            parse_config(["--config", str(bad), *REQUIRED])
    with pytest.raises(UserError, match="recipe not found"):
        parse_config(["--config", str(tmp_path / "missing.yaml"), *REQUIRED])


def test_shipped_recipes_parse() -> None:
    recipes = sorted((Path(__file__).parent.parent / "pipeline" / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        parse_config(["--config", str(recipe), *REQUIRED])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--data", "D", "--output", "R"], "pass --teacher TEACHER_DIR"),
        (["--teacher", "T", "--model", "M", "--data", "D", "--output", "R"], "exclude each other"),
        (["--teacher", "T", "--output", "R"], "pass --data DATA_DIR"),
        (["--teacher", "T", "--data", "D"], "pass --output RUN_DIR"),
        ([*REQUIRED, "--loss.temperature", "0"], "temperature must be positive"),
        ([*REQUIRED, "--loss.alpha_mlm", "-1"], "loss weights must be >= 0"),
        (
            ["--model", "M", "--data", "D", "--output", "R", "--loss.alpha_mlm", "0"],
            "needs loss.alpha_mlm > 0",
        ),
        (
            [*REQUIRED, "--loss.alpha_ce", "0", "--loss.alpha_mlm", "0", "--loss.alpha_cos", "0"],
            "every loss weight is 0",
        ),
        ([*REQUIRED, "--masking.mask_fraction", "0.95"], r"mask_fraction \+ random_fraction"),
        ([*REQUIRED, "--masking.random_fraction", "-0.1"], "masking"),
        ([*REQUIRED, "--global-batch-size", "0"], "global_batch_size"),
        ([*REQUIRED, "--train.epochs", "0"], "max_steps > 0 or train.epochs > 0"),
        ([*REQUIRED, "--resume", "/no/such/ckpt"], "no such checkpoint"),
        ([*REQUIRED, "--model.init", "prune", "--model.prune_samples", "0"], "prune_samples"),
        ([*REQUIRED, "--model.layer_map_rule", "importance"], "set model.init prune"),
    ],
)
def test_validate_refuses_contradictions(argv: list[str], needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        parse_config(argv)


def test_masking_rule_is_one_function_for_training_and_the_cache() -> None:
    check_masking(MaskingConfig())
    for bad in (
        MaskingConfig(mlm_probability=0.0),
        MaskingConfig(mask_fraction=0.9, random_fraction=0.2),
        MaskingConfig(random_fraction=-0.1),
        MaskingConfig(smoothing=-1.0),
    ):
        with pytest.raises(UserError, match="masking"):
            check_masking(bad)


def test_overrides_take_nested_sections_and_refuse_unknown_names() -> None:
    cfg = Config()
    apply_overrides(cfg, {"loss": {"alpha_ce": 1}, "train.seed": 3}, "test")
    assert cfg.loss.alpha_ce == 1.0 and cfg.train.seed == 3
    with pytest.raises(UserError, match=r"test: unknown field .train\.nope."):
        apply_overrides(cfg, {"train.nope": 1}, "test")


def test_help_documents_every_field_with_type_default_and_docstring(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_arg_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    cfg = Config()
    for section in dataclasses.fields(cfg):
        cls = type(getattr(cfg, section.name))
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert f"--{section.name}.{f.name}" in text, f.name
            assert docs.get(f.name), f"{section.name}.{f.name} has no docstring"
            assert docs[f.name][:40] in text, f.name
    assert "{masked,all}" in text and "(default: 0.15)" in text
    for flag in SHORT_FLAGS:
        assert flag in text


def test_validate_returns_the_required_paths() -> None:
    cfg = Config()
    cfg.model.model, cfg.data.data, cfg.train.output = "m.json", ["data"], "run"
    paths = validate(cfg)
    assert (cfg.model.model, paths.output, cfg.model.teacher) == ("m.json", "run", None)
    assert [s.path for s in paths.sources] == ["data"]


def test_data_takes_one_folder_or_a_weighted_blend(tmp_path: Path) -> None:
    _, paths = parse_config([*REQUIRED[:2], "--data", "0.3:/b", "0.7:/w", *REQUIRED[4:]])
    assert [(s.path, s.weight) for s in paths.sources] == [("/b", 0.3), ("/w", 0.7)]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  data: ['1:/b', '3:/w']\n")
    _, paths = parse_config(["--config", str(recipe), "--teacher", "T", "--output", "R"])
    assert [s.weight for s in paths.sources] == [1.0, 3.0]
    with pytest.raises(UserError, match="needs a weight for each"):
        parse_config(["--teacher", "T", "--data", "/b", "0.7:/w", "--output", "R"])
    with pytest.raises(UserError, match="weight must be positive"):
        parse_config(["--teacher", "T", "--data", "0:/b", "1:/w", "--output", "R"])
    cfg, _ = parse_config([*REQUIRED, "--model.layer_map", "0", "3"])  # lists take several values
    assert cfg.model.layer_map == [0, 3]


def test_print_config_round_trips_through_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", "minilmv2", *REQUIRED, "--lr", "1e-3", "--model.layer_map", "[1, 3]"]
    cfg, _ = parse_config(argv)
    with pytest.raises(SystemExit) as leave:
        parse_config([*argv, "--print-config"])
    assert leave.value.code == 0
    printed = capsys.readouterr().out
    assert "lr: 0.001" in printed and "alpha_relation: 1.0" in printed
    recipe = tmp_path / "printed.yaml"
    recipe.write_text(printed)
    again, _ = parse_config(["--config", str(recipe)])
    assert again == cfg


def test_recipes_by_name_and_an_unknown_one_lists_them() -> None:
    shipped = Path(__file__).parent.parent / "pipeline" / "recipes" / "tinybert_general.yaml"
    by_name, _ = parse_config(["--config", "tinybert_general", *REQUIRED])
    by_path, _ = parse_config(["--config", str(shipped), *REQUIRED])
    assert by_name == by_path and by_name.loss.alpha_attn > 0
    with pytest.raises(UserError, match="minitron_encoder"):
        parse_config(["--config", "tinybert", *REQUIRED])


def test_console_scripts_are_installed_beside_the_module_forms() -> None:
    import subprocess
    import sys

    import tomllib

    root = Path(__file__).parent.parent
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"distil-prep", "distil-train", "distil-cache", "distil-export", "distil-eval"} <= set(
        scripts
    )
    bin_dir = Path(sys.executable).parent
    for name in scripts:
        assert (bin_dir / name).is_file(), f"{name}: not installed (pip install -e .)"
    for name, needle in (("distil-train", "--print-config"), ("distil-prep", "--tokenizer")):
        out = subprocess.run([str(bin_dir / name), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and needle in out.stdout, out.stderr[-2000:]


def test_a_bare_boolean_flag_is_true_and_takes_a_value_too() -> None:
    base = ["--teacher", "t", "--data", "d", "--output", "o"]
    assert parse_config([*base, "--train.deterministic"])[0].train.deterministic is True
    cfg, _ = parse_config([*base, "--train.deterministic", "false", "--model.compile", "true"])
    assert cfg.train.deterministic is False and cfg.model.compile is True
    cfg, _ = parse_config([*base, "--train.sample_log", "--max-steps", "3"])
    assert cfg.train.sample_log is True and cfg.train.max_steps == 3


def test_setting_changes_name_the_shaping_settings_only() -> None:
    import copy

    from pipeline.config.changes import setting_changes

    before = Config().to_dict()
    after = copy.deepcopy(before)
    after["optim"]["lr"] = 1.0
    after["train"]["log_every"] = 3  # free to change between requeues
    after["train"]["max_steps"] = 10  # the run's length: recorded, never refused
    after["resolved"] = {"world_size": 8}
    changes = setting_changes(before, after)
    assert [(c.name, c.before, c.after, c.needs_consent) for c in changes] == [
        ("optim.lr", 5e-4, 1.0, True),
        ("train.max_steps", 0, 10, False),
    ]
    del after["loss"]["alpha_ce"]  # a field an earlier release did not have is not a change
    assert [c.name for c in setting_changes(before, after)] == ["optim.lr", "train.max_steps"]
