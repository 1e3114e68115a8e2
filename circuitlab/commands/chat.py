"""``circuitlab chat``: talk to any model (a preset, an exported folder, a hub id), edited or not.

A loop over stdin, so it can be piped: each line is a user turn, answered in the context of
the conversation so far (the chat template renders the whole history); lines starting with
``/`` are commands. Interventions are optional and switch on and off between turns.
Sampling follows ``--temperature`` / ``--top-p`` (0 is greedy) with ``--seed`` seeding torch
once, so a piped conversation replays identically.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rich.markup import escape

from circuitlab.config import Settings

CHAT_HELP = """commands:
  /reset         forget the conversation so far
  /on, /off      switch the interventions on or off (they start on)
  /strength X    set every intervention's strength (ablation calibration, addition
                 strength, head weight) to X
  /show          print the interventions
  /help          this text
  /quit          leave (so does end of input)"""


@dataclass
class ChatState:
    """The conversation and the switches the /commands change."""

    base: list
    interventions: list
    on: bool = True
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def active(self) -> list:
        return self.interventions if self.on else []


def _label(interventions: Sequence) -> str:
    return " + ".join(type(iv).__name__ for iv in interventions)


def _command(line: str, state: ChatState) -> str | None:
    """Apply one /command; returns what to print, or None to quit."""
    from circuitlab.interventions import to_json, with_strength

    name, _, value = line.partition(" ")
    if name == "/quit":
        return None
    if name == "/reset":
        state.history.clear()
        return "conversation reset"
    if name in ("/on", "/off", "/strength", "/show") and not state.base:
        return f"{name}: no interventions were given (--intervention FILE.json)"
    if name in ("/on", "/off"):
        state.on = name == "/on"
        return f"interventions {'on' if state.on else 'off'}"
    if name == "/strength":
        try:
            strength = float(value)
        except ValueError:
            return f"/strength needs a number, got {value!r}"
        if not math.isfinite(strength):
            return f"/strength needs a finite number, got {value!r}"
        state.interventions = [with_strength(iv, strength) for iv in state.base]
        return f"strength {strength:g}"
    if name == "/show":
        return "\n".join(to_json(iv) for iv in state.interventions)
    return CHAT_HELP if name == "/help" else f"unknown command {name}\n{CHAT_HELP}"


def render(model, history: list[dict[str, str]], chat: bool, system: str | None) -> str:
    """The conversation as the model reads it: its chat template with the assistant's turn
    open, or (raw) the turns as one running text."""
    if not chat:
        return "\n".join(turn["content"] for turn in history)
    messages = ([{"role": "system", "content": system}] if system else []) + history
    return model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _fit(model, history: list[dict[str, str]], chat: bool, system, room: int):
    """Token ids of the conversation, dropping the oldest exchanges while it would not leave
    ``room`` new tokens within the model's context."""
    limit = getattr(model.hf_model.config, "max_position_embeddings", None)
    while True:
        ids = model.tokenizer(
            render(model, history, chat, system), return_tensors="pt", add_special_tokens=not chat
        ).input_ids
        if limit is None or ids.shape[1] + room <= limit or len(history) <= 1:
            return ids
        del history[:2]  # the oldest user turn and its answer


def reply(model, state: ChatState, settings: Settings, options: argparse.Namespace, chat: bool):
    """Generate the assistant's next turn (sampled or greedy) under the active interventions."""
    import torch
    from transformers import GenerationConfig

    from circuitlab.hooks import apply
    from circuitlab.models.loading import input_device

    system = options.system if options.system is not None else model.system_prompt
    ids = _fit(model, state.history, chat, system, settings.max_new_tokens).to(
        input_device(model.hf_model)
    )
    sample = options.temperature > 0
    eos = model.hf_model.generation_config.eos_token_id
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=sample,
        temperature=options.temperature if sample else None,
        top_p=options.top_p if sample else None,
        top_k=None,
        pad_token_id=model.tokenizer.pad_token_id or model.tokenizer.eos_token_id,
        eos_token_id=eos if eos is not None else model.tokenizer.eos_token_id,
    )
    with torch.no_grad(), apply(model, *state.active):
        out = model.hf_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
        )
    return model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def chat_loop(model, state: ChatState, settings, options, chat: bool, lines: Iterable[str]):
    """Read turns and /commands from ``lines`` until /quit or the end of input."""
    from circuitlab.commands._common import out

    if sys.stdin.isatty():
        what = f"{_label(state.base)} on" if state.base else "no interventions"
        out.print(f"[dim]{what}; /help for commands[/]")
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("/"):
            answer = _command(line, state)
            if answer is None:
                return
            out.print(f"[dim]{escape(answer)}[/]")
            continue
        state.history.append({"role": "user", "content": line})
        text = reply(model, state, settings, options, chat)
        state.history.append({"role": "assistant", "content": text})
        tag = (" (on)" if state.on else " (off)") if state.base else ""
        out.print(f"[bold]model{tag}>[/] {escape(text)}")


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from circuitlab import checks
    from circuitlab.commands._common import check_interventions, load_model

    checks.at_least("--temperature", args.temperature, 0.0)
    checks.finite("--temperature", args.temperature)
    if not 0.0 < args.top_p <= 1.0:
        from circuitlab.errors import ConfigError

        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    interventions = check_interventions(args.intervention, args.model, settings)
    model = load_model(args.model, settings)
    torch.manual_seed(settings.seed)
    chat = model.facts.has_chat_template and not args.raw
    state = ChatState(list(interventions), list(interventions))
    chat_loop(model, state, settings, args, chat, sys.stdin)
    return 0


def register(command) -> None:
    p = command(
        "chat",
        cmd_chat,
        "Chat (stdin, multi-turn) with any model, interventions optional and switchable.",
    )
    p.add_argument("model", help="preset name, HF folder (an export too), .gguf file or hub id")
    p.add_argument(
        "--intervention",
        action="append",
        default=[],
        metavar="FILE.json",
        help="interventions file (repeat to compose several, applied in order); optional",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 answers greedily (default: 0)",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    p.add_argument("--system", help="system message (default: the configured system prompt)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
