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
from circuitlab.config import Settings, load_settings
from circuitlab.errors import CircuitlabError

__all__ = ["main", "build_parser"]


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


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name, None) for name in Settings.model_fields}
    return load_settings(args.config, **overrides)


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
        p = sub.add_parser(name, help=help, description=help)
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
        settings = settings_from_args(args)
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
