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

    assert (REPO / "config.default.toml").read_text() == default_toml()


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
