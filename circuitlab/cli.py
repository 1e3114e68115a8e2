"""The ``circuitlab`` command. It parses, builds settings, calls the library and displays.

Only this module configures logging, threads, seeds and progress display.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args, get_origin

from rich.console import Console
from rich.table import Table

from circuitlab.config import Settings, load_settings
from circuitlab.errors import CircuitlabError

__all__ = ["main", "build_parser"]

out = Console()
err = Console(stderr=True)


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


def load_model(source: str, settings: Settings):
    from circuitlab.engine import HookedModel
    from circuitlab.models import ModelSpec

    spec = ModelSpec(
        source,
        device=settings.device,
        dtype=settings.dtype,
        cache_dir=settings.cache_dir,
        trust_remote_code=settings.trust_remote_code,
    )
    with err.status(f"loading {source}…"):
        return HookedModel.load(
            spec, system_prompt=settings.system_prompt, chat_template=settings.chat_template
        )


# ------------------------------------------------------------------------------ commands
def facts_table(model) -> Table:
    table = Table(title=f"{model.resolved.location}", show_header=False)
    table.add_column("fact", style="bold")
    table.add_column("value")
    for key, value in model.facts.as_dict().items():
        table.add_row(key, str(value))
    table.add_row("source", model.resolved.kind)
    return table


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
    "circuitlab.commands.evaluate",
    "circuitlab.commands.discover",
    "circuitlab.commands.search",
    "circuitlab.commands.export",
    "circuitlab.commands.sae",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for run reports
    try:
        settings = settings_from_args(args)
        configure_runtime(settings)
        return args.fn(args, settings)
    except CircuitlabError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
