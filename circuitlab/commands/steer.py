"""``circuitlab steer``: greedy completions of the same prompts without and with
interventions, side by side (``circuitlab chat`` talks to a model turn by turn)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table

from circuitlab.config import Settings


def _load(args: argparse.Namespace, settings: Settings):
    """Interventions first (a bad file fails before a model loads), then the model."""
    from circuitlab.commands._common import check_interventions, check_prompts, load_model

    check_prompts(getattr(args, "prompts", ()))
    interventions = check_interventions(args.intervention, args.model, settings)
    model = load_model(args.model, settings)
    chat = model.facts.has_chat_template and not args.raw
    return model, interventions, chat


def _label(interventions: Sequence) -> str:
    return " + ".join(type(iv).__name__ for iv in interventions)


def _generate(model, prompts: Sequence[str], settings: Settings, chat: bool, interventions=()):
    from circuitlab.hooks import apply

    with apply(model, *interventions):
        return model.generate(
            prompts,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            chat=chat,
            progress=len(prompts) > settings.batch_size,
        )


def cmd_steer(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import out

    model, interventions, chat = _load(args, settings)
    plain = _generate(model, args.prompts, settings, chat)
    steered = _generate(model, args.prompts, settings, chat, interventions)
    table = Table(
        title=f"{args.model}: greedy, {settings.max_new_tokens} tokens",
        caption=f"with: {_label(interventions)}",
        show_lines=True,
    )
    table.add_column("prompt", style="bold", ratio=1)
    table.add_column("without", ratio=2)
    table.add_column("with", ratio=2)
    for row in zip(args.prompts, plain, steered, strict=True):
        table.add_row(*(escape(text.strip()) or "[dim](empty)" for text in row))
    out.print(table)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    p.add_argument(
        "--intervention",
        action="append",
        required=True,
        metavar="FILE.json",
        help="interventions file (save_intervention(s), or a search's chosen.json) "
        "(repeat to compose several, applied in order)",
    )
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")


def register(command) -> None:
    p = command("steer", cmd_steer, "Print completions without and with interventions.")
    _common(p)
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
