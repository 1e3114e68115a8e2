"""``circuitlab sae train|features|edit|info``: sparse autoencoders and refusal features.

* ``train MODEL --layer L``: answer the train prompts, collect every non-sink token's
  residual at ``blocks.L.hook_resid_pre``, train a TopK SAE, measure it on the val split's
  prompts and answers, save it in SAELens's layout (``cfg.json`` + weights).
* ``features MODEL --sae DIR``: rank latents by harmful-minus-harmless activation (train
  split) and by attribution, AUROC on the test split, top prompts; a table, JSON and a
  report page in the SAE folder.
* ``edit MODEL --sae DIR --features 3,17``: write the feature ablation (foldable: export
  it with ``circuitlab export``) or, with ``--clamp V``, the inference-only clamp.
* ``info SAE``: an SAE folder's or hub id's facts.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rich.table import Table

from circuitlab.config import Settings


def register(command) -> None:
    p = command("sae", _run, "Train SAEs, find refusal features, edit them (SAELens format).")
    p.add_argument("action", choices=["train", "features", "edit", "info"])
    p.add_argument("source", help="the model (train, features, edit) or the SAE (info)")
    p.add_argument("--sae", metavar="DIR|HUB", help="features, edit: SAE folder or hub id")
    p.add_argument("--layer", type=int, default=None, help="train: block (default 3/4 depth)")
    p.add_argument("--harmful", default="advbench", metavar="SRC", help="harmful prompt source")
    p.add_argument("--harmless", default="harmless", metavar="SRC", help="harmless prompt source")
    p.add_argument("--n", type=int, default=200, help="train: prompts per side; features: 128")
    p.add_argument("--expansion", type=int, default=8, help="train: latents per d_model")
    p.add_argument("--k", type=int, default=32, help="train: active latents per token")
    p.add_argument("--epochs", type=int, default=10, help="train: passes over the tokens")
    p.add_argument("--top", type=int, default=16, help="features: latents listed")
    p.add_argument("--features", default="", help="edit: latents, e.g. 3,17,40")
    p.add_argument("--clamp", type=float, default=None, help="edit: clamp to this value")
    p.add_argument("--out", default=None, metavar="PATH", help="train: folder; edit: JSON file")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name).strip("-")


def _splits(args: argparse.Namespace, settings: Settings):
    """(harmful, harmless) train / val / test splits by the one split policy
    (:mod:`circuitlab.prompt_data`; JailbreakBench and StrongREJECT held out)."""
    from circuitlab.prompt_data import SPLIT_SEED, side_prompts
    from circuitlab.prompts import Splits

    sides = (side_prompts(args.harmful, True), side_prompts(args.harmless, False))
    return tuple(Splits(s.train, s.search, s.split("test"), SPLIT_SEED) for s in sides)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import load_model, out
    from circuitlab.sae import TrainConfig, fit_sae, sae_quality, token_activations, with_answers

    model = load_model(args.source, settings)
    layer = args.layer if args.layer is not None else round(0.75 * (model.n_layers - 1))
    harmful, harmless = _splits(args, settings)
    prompts = [*harmful.train.prompts[: args.n], *harmless.train.prompts[: args.n]]
    config = TrainConfig(expansion=args.expansion, k=args.k, epochs=args.epochs, seed=settings.seed)
    options = {"batch_size": settings.batch_size, "cache_dir": settings.cache_dir}
    result = fit_sae(model, prompts, layer, config, max_new_tokens=settings.max_new_tokens,
                     progress=True, **options)  # fmt: skip
    held = [*harmful.val.prompts[:32], *harmless.val.prompts[:32]]
    texts = with_answers(model, held, max_new_tokens=settings.max_new_tokens, **options)
    acts = token_activations(model, texts, result.sae.hook_name, **options)
    quality = sae_quality(model, result.sae, texts, acts, result.mean).as_dict()
    folder = Path(args.out or Path(settings.cache_dir) / "sae" / f"{_slug(args.source)}-L{layer}")
    result.sae.save(folder)
    record = {"n_tokens": result.n_tokens, "seconds": result.seconds, "epoch_fvu": result.losses,
              "quality": quality, "mean": result.mean.tolist()}  # fmt: skip
    (folder / "training.json").write_text(json.dumps(record) + "\n")
    table = Table(title=f"{folder}: TopK SAE, {result.n_tokens} tokens, {result.seconds:.0f} s")
    table.add_column("held-out figure")
    table.add_column("value", justify="right")
    for key in ("fvu", "l0", "dead", "dense", "ce_clean", "ce_sae", "ce_increase", "ce_recovered"):
        table.add_row(key, f"{quality[key]:.4g}")
    out.print(table)
    return 0


def _features(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from circuitlab.circuits import RefusalTokenMetric
    from circuitlab.commands._common import load_model, out
    from circuitlab.report import sae_report
    from circuitlab.sae import (
        feature_auroc,
        load_sae,
        post_instruction_features,
        rank_by_attribution,
        rank_by_difference,
        top_prompts,
    )  # fmt: skip

    model, sae = load_model(args.source, settings), load_sae(args.sae)
    n = min(args.n, 128)
    harmful, harmless = _splits(args, settings)
    opts = {"batch_size": settings.batch_size, "cache_dir": settings.cache_dir}
    train_h = post_instruction_features(model, sae, harmful.train.prompts[:n], **opts)
    train_s = post_instruction_features(model, sae, harmless.train.prompts[:n], **opts)
    test_h = post_instruction_features(model, sae, harmful.test.prompts[:n], **opts)
    test_s = post_instruction_features(model, sae, harmless.test.prompts[:n], **opts)
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    rankings = {
        "difference": rank_by_difference(train_h, train_s),
        "attribution": rank_by_attribution(model, sae, harmful.val.prompts[:32], metric),
    }
    pool = [*harmful.train.prompts[:n], *harmless.train.prompts[:n]]
    pool_acts = torch.cat([train_h, train_s])
    found = {"rankings": {}}
    for method, ranking in rankings.items():
        table = Table(title=f"latents ranked by {method}")
        for column in ("latent", method, "AUROC (test)", "top prompt"):
            table.add_column(column, justify="left" if column == "top prompt" else "right")
        rows = []
        for latent, score in ranking.as_rows(args.top):
            auroc = feature_auroc(test_h[:, latent], test_s[:, latent])
            prompts = top_prompts(pool_acts, pool, latent, 5)
            rows.append({"latent": latent, "score": score, "auroc_test": auroc,
                         "top_prompts": prompts})  # fmt: skip
            table.add_row(str(latent), f"{score:.4g}", f"{auroc:.3f}", prompts[0][0][:60])
        found["rankings"][method] = rows
        out.print(table)
    folder = Path(args.sae) if Path(args.sae).is_dir() else Path(settings.cache_dir) / "sae"
    result = {"model": args.source, "layer": sae.layer, "sae_hash": sae.hash, "features": found}
    (folder / "features.json").write_text(json.dumps(result, indent=1) + "\n")
    from circuitlab.report import command_line

    page = sae_report(result, rankings, command=command_line(args)).write(folder / "report.html")
    out.print(f"written: {folder / 'features.json'}, {page}")
    return 0


def _edit(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import load_model, out
    from circuitlab.errors import CircuitlabError
    from circuitlab.hooks import apply
    from circuitlab.interventions import save_intervention
    from circuitlab.sae import feature_ablation, feature_clamp, load_sae

    if not (args.sae and args.features and args.out):
        raise CircuitlabError("sae edit needs --sae, --features and --out")
    sae = load_sae(args.sae)
    features = [int(f) for f in args.features.split(",") if f.strip()]
    if args.clamp is None:
        edit = feature_ablation(sae, features)
    else:
        edit = feature_clamp(sae, args.sae, features, args.clamp)
    model = load_model(args.source, settings)
    with apply(model, edit):  # builds the hooks: checks sizes, hook point and features
        pass
    path = save_intervention(edit, args.out)
    kind = "foldable" if edit.foldable else "inference only"
    out.print(f"written: {path} ({type(edit).__name__}, {kind}, latents {features})")
    return 0


def _info(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import out
    from circuitlab.sae import load_sae

    sae = load_sae(args.source)
    table = Table(title=str(args.source), show_header=False)
    table.add_column("fact", style="bold")
    table.add_column("value")
    facts = {"architecture": sae.architecture, "hook": sae.hook_name, "d_in": sae.d_in,
             "d_sae": sae.d_sae, "k": sae.k, "model": sae.model_name, "hash": sae.hash}  # fmt: skip
    for key, value in facts.items():
        table.add_row(key, str(value))
    out.print(table)
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.errors import CircuitlabError

    if args.action == "features" and not args.sae:
        raise CircuitlabError(f"sae {args.action} needs --sae DIR|HUB")
    action = {"train": _train, "features": _features, "edit": _edit, "info": _info}
    return action[args.action](args, settings)
