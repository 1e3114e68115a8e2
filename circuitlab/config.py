"""Typed settings in one place.

Precedence, lowest to highest: field defaults < TOML file (``--config``) < environment
(``CIRCUITLAB_<FIELD>``) < command-line flags. The CLI builds its flags from the field
descriptions below, so the help text cannot drift from the code.

Every option of every command is a setting too, in a TOML section named after its command
(``[search]``, ``[abliterate]``, ``[export]``, ...; ``judge-eval`` is ``[judge_eval]``) and
in the environment as ``CIRCUITLAB_<SECTION>__<OPTION>`` (``CIRCUITLAB_SEARCH__TRIALS=8``).
The CLI derives those sections' models from its own flag declarations
(:func:`load_config` takes them), so flags, help, sections and ``config.default.toml``
come from one declaration. pydantic-settings' own sources do the layering: its TOML source
reads the file and its environment source the variables (``__`` nests into sections).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from circuitlab.checks import DEVICE_PATTERN
from circuitlab.errors import ConfigError

__all__ = ["Settings", "default_toml", "load_config", "load_settings", "toml_value"]


class Settings(BaseSettings):
    """Every knob circuitlab reads, with its documented default."""

    model_config = SettingsConfigDict(env_prefix="CIRCUITLAB_", extra="forbid", frozen=True)

    cache_dir: Path = Field(
        Path("cache"),
        description="Folder for converted models, activations, directions, studies and exports.",
    )
    device: str = Field("cpu", description="Torch device: cpu, cuda, cuda:1, mps or auto.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Weight dtype (the compute dtype of a quantized load). Export parity fits "
        "its tolerance to it: 1e-3 in float32, a multiple of the measured noise otherwise.",
    )
    device_map: str | None = Field(
        None,
        description="Split the model over devices: auto, balanced, sequential, or a JSON map "
        'of module names to devices ({"model.layers.0": 0, "lm_head": "cpu"}); overrides device.',
    )
    max_memory: str | None = Field(
        None,
        description='Per-device budget for device_map, as JSON ({"0": "20GiB", "cpu": "64GiB"}).',
    )
    quantization: Literal["4bit", "8bit"] | None = Field(
        None,
        description="Load the weights quantized with bitsandbytes (needs a CUDA GPU); export "
        "folds into the original source weights.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="Torch CPU threads; 0 picks automatically (1 on machines with 2 cores or "
        "fewer, where more threads were measured slower under contention).",
    )
    seed: int = Field(0, description="Seed for torch, numpy and every split or search.")
    system_prompt: str | None = Field(
        None, description="System prompt for chat formatting; unset keeps the template's default."
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template (text, or a path to a file) for models that ship none.",
    )
    chat_template_kwargs: str | None = Field(
        None,
        description='Extra chat-template variables as a JSON object, e.g. {"enable_thinking": '
        "false} to keep Qwen3-style models from opening a reasoning block.",
    )
    response_prefix: str | None = Field(
        "auto",
        description="Text prefilled at the start of every assistant turn. auto: before a "
        "search, look for a prefix common to the base model's answers and, when it opens a "
        "reasoning block, prefill that block closed (an empty <think></think>); unset: none.",
    )
    preflight: bool = Field(
        True,
        description="Before the first trial, measure the base model's refusals and unfinished "
        "answers on the search prompts, and stop with the likely cause when there is nothing "
        "to search for (no refusals, answers cut off inside a reasoning block).",
    )
    batch_size: int = Field(16, ge=1, description="Prompts per forward pass or generation batch.")
    max_new_tokens: int = Field(48, ge=1, description="Tokens to generate per prompt.")
    trust_remote_code: bool = Field(
        False, description="Allow model repositories to run their own Python code (off: unsafe)."
    )
    judge: Literal["markers", "classifier", "combined", "nli", "model"] = Field(
        "markers",
        description="Refusal judge for evaluation and search: markers (phrases), classifier "
        "(local MiniLM + logistic regression), combined (markers where they are sure, the "
        "classifier elsewhere), nli, or model (the --model-judge model).",
    )
    model_judge: str = Field(
        "rubric",
        description="Model judge for --judge model: harmbench, harmbench-mistral, wildguard, "
        "llama-guard, rejection, rubric, rubric:MODEL (our rubric on any chat model), "
        "classifier:MODEL (any sequence classifier), or a hub id / folder.",
    )
    model_judge_for_search: bool = Field(
        False,
        description="Also use the model judge inside search trials (slow); off: trials use "
        "the marker judge and the final scorecard the model judge.",
    )
    judge_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Judgements less confident than this count as uncertain."
    )
    use_neural_refusal_detection: bool = Field(
        False, description="Add the zero-shot NLI judge to the chosen judge (a refusal if either)."
    )
    neural_detection_model: str = Field(
        "facebook/bart-large-mnli",
        description="NLI model for zero-shot refusal detection (hub id or local folder).",
    )
    neural_detection_for_optuna: bool = Field(
        False,
        description="Also use the NLI judge inside search trials (slow); off: only for the "
        "final test-split scorecard.",
    )
    neural_device: str = Field(
        "cpu", description="Device of the NLI model and the model judge (e.g. cuda:1)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Logging level of the command-line tool."
    )

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError('give a JSON object, e.g. {"enable_thinking": false}')
        return value

    @field_validator("device", "neural_device")
    @classmethod
    def _device_syntax(cls, value: str) -> str:
        # Whether the device exists is checked at start-up (checks.device), not here.
        if not DEVICE_PATTERN.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not a device: use cpu, cuda, cuda:N, mps or auto")
        return value.strip()


def _read_toml(path: Path, sections: dict[str, type[BaseModel]] | None = None) -> dict[str, Any]:
    """The file's tables, checked for unknown keys (a typo is an error, not a no-op).
    Without ``sections`` (library use) the command sections are left for the CLI."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    known = set(Settings.model_fields)
    if sections is None:
        data = {k: v for k, v in data.items() if k in known or not isinstance(v, dict)}
        sections = {}
    unknown = sorted(set(data) - known - set(sections))
    for name, model in sections.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: {name} must be a [{name}] table")
        unknown += sorted(f"{name}.{key}" for key in set(table) - set(model.model_fields))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown keys {unknown}; known: top-level "
            f"{sorted(known)} and the sections {sorted(sections)} (see config.default.toml)"
        )
    return data


def _layered(toml_path: Path | None, sections: dict[str, type[BaseModel]]) -> type[Settings]:
    """Settings plus one field per command section, read from init values (the flags) >
    environment > the TOML file, by pydantic-settings' own sources."""
    fields: dict[str, Any] = {
        name: (model, Field(default_factory=model)) for name, model in sections.items()
    }

    class _Layered(Settings):
        model_config = SettingsConfigDict(
            env_prefix="CIRCUITLAB_",
            env_nested_delimiter="__",
            extra="ignore" if not sections else "forbid",
            frozen=True,
        )

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if toml_path is None:
                return (init_settings, env_settings)
            return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_path))

    return create_model("CircuitlabConfig", __base__=_Layered, **fields)


def load_config(
    config_file: str | Path | None = None,
    sections: dict[str, type[BaseModel]] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> tuple[Settings, dict[str, BaseModel]]:
    """Settings and the commands' option sections from defaults, an optional TOML file, the
    environment and the command line.

    Args:
        config_file: TOML file: top-level keys named like the Settings fields, and one
            table per section.
        sections: the option model of each section (the CLI builds them from its flags).
        options: per section, the options given on the command line (highest precedence).
        overrides: Settings given on the command line; ``None`` values are ignored.

    Returns:
        The frozen, validated settings and each section's validated options.
    """
    sections = dict(sections or {})
    path = Path(config_file) if config_file else None
    if path is not None:
        _read_toml(path, sections if sections else None)
    explicit: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    for name, given in (options or {}).items():
        explicit[name] = given
    try:
        layered = _layered(path, sections)(**explicit)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
    settings = Settings.model_construct(**{k: getattr(layered, k) for k in Settings.model_fields})
    return settings, {name: getattr(layered, name) for name in sections}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, an optional TOML file, the environment and overrides.

    Args:
        config_file: TOML file with top-level keys named like the fields (command sections
            are the CLI's, and left alone here).
        overrides: highest-precedence values (the command line); ``None`` values are ignored.

    Returns:
        The frozen, validated settings.
    """
    return load_config(config_file, **overrides)[0]


def toml_value(value: Any) -> str | None:
    """A default as TOML text; None where TOML has no value (unset)."""
    import json

    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) or '""' for v in value) + "]"
    return repr(value)


def default_toml() -> str:
    """The Settings part of ``config.default.toml``: every field, its description, default."""
    lines = [
        "# circuitlab default settings. Precedence: this file < CIRCUITLAB_* environment < flags."
    ]
    for name, field in Settings.model_fields.items():
        lines += ["", f"# {field.description}"]
        text = toml_value(field.default)
        lines.append(f"# {name} =" if text is None else f"{name} = {text}")
    return "\n".join(lines) + "\n"
