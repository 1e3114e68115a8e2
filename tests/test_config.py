from pathlib import Path

import pytest

from circuitlab.config import Settings, load_settings
from circuitlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_precedence_toml_env_cli(tmp_path, monkeypatch):
    toml = tmp_path / "c.toml"
    toml.write_text("batch_size = 3\nmax_new_tokens = 7\nseed = 11\n")
    monkeypatch.setenv("CIRCUITLAB_MAX_NEW_TOKENS", "9")
    monkeypatch.setenv("CIRCUITLAB_SEED", "12")
    s = load_settings(toml, seed=13)
    assert s.batch_size == 3  # only in TOML
    assert s.max_new_tokens == 9  # env beats TOML
    assert s.seed == 13  # CLI beats env
    assert s.dtype == "float32"  # default


def test_none_overrides_are_ignored(monkeypatch):
    monkeypatch.setenv("CIRCUITLAB_BATCH_SIZE", "5")
    assert load_settings(batch_size=None).batch_size == 5


def test_default_toml_lists_every_field():
    from circuitlab.config import default_toml

    assert (REPO / "config.default.toml").read_text().startswith(default_toml())


def test_default_toml_matches_field_defaults(monkeypatch):
    for name in Settings.model_fields:  # the environment outranks the file: keep it out
        monkeypatch.delenv(f"CIRCUITLAB_{name.upper()}", raising=False)
    s = load_settings(REPO / "config.default.toml")
    defaults = Settings.model_construct()
    for name in Settings.model_fields:
        assert getattr(s, name) == getattr(defaults, name), name


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_size = 0\n", "batch_size"),
        ("no_such_key = 1\n", "unknown keys"),
        ("dtype = 'float8'\n", "dtype"),
        ("batch_size = [\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(toml)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


# ------------------------------------------------------------------ every command's options
def _parser():
    from circuitlab.cli import build_parser

    return build_parser()


def test_default_toml_is_generated_from_every_commands_flags():
    """config.default.toml holds every option of every command, with the help text the
    command's --help shows (both come from the one flag declaration)."""
    import tomllib

    from circuitlab.cli import _option_actions, _subparsers, full_default_toml, section_name

    parser = _parser()
    text = (REPO / "config.default.toml").read_text()
    assert text == full_default_toml(parser)
    data = tomllib.loads(text)
    for command, sub in _subparsers(parser).items():
        helptext = "".join(sub.format_help().split())  # argparse rewraps, even at hyphens
        for action in _option_actions(sub):
            line = f"# {' '.join((action.help or '').split())}"
            assert line in text, (command, action.dest)
            assert "".join((action.help or "").split()) in helptext, (command, action.dest)
            set_or_commented = action.dest in data.get(section_name(command), {}) or (
                f"# {action.dest} =" in text
            )
            assert set_or_commented, (command, action.dest)


def _other_value(action):
    """A valid value other than the option's default (native, as TOML would hold it)."""
    import argparse

    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return not action.default
    if action.choices is not None:
        choices = list(action.choices)
        return next((c for c in choices if c != action.default), choices[0])
    kind = action.type
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        return ["first value", "second"]
    if kind is int:
        return (action.default or 0) + 3
    if kind is float:
        return (action.default or 0.0) + 0.25
    if kind in (None, str):
        return f"{action.dest}-from-config"
    return "3"  # a custom converter (paths, limits): it parses text


def _argv(command, sub, tested):
    from circuitlab.cli import _REQUIRED

    argv = [command]
    for action in sub._actions:
        if not action.option_strings and action.dest != "help":
            argv.append(action.choices and list(action.choices)[0] or "x")
        elif action.dest in _REQUIRED.get(command, ()) and action.dest != tested:
            argv += [action.option_strings[-1], "given"]
    return argv


@pytest.mark.parametrize("where", ["toml", "env"])
def test_every_option_of_every_command_can_be_set_from_toml_and_env(where, tmp_path, monkeypatch):
    import json

    from circuitlab.cli import _option_actions, _subparsers, section_name, settings_from_args

    parser = _parser()
    checked = 0
    for command, sub in _subparsers(parser).items():
        section = section_name(command)
        for action in _option_actions(sub):
            value = _other_value(action)
            config = tmp_path / f"{section}-{action.dest}.toml"
            if where == "toml":
                from circuitlab.config import toml_value

                config.write_text(f"[{section}]\n{action.dest} = {toml_value(value)}\n")
            else:
                config.write_text("")
                text = value if isinstance(value, str) else json.dumps(value)
                monkeypatch.setenv(f"CIRCUITLAB_{section.upper()}__{action.dest.upper()}", text)
            argv = [*_argv(command, sub, action.dest), "--config", str(config)]
            args = parser.parse_args(argv)
            args.argv = argv
            settings_from_args(args, parser)
            expected = action.type(value) if isinstance(value, str) and action.type else value
            assert getattr(args, action.dest) == expected, (where, command, action.dest)
            monkeypatch.delenv(f"CIRCUITLAB_{section.upper()}__{action.dest.upper()}", False)
            checked += 1
    assert checked > 100


def test_command_option_precedence_toml_env_flag(tmp_path, monkeypatch):
    from circuitlab.cli import settings_from_args

    parser = _parser()
    config = tmp_path / "c.toml"
    config.write_text('seed = 4\n[search]\ntrials = 7\nn_kl = 5\nmethods = "pca"\nstudy = "s"\n')
    monkeypatch.setenv("CIRCUITLAB_SEARCH__N_KL", "6")
    monkeypatch.setenv("CIRCUITLAB_SEARCH__METHODS", "cones")
    argv = ["search", "m", "--config", str(config), "--methods", "diff-means"]
    args = parser.parse_args(argv)
    args.argv = argv
    settings = settings_from_args(args, parser)
    assert (args.trials, args.n_kl, args.methods, args.study) == (7, 6, "diff-means", "s")
    assert args.n_search == 30 and settings.seed == 4  # default; a setting from the file


def test_required_option_may_come_from_toml_but_not_from_nowhere(tmp_path):
    from circuitlab.cli import settings_from_args

    parser = _parser()
    args = parser.parse_args(["search", "m"])
    args.argv, args.config = ["search", "m"], None
    with pytest.raises(ConfigError, match="--study"):
        settings_from_args(args, parser)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[search]\ntrialz = 3\n", "search.trialz"),
        ("[search]\ntrials = 'many'\n", "search.trials"),
        ("[evaluate]\nsplit = 'everything'\n", "evaluate.split"),
        ("[nosuchcommand]\nx = 1\n", "nosuchcommand"),
    ],
)
def test_bad_command_sections_are_one_clear_error(tmp_path, text, message):
    from circuitlab.cli import settings_from_args

    parser = _parser()
    config = tmp_path / "c.toml"
    config.write_text(text)
    argv = ["search", "m", "--study", "s", "--config", str(config)]
    args = parser.parse_args(argv)
    args.argv = argv
    with pytest.raises(ConfigError, match=message):
        settings_from_args(args, parser)


def test_search_travels_as_one_frozen_config_built_from_the_settings(tmp_path, monkeypatch):
    import dataclasses

    from circuitlab.cli import settings_from_args
    from circuitlab.commands.search import search_config

    parser = _parser()
    config = tmp_path / "c.toml"
    config.write_text('seed = 3\n[abliterate]\ntrials = 9\nmethods = "pca"\nno_prune = true\n')
    monkeypatch.setenv("CIRCUITLAB_ABLITERATE__FAMILY", "llama")
    argv = ["abliterate", "m", "--config", str(config), "--storage", "x.journal"]
    args = parser.parse_args(argv)
    args.argv = argv
    built = search_config(args, settings_from_args(args, parser))
    assert (built.n_trials, built.seed, built.family, built.storage) == (9, 3, "llama", "x.journal")
    assert built.space.methods == ("pca",) and built.objective.prune_kl is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.n_trials = 1
    assert list(built.as_dict()["space"]["methods"]) == ["pca"]


def test_per_layer_margin_and_refusal_target_reach_the_config_from_flags_and_toml(tmp_path):
    from circuitlab.cli import settings_from_args
    from circuitlab.commands import _common
    from circuitlab.commands.search import abliterate_config
    from circuitlab.search.front import DEFAULT_MARGIN

    parser = _parser()
    config = tmp_path / "c.toml"
    config.write_text("[abliterate]\nmargin = 0.1\nper_layer = false\n")
    argv = ["abliterate", "m", "--config", str(config), "--refusal-target", "0.25"]
    args = parser.parse_args(argv)
    args.argv = argv
    built = abliterate_config(args, settings_from_args(args, parser), None)
    assert not built.search.space.per_layer
    assert (built.margin, built.refusal_target) == (0.1, 0.25)
    assert not built.as_dict()["search"]["space"].get("per_layer")
    argv = ["search", "m", "--study", "s"]
    args = parser.parse_args(argv)
    args.argv = argv
    settings_from_args(args, parser)
    # The flags' defaults are the choice rule's and the space's own (literals so --help loads
    # no torch).
    assert (args.margin, args.refusal_target, args.per_layer) == (DEFAULT_MARGIN, None, True)
    assert _common.DEFAULT_MARGIN == DEFAULT_MARGIN
