"""``circuitlab steer`` and ``circuitlab chat``: a model with and without interventions.

``steer`` prints greedy completions of the same prompts without and with the interventions,
side by side. ``chat`` is a loop over stdin (so it can be piped): each line is a single-turn
message, answered with the interventions on or off; lines starting with ``/`` are commands.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence

from rich.markup import escape
from rich.table import Table

from circuitlab.config import Settings

CHAT_HELP = """commands:
  /on, /off      switch the interventions on or off (they start on)
  /strength X    set every intervention's strength (ablation calibration, addition
                 strength, head weight) to X
  /show          print the interventions
  /help          this text
  /quit          leave (so does end of input)"""


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


def _chat_command(line: str, state: dict, base: list) -> str | None:
    """Apply one /command to ``state``; returns what to print, or None to quit."""
    from circuitlab.interventions import to_json, with_strength

    name, _, value = line.partition(" ")
    if name == "/quit":
        return None
    if name in ("/on", "/off"):
        state["on"] = name == "/on"
        return f"interventions {'on' if state['on'] else 'off'}"
    if name == "/strength":
        try:
            strength = float(value)
        except ValueError:
            return f"/strength needs a number, got {value!r}"
        if not math.isfinite(strength):
            return f"/strength needs a finite number, got {value!r}"
        state["interventions"] = [with_strength(iv, strength) for iv in base]
        return f"strength {strength:g}"
    if name == "/show":
        return "\n".join(to_json(iv) for iv in state["interventions"])
    return CHAT_HELP if name == "/help" else f"unknown command {name}\n{CHAT_HELP}"


def _chat_loop(model, base: list, settings: Settings, chat: bool, lines: Iterable[str]) -> None:
    from circuitlab.commands._common import out

    state = {"on": True, "interventions": list(base)}
    interactive = sys.stdin.isatty()
    if interactive:
        out.print(f"[dim]{_label(base)} on; /help for commands[/]")
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("/"):
            reply = _chat_command(line, state, base)
            if reply is None:
                return
            out.print(f"[dim]{escape(reply)}[/]")
            continue
        active = state["interventions"] if state["on"] else []
        (text,) = _generate(model, [line], settings, chat, active)
        tag = "on" if state["on"] else "off"
        out.print(f"[bold]model ({tag})>[/] {escape(text.strip())}")


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    model, interventions, chat = _load(args, settings)
    _chat_loop(model, interventions, settings, chat, sys.stdin)
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
    p = command("chat", cmd_chat, "Chat (stdin) with interventions switched on and off.")
    _common(p)
