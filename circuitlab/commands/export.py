"""``circuitlab export``: fold interventions into weights, prove parity, write an HF folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from circuitlab.config import Settings


def _prompts(path: str | None) -> list[str] | None:
    """Held-out prompts, one per line (default: the exporter's own sixteen)."""
    if path is None:
        return None
    from circuitlab.errors import PromptError

    file = Path(path)
    if not file.is_file():
        raise PromptError(f"prompt file not found: {file}")
    lines = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not lines:
        raise PromptError(f"{file} holds no prompts")
    return lines


def _scorecard(path: str | None):
    if path is None:
        return None
    from circuitlab.errors import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the scorecard {path}: {exc}") from None


def _parity_table(result) -> Table:
    parity = result.parity
    table = Table(title=f"exported to {result.path}", caption="hooked model vs folded weights")
    for column in ("max |Δlogit|", "mean KL", "max KL", "greedy identical", "tolerance"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{parity.max_abs_logit_diff:.2e}",
        f"{parity.mean_kl:.2e}",
        f"{parity.max_kl:.2e}",
        f"{parity.greedy_agree}/{parity.n_prompts}",
        f"{parity.tolerance:g}",
    )
    return table


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.cli import load_model, out
    from circuitlab.export import ExportError, check_foldable, export
    from circuitlab.interventions import load_interventions

    # Everything that can fail without the model fails before it loads.
    interventions = [iv for path in args.intervention for iv in load_interventions(path)]
    for iv in interventions:
        check_foldable(iv)
    destination = Path(args.out)
    if destination.exists() and not args.force:
        raise ExportError(f"{destination} already exists; pass --force to replace it")
    prompts, scorecard = _prompts(args.prompts), _scorecard(args.scorecard)
    model = load_model(args.model, settings)
    result = export(
        model,
        interventions,
        destination,
        prompts=prompts,
        chat=model.facts.has_chat_template and not args.raw,
        tolerance=args.tolerance,
        force=args.force,
        scorecard=scorecard,
        seed=settings.seed,
        max_shard_size=args.max_shard_size,
    )
    out.print(_parity_table(result))
    out.print(result.parity.summary(), highlight=False)
    return 0


def register(command) -> None:
    p = command(
        "export",
        cmd_export,
        "Fold interventions into the weights, check them against the hooks, save an HF folder.",
    )
    p.add_argument("model", help="preset name, HF folder, .gguf file or hub id")
    p.add_argument(
        "--intervention",
        action="append",
        required=True,
        metavar="FILE.json",
        help="interventions file (save_intervention(s), a search's chosen.json); repeatable",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.add_argument(
        "--tolerance",
        type=float,
        help="max |Δlogit| allowed (default: 1e-3 in float32, else fitted to the measured noise)",
    )
    p.add_argument("--prompts", metavar="FILE", help="held-out prompts for the check, one a line")
    p.add_argument("--scorecard", metavar="FILE.json", help="evaluation results to record")
    p.add_argument(
        "--max-shard-size", default="4GB", help="bound per safetensors file (default: 4GB)"
    )
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
