"""What several commands share: the consoles, loading a model from a source, prompt sets,
judges and tables. The ``cli`` module sits above the commands and imports these too; no
command imports ``cli`` or another command.

Library imports stay inside the functions: ``circuitlab --help`` and every command's
argument errors must answer without loading torch or transformers.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from circuitlab import checks
from circuitlab.config import Settings
from circuitlab.errors import ConfigError, PromptError

__all__ = [
    "DEFAULT_MARGIN",
    "search_prompts",
    "search_option_flags",
    "check_search_options",
    "check_capability_n",
    "check_export_destination",
    "check_interventions",
    "check_prompts",
    "err",
    "facts_table",
    "front_table",
    "last_token_activations",
    "load_model",
    "model_shape",
    "out",
    "prompt_sets",
    "quiet_optuna",
    "report_path",
    "search_judges",
    "slug",
    "source_config",
]

out = Console()
err = Console(stderr=True)

# Held out of every other harmful source: evaluation sets never reach extraction.


# -------------------------------------------------------------------------------- models
def source_config(source: str, settings: Settings) -> tuple[str, dict | None]:
    """Where the model is and its ``config.json``, read without loading weights (whose
    files are checked for truncation); a GGUF file or preset is converted first (once,
    cached). The config is None for hub ids."""
    from circuitlab.models import ModelSpec
    from circuitlab.models.loading import resolve_source

    spec = ModelSpec(source, cache_dir=settings.cache_dir)
    location = resolve_source(spec, progress=True).location
    return location, checks.model_config(location)


def model_shape(config: dict | None) -> tuple[int | None, int | None, int | None]:
    """(layers, d_model, query heads) from an HF config, None where it does not say."""
    if not config:
        return None, None, None
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    width = config.get("hidden_size", config.get("n_embd"))
    return layers, width, config.get("num_attention_heads", config.get("n_head"))


def check_interventions(paths: Sequence[str], source: str, settings: Settings) -> list:
    """Interventions read from files and checked against the model's config (direction
    folders present, widths, layers and heads in range), before the model loads."""
    from circuitlab.interventions import check_fits, load_interventions

    interventions = [iv for path in paths for iv in load_interventions(path)]
    if interventions:
        check_fits(interventions, *model_shape(source_config(source, settings)[1]))
    return interventions


def check_prompts(prompts: Sequence[str]) -> None:
    """Prompts given on the command line: none empty."""
    if any(not p.strip() for p in prompts):
        raise PromptError("empty prompt: every PROMPT needs some text")


def load_model(source: str, settings: Settings):
    from circuitlab.engine import HookedModel
    from circuitlab.models import ModelSpec

    source_config(source, settings)  # a missing, malformed or truncated model: one line
    spec = ModelSpec.from_settings(source, settings)
    with err.status(f"loading {source}…"):
        kwargs = settings.chat_template_kwargs
        return HookedModel.load(
            spec, system_prompt=settings.system_prompt, chat_template=settings.chat_template,
            chat_template_kwargs=json.loads(kwargs) if kwargs else None,
        )  # fmt: skip


def facts_table(model) -> Table:
    table = Table(title=f"{model.resolved.location}", show_header=False)
    table.add_column("fact", style="bold")
    table.add_column("value")
    for key, value in model.facts.as_dict().items():
        table.add_row(key, str(value))
    table.add_row("source", model.resolved.kind)
    return table


def slug(model: str) -> str:
    """A model source as a file-name fragment."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"


# ------------------------------------------------------------------------------- prompts
def prompt_sets(args: argparse.Namespace, settings: Settings):
    """The train split of each side, by the one split policy: never a search or test
    prompt, whatever ``--seed`` says (:mod:`circuitlab.prompt_data`)."""
    from circuitlab.prompt_data import side_prompts

    sets = []
    for source, harmful in ((args.harmful, True), (args.harmless, False)):
        train = side_prompts(source, harmful).train
        sets.append(train.take(min(args.n, len(train))))
    return tuple(sets)


def last_token_activations(model, sets, settings: Settings, progress: bool = False) -> list:
    """Cached last-token residuals [prompt, layer, d_model] of each prompt set, in order."""
    from circuitlab.activations import collect_activations, select_position

    return [
        select_position(
            collect_activations(
                model,
                s.prompts,
                batch_size=settings.batch_size,
                chat=model.facts.has_chat_template,
                cache_dir=settings.cache_dir,
                progress=progress,
            )
        )
        for s in sets
    ]


# -------------------------------------------------------------------------------- search
def check_capability_n(n: int, seed: int) -> None:
    """``--capability-n`` checked now, not after a search: negative, or more questions than
    the packaged MMLU holds, is one clear error."""
    from circuitlab.evaluate.capability import load_mmlu

    if n < 0:
        raise ConfigError(f"--capability-n must be 0 (off) or more, got {n}")
    if n:
        load_mmlu(n, seed)


# The choice rule's margin when --margin is not given (search.front.DEFAULT_MARGIN, which a
# test holds this to: importing it here would load torch for --help).
DEFAULT_MARGIN = 0.05


def search_option_flags(p: argparse.ArgumentParser) -> None:
    """Search settings shared by ``search``, ``abliterate`` and ``demo``: per-layer
    directions and the choice rule's margin or refusal target."""
    p.add_argument(
        "--per-layer",
        action=argparse.BooleanOptionalAction,
        default=True,  # SearchSpace.per_layer (not imported: the CLI parses before torch loads)
        help="also search per-layer directions (each layer's writers remove that layer's own "
        "direction) besides one direction for every layer (default: on)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        metavar="RATE",
        help="choice rule: the least KL among points whose refusal rate is at most the fewest "
        f"refusals under the KL budget plus this (default: {DEFAULT_MARGIN})",
    )
    p.add_argument(
        "--refusal-target",
        type=float,
        metavar="RATE",
        help="choice rule instead: the least KL whose refusal rate (0 to 1) is at most this "
        "(none reached: the fewest refusals)",
    )


def check_search_options(args: argparse.Namespace) -> None:
    """The shared search settings' values, before the model loads."""
    checks.at_least("--margin", args.margin, 0.0)
    target = args.refusal_target
    checks.finite("--refusal-target", target)
    if target is not None and not 0.0 <= target <= 1.0:
        raise ConfigError(f"--refusal-target must be between 0 and 1 (a rate), got {target}")


def check_export_destination(out, model: str, settings: Settings, force: bool) -> None:
    """An export folder that may be written (see ``checks.export_destination``), checked
    before the search: the source model's folder when ``model`` names a local one."""
    source = Path(model).expanduser()
    checks.export_destination(out, source if source.exists() else None, force)


def search_judges(settings: Settings):
    """The search trials' judge and the final scorecard's (they differ when the NLI judge
    is on for the final evaluation only)."""
    from circuitlab.evaluate.factory import JudgeOptions, build_judge

    options = JudgeOptions.from_settings(settings)
    common = {"cache_dir": settings.cache_dir, "device": settings.device}
    return build_judge(options, for_search=True, **common), build_judge(options, **common)


def front_table(front, chosen=None, title: str = "Pareto front") -> Table:
    """The front, one row per trial; the chosen one marked."""
    from circuitlab.report.tables import front_rows

    table = Table(title=title, caption="refusals on the search split; KL first token, nats")
    columns, rows = front_rows(front, chosen)
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def report_path(study: str, storage: str | None, cache_dir: str | Path) -> Path:
    """``report.html`` in the study's folder (beside its saved directions), not in the
    export folder, whose manifest lists every file it holds."""
    from circuitlab.search import open_store

    return open_store(study, storage, cache_dir).assets_dir / "report.html"


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO; the progress bar and tables say it better."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_prompts(args: argparse.Namespace, n_test: int = 0):
    """Train, search and (sealed) test prompts by the one split policy: a bad source fails
    here, before the model loads; the test split is only read after the search."""
    from circuitlab.prompt_data import side_prompts
    from circuitlab.search import SearchPrompts

    harmful = side_prompts(args.harmful, True, getattr(args, "harmful_test", None))
    harmless = side_prompts(args.harmless, False, getattr(args, "harmless_test", None))
    return SearchPrompts(
        harmful.train.prompts[: args.n_train],
        harmless.train.prompts[: args.n_train],
        harmful.search.prompts[: args.n_search],
        harmless.search.prompts[: args.n_kl],
        harmful.test(n_test),  # type: ignore[arg-type]  # sealed: a Sequence, read on use
        harmless.test(n_test),  # type: ignore[arg-type]
    )
