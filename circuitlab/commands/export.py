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
    from circuitlab import checks
    from circuitlab.errors import PromptError

    lines = [line.strip() for line in checks.text_file(path, "--prompts").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise PromptError(f"{path} holds no prompts")
    return lines


def _scorecard(path: str | None):
    if path is None:
        return None
    from circuitlab import checks
    from circuitlab.errors import ConfigError

    try:
        return json.loads(checks.text_file(path, "--scorecard"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cannot read the scorecard {path}: {exc}") from None


def preflight(args: argparse.Namespace, settings: Settings, out: str | Path, force: bool):
    """Every check that needs no loaded model, cheapest first; returns the interventions
    (each checked against the model's config) and the destination."""
    from circuitlab import checks
    from circuitlab.commands._common import model_shape, source_config
    from circuitlab.export import check_foldable
    from circuitlab.interventions import check_fits, load_interventions

    interventions = [iv for path in args.intervention for iv in load_interventions(path)]
    if getattr(args, "format", "merged") == "adapter":
        from circuitlab.export.adapter import require_peft

        require_peft()
    for iv in interventions:
        check_foldable(iv)
    checks.at_least("--tolerance", args.tolerance, 0.0)
    args.max_shard_size = checks.shard_size(args.max_shard_size)
    location, config = source_config(args.model, settings)
    destination = checks.export_destination(out, location, force)
    check_fits(interventions, *model_shape(config))
    return interventions, destination


def _parity_table(result) -> Table:
    table = Table(title=f"exported to {result.path}", caption="each compared with the hooks")
    for column in ("", "max |Δlogit|", "mean KL", "max KL", "greedy identical", "tolerance"):
        table.add_column(column, justify="right")
    rows = [("folded weights", result.parity)]
    if getattr(result, "client", None) is not None:
        rows.append(("base + adapter (peft)", result.client))
    for label, parity in rows:
        table.add_row(
            label,
            f"{parity.max_abs_logit_diff:.2e}",
            f"{parity.mean_kl:.2e}",
            f"{parity.max_kl:.2e}",
            f"{parity.greedy_agree}/{parity.n_prompts}",
            f"{parity.tolerance:g}",
        )
    return table


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, for the model card (``circuitlab`` and its arguments)."""
    import shlex

    return shlex.join(["circuitlab", *getattr(args, "argv", [])])


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import load_model, out
    from circuitlab.export import ExportOptions, export
    from circuitlab.export.adapter import export_adapter

    # Everything that can fail without the model fails before it loads.
    interventions, destination = preflight(args, settings, args.out, args.force)
    prompts, scorecard = _prompts(args.prompts), _scorecard(args.scorecard)
    model = load_model(args.model, settings)
    options = ExportOptions(
        prompts=prompts,
        chat=model.facts.has_chat_template and not args.raw,
        tolerance=args.tolerance,
        force=args.force,
        seed=settings.seed,
        command=_command_line(args),
        progress=True,
        max_shard_size=args.max_shard_size,
        client=args.client,
    )
    write = export_adapter if args.format == "adapter" else export
    result = write(model, interventions, destination, options, scorecard=scorecard)
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
    p.add_argument(
        "--format",
        choices=("merged", "adapter"),
        default="merged",
        help="merged: a full HF model with the edits folded in; adapter: an exact PEFT LoRA "
        "adapter for the unedited model (needs peft) (default: merged)",
    )
    p.add_argument(
        "--no-client-check",
        dest="client",
        action="store_false",
        help="adapter: skip loading it with peft on the base model in a separate process "
        "(that check loads the base a second time)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace DIR if it is an earlier export (or empty); other folders are never replaced",
    )
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
