"""The ``circuitlab`` command. It parses, builds settings, calls the library and displays.

Only this module configures logging, threads, seeds and progress display.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import random
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from rich.markup import escape
from rich.table import Table

from circuitlab import checks
from circuitlab.commands._common import (
    check_prompts,
    err,
    facts_table,
    load_model,
    out,
)
from circuitlab.config import Settings, default_toml, load_config, toml_value
from circuitlab.errors import CircuitlabError, ConfigError

__all__ = ["main", "build_parser", "option_sections", "full_default_toml"]


# ------------------------------------------------------------------------ settings flags
def _flag_type(annotation: Any) -> tuple[Callable[[str], Any] | None, list[str] | None]:
    if get_origin(annotation) is Literal:
        return str, [str(a) for a in get_args(annotation)]
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    return (base if base in (int, float, str) else str), None


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, its help taken from the field description."""
    group = parser.add_argument_group("settings (also CIRCUITLAB_<NAME> or --config TOML)")
    group.add_argument("--config", metavar="TOML", help="TOML file with settings.")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        helptext = f"{field.description} (default: {field.default})"
        if field.annotation is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
            continue
        kind, choices = _flag_type(field.annotation)
        group.add_argument(flag, type=kind, choices=choices, default=None, help=helptext)


# ------------------------------------------------------------------------ command options
# Every option of every command is also a setting of the command's TOML section and of the
# environment (circuitlab.config). The flag declarations are the one schema: the section
# models below are derived from them, so flags, help, TOML and environment cannot disagree.
_UNSET = object()
_BOOL_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def section_name(command: str) -> str:
    """The TOML section (and environment infix) of a command: ``judge-eval`` → ``judge_eval``."""
    return command.replace("-", "_")


def _option_actions(sub: argparse.ArgumentParser) -> list[argparse.Action]:
    """A command's own options: not positionals, help, --config or the Settings flags."""
    skip = {"help", "config", *Settings.model_fields}
    return [a for a in sub._actions if a.option_strings and a.dest not in skip]


def _converter(kind: Callable[[str], Any]):
    def convert(value: Any) -> Any:
        return kind(value) if isinstance(value, str) else value

    return convert


def _annotation(action: argparse.Action) -> Any:
    from typing import Annotated

    from pydantic import BeforeValidator

    if isinstance(action, (*_BOOL_ACTIONS, argparse.BooleanOptionalAction)):
        return bool | None if action.default is None else bool
    kind = action.type
    if action.choices is not None:
        base: Any = Literal[tuple(action.choices)]  # type: ignore[valid-type]
    elif kind in (None, str, int, float):
        base = kind or str
    else:
        base = Annotated[Any, BeforeValidator(_converter(kind))]
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        return list[base]
    return base | None if action.default is None else base


def _option_model(command: str, sub: argparse.ArgumentParser):
    from pydantic import ConfigDict, Field, create_model

    fields = {}
    for action in _option_actions(sub):
        default = [] if isinstance(action, argparse._AppendAction) else action.default
        fields[action.dest] = (_annotation(action), Field(default, description=action.help))
    config = ConfigDict(extra="forbid", frozen=True)
    with warnings.catch_warnings():
        # Options named like BaseModel methods (--json) only shadow them on this model.
        warnings.filterwarnings("ignore", message="Field name", category=UserWarning)
        return create_model(f"{section_name(command)}_options", __config__=config, **fields)


def option_sections(parser: argparse.ArgumentParser) -> dict[str, type]:
    """One pydantic model per command, from the command's own flags (name → model); built
    once per parser."""
    cached = getattr(parser, "_option_sections", None)
    if cached is None:
        cached = {section_name(c): _option_model(c, sub) for c, sub in _subparsers(parser).items()}
        parser._option_sections = cached  # type: ignore[attr-defined]
    return cached


def _explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str], command: str):
    """The command's options given on the command line (parsed again with sentinel
    defaults: an option equal to its default may still have been typed)."""
    actions = _option_actions(_subparsers(parser)[command])
    saved = [(a, a.default) for a in actions]
    for action in actions:
        action.default = None if isinstance(action, argparse._AppendAction) else _UNSET
    try:
        again = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return {
        a.dest: getattr(again, a.dest)
        for a in actions
        if getattr(again, a.dest) is not _UNSET and getattr(again, a.dest) is not None
    }


def settings_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> Settings:
    """Settings, and the command's options filled in from TOML and the environment where
    the command line does not give them (precedence: defaults < TOML < env < flags)."""
    overrides = {name: getattr(args, name, None) for name in Settings.model_fields}
    if parser is None or getattr(args, "command", None) is None:
        return load_config(args.config, **overrides)[0]
    command, section = args.command, section_name(args.command)
    sections = option_sections(parser)
    given = {section: _explicit_options(parser, args.argv, command)}
    settings, options = load_config(args.config, sections, given, **overrides)
    for dest, value in options[section].model_dump().items():
        setattr(args, dest, value)
    for action in _option_actions(_subparsers(parser)[command]):
        if action.dest in _REQUIRED.get(command, ()) and getattr(args, action.dest) is None:
            flag = action.option_strings[-1]
            env = f"CIRCUITLAB_{section.upper()}__{action.dest.upper()}"
            raise ConfigError(f"{command} needs {flag} (or {env}, or {action.dest} in [{section}])")
    return settings


# Options argparse would require; required here once TOML and environment are heard too.
_REQUIRED: dict[str, set[str]] = {}


def full_default_toml(parser: argparse.ArgumentParser | None = None) -> str:
    """``config.default.toml``: the settings, then every command's section, every option
    with its help and default (unset options commented out)."""
    parser = parser or build_parser()
    lines = [default_toml().rstrip("\n")]
    for command, sub in _subparsers(parser).items():
        actions = _option_actions(sub)
        if not actions:
            continue
        section = section_name(command)
        lines += ["", f"# ---- circuitlab {command} (also CIRCUITLAB_{section.upper()}__<OPTION>)"]
        lines.append(f"[{section}]")
        for action in actions:
            default = [] if isinstance(action, argparse._AppendAction) else action.default
            text = toml_value(default)
            lines.append(f"# {' '.join((action.help or '').split())}")
            lines.append(f"# {action.dest} =" if text is None else f"{action.dest} = {text}")
    return "\n".join(lines) + "\n"


def configure_runtime(settings: Settings) -> None:
    """Logging, threads and seeds: decided once, at start-up, by the CLI."""
    import numpy as np
    import torch

    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    # Hugging Face and TransformerLens are chatty about things the user cannot act on.
    for noisy in ("transformers", "transformer_lens", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.ERROR, logging.getLogger().level))
    warnings.filterwarnings("ignore", module=r"(transformers|transformer_lens|torch)\b")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    threads = settings.threads or (1 if (os.cpu_count() or 1) <= 2 else min(8, os.cpu_count()))
    torch.set_num_threads(threads)
    # scikit-learn and scipy use BLAS/OpenMP pools of their own; keep them to the same budget.
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)


# ------------------------------------------------------------------------------ commands
def cmd_info(args: argparse.Namespace, settings: Settings) -> int:
    model = load_model(args.model, settings)
    out.print(facts_table(model))
    return 0


def cmd_presets(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.models import PRESETS

    table = Table(title="offline presets")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, preset in sorted(PRESETS.items()):
        table.add_row(name, preset.description)
    out.print(table)
    return 0


def _print_completions(prompts: Sequence[str], completions: Sequence[str]) -> None:
    for prompt, completion in zip(prompts, completions, strict=True):
        out.rule(f"[bold]{prompt}")
        out.print(completion.strip() or "[dim](empty)")


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    check_prompts(args.prompts)
    model = load_model(args.model, settings)
    chat = model.facts.has_chat_template and not args.raw
    completions = model.generate(
        args.prompts,
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        chat=chat,
        progress=len(args.prompts) > settings.batch_size,
    )
    _print_completions(args.prompts, completions)
    return 0


# Each module has ``register(command)``; ``command(name, fn, help)`` returns its subparser,
# already carrying the settings flags, and ``fn(args, settings) -> exit code``.
COMMAND_MODULES: tuple[str, ...] = (
    "circuitlab.commands.demo",
    "circuitlab.commands.testbed",
    "circuitlab.commands.extract",
    "circuitlab.commands.steer",
    "circuitlab.commands.chat",
    "circuitlab.commands.evaluate",
    "circuitlab.commands.discover",
    "circuitlab.commands.search",
    "circuitlab.commands.export",
    "circuitlab.commands.sae",
    "circuitlab.commands.data",
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other error of the tool."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="circuitlab",
        description="Find refusal mechanisms, test edits live through hooks, export them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        section = section_name(name)
        epilog = (
            f"Every option above may also be set in the [{section}] table of the --config "
            f"TOML file or as CIRCUITLAB_{section.upper()}__<OPTION> (e.g. an option --n-test "
            "is n_test); the command line wins, then the environment, then the file."
        )
        p = sub.add_parser(name, help=help, description=help, epilog=epilog)
        p.set_defaults(fn=fn)
        add_settings_flags(p)
        return p

    p = command("info", cmd_info, "Print a model's facts (layers, heads, KV groups, norms).")
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    command("presets", cmd_presets, "List the offline model presets.")
    p = command("generate", cmd_generate, "Print greedy completions of prompts.")
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(command)
    for name, p in _subparsers(parser).items():
        for action in _option_actions(p):
            if action.required:  # may come from TOML or the environment instead
                action.required = False
                _REQUIRED.setdefault(name, set()).add(action.dest)
                action.help = f"{action.help} (required)"
            hidden = (None, False, argparse.SUPPRESS)  # by identity: 0 == False
            shown = not any(action.default is h for h in hidden) and action.default != []
            if shown and "default" not in (action.help or ""):
                action.help = f"{action.help} (default: {action.default})"
    return parser


def _log_file(exc: BaseException, cache_dir: Path) -> Path | None:
    """Write the traceback under ``cache_dir/logs``; None if that cannot be written."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(cache_dir) / "logs" / f"crash-{stamp}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path


def _fallback_cache() -> Path:
    return Path(os.environ.get("CIRCUITLAB_CACHE_DIR") or "cache")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for run reports
    settings = None
    try:
        settings = settings_from_args(args, parser)
        configure_runtime(settings)
        checks.device(settings.device)
        checks.device(settings.neural_device, "--neural-device")
        return args.fn(args, settings)
    except CircuitlabError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # the last resort: a bug, or an error we did not foresee
        debug = settings is not None and settings.log_level == "DEBUG"
        if debug:
            err.print_exception()
        where = _log_file(exc, settings.cache_dir if settings else _fallback_cache())
        note = f"; traceback in {where}" if where else ""
        hint = "" if debug else " (--log-level DEBUG shows it here)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        line = f"{type(exc).__name__}: {first}{note}{hint}"
        err.print(
            f"[bold red]unexpected error:[/] {escape(line)}",
            highlight=False,
            soft_wrap=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
