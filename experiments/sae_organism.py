"""Refusal as SAE features on the organism: train, measure, rank, ablate, compare.

1. Train a TopK SAE on the residual stream at ``--layer`` (``hook_resid_pre``): the
   organism's own greedy answers to its train prompts (harmful and harmless train splits
   and our extra sets), every non-sink token (timed: it must stay under 20 minutes here).
2. Quality on held-out text (the val splits with the organism's answers): FVU, L0, dead and
   dense latents, next-token CE with the reconstruction spliced in (and mean-ablated).
3. Refusal features: latents ranked by harmful-minus-harmless mean activation at the
   post-instruction tokens (train splits) and by attribution (gradient x activation on the
   refusal-opening log-probability, harmful val prompts); each top feature's AUROC
   separating the harmful from the harmless *test* split, its top-activating train prompts;
   the difference-of-means projection's AUROC at the same layer for reference.
4. Edits on JailbreakBench and the harmless test split (refusal rates, Wilson 95 %
   intervals, first-token and 4-token KL against the organism on harmless test prompts):
   ablating the decoder directions of the top-k refusal features (``SubspaceAblation``,
   every writer) vs the difference-of-means direction of the same layer (``DirectionalAblation``,
   every writer; the attention sinks' massive direction removed, as ``testbed classic`` does),
   and clamping the top-k features to 0 (``FeatureClamp``, inference only).

Writes ``CACHE/sae/experiment-<model>-L<layer>.json``, figures and ``report.html`` beside it,
and the SAE folder (SAELens layout) under ``CACHE/sae/<model>-L<layer>/``.

Usage: .venv/bin/python experiments/sae_organism.py [MODEL] [--layer 25] [--small]
(``--small``: tiny sizes, for the tests.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from circuitlab.activations import collect_activations, massive_directions, select_position
from circuitlab.circuits import RefusalTokenMetric
from circuitlab.directions import extract_diff_means, without_massive
from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.scorecard import score_model
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionalAblation, DirectionRef, SubspaceAblation
from circuitlab.models import ModelSpec
from circuitlab.report import sae_report
from circuitlab.sae import (
    TrainConfig,
    feature_ablation,
    feature_auroc,
    feature_clamp,
    feature_directions,
    fit_sae,
    load_sae,
    post_instruction_features,
    rank_by_attribution,
    rank_by_difference,
    reconstruction_stats,
    sae_quality,
    token_activations,
    top_prompts,
    train_prompts,
    with_answers,
)
from circuitlab.testbed import testbed_data

FULL = dict(n_train=600, n_heldout=48, n_rank=128, n_attr=32, n_test=98, n_kl=32, n_jbb=100,
            n_harmless=64, epochs=10, expansion=8, k=32)  # fmt: skip
SMALL = dict(n_train=24, n_heldout=6, n_rank=8, n_attr=4, n_test=8, n_kl=4, n_jbb=6,
             n_harmless=6, epochs=2, expansion=2, k=8)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="smollm2-135m-refusal")
    p.add_argument("--layer", type=int, default=25, help="the refusal layer (testbed classic)")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--out", default=None, help="output folder (default CACHE/sae)")
    p.add_argument("--small", action="store_true", help="tiny sizes (tests)")
    p.add_argument("--top", type=int, nargs="+", default=[1, 4, 16], help="k of top-k edits")
    p.add_argument("--ranking", choices=["difference", "attribution"], default="difference")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--retrain", action="store_true", help="train even if the SAE folder exists")
    return p.parse_args(argv)


def train(model, data, args, sizes, folder: Path) -> dict:
    if folder.is_dir() and not args.retrain:
        sae = load_sae(folder)
        return {"sae": sae, "record": json.loads((folder / "training.json").read_text())}
    config = TrainConfig(expansion=sizes["expansion"], k=sizes["k"], epochs=sizes["epochs"])
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit_sae(
        model, train_prompts(data, sizes["n_train"]), args.layer, config,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, cache_dir=args.cache_dir,
    )  # fmt: skip
    record = {
        "wall_seconds_total": time.perf_counter() - wall,
        "cpu_seconds_total": time.process_time() - cpu,
        "train_loop_seconds": result.seconds,
        "steps": result.steps,
        "n_tokens": result.n_tokens,
        "epoch_fvu": result.losses,
        "config": result.sae.meta["circuitlab"]["train"],
        "mean": result.mean.tolist(),
    }
    result.sae.save(folder)
    (folder / "training.json").write_text(json.dumps(record) + "\n")
    return {"sae": result.sae, "record": record}


def quality(model, sae, data, args, sizes, mean) -> dict:
    prompts = [*data.harmful_val.prompts[: sizes["n_heldout"]],
               *data.harmless_val.prompts[: sizes["n_heldout"]]]  # fmt: skip
    options = {"batch_size": args.batch_size, "cache_dir": args.cache_dir}
    texts = with_answers(model, prompts, max_new_tokens=args.max_new_tokens, **options)
    held = token_activations(model, texts, sae.hook_name, **options)
    figures = sae_quality(model, sae, texts, held, mean, batch_size=8).as_dict()
    # Latent usage on the training tokens too (both are read back from the cache).
    train_texts = with_answers(model, train_prompts(data, sizes["n_train"]),
                               max_new_tokens=args.max_new_tokens, **options)  # fmt: skip
    train_acts = token_activations(model, train_texts, sae.hook_name, **options)
    figures["on_training_tokens"] = reconstruction_stats(sae, train_acts)
    return figures


def diff_means(model, data, args, sizes):
    n = sizes["n_rank"]
    harmful, harmless = (
        select_position(
            collect_activations(model, s.prompts[:n], layers=None, cache_dir=args.cache_dir)
        )
        for s in (data.harmful_train, data.harmless_train)
    )
    ds = extract_diff_means(harmful, harmless)
    found = massive_directions(model, data.harmless_train.prompts)
    return without_massive(ds, found), found


def features(model, sae, data, args, sizes, ds) -> dict:
    n, opts = sizes["n_rank"], {"batch_size": args.batch_size, "cache_dir": args.cache_dir}
    train_h = post_instruction_features(model, sae, data.harmful_train.prompts[:n], **opts)
    train_s = post_instruction_features(model, sae, data.harmless_train.prompts[:n], **opts)
    by_diff = rank_by_difference(train_h, train_s)
    metric = RefusalTokenMetric.from_openings(model.tokenizer)
    started = time.perf_counter()
    by_attr = rank_by_attribution(
        model, sae, data.harmful_val.prompts[: sizes["n_attr"]], metric, batch_size=8
    )
    attr_seconds = time.perf_counter() - started
    nt = sizes["n_test"]
    test_h = post_instruction_features(model, sae, data.harmful_test.prompts[:nt], **opts)
    test_s = post_instruction_features(model, sae, data.harmless_test.prompts[:nt], **opts)
    pool = [*data.harmful_train.prompts[:n], *data.harmless_train.prompts[:n]]
    pool_acts = torch.cat([train_h, train_s])
    rows = {}
    for ranking in (by_diff, by_attr):
        rows[ranking.method] = [
            {
                "latent": latent, "score": score,
                "auroc_test": feature_auroc(test_h[:, latent], test_s[:, latent]),
                "harmful_test_mean": float(test_h[:, latent].mean()),
                "harmless_test_mean": float(test_s[:, latent].mean()),
                "top_prompts": top_prompts(pool_acts, pool, latent, 5),
            }
            for latent, score in ranking.as_rows(16)
        ]  # fmt: skip
    # The difference-of-means projection at the same layer and positions, for reference.
    layer, direction = sae.layer, ds.direction(sae.layer).float()
    proj = [
        select_position(
            collect_activations(model, s.prompts[:nt], positions="post_instruction",
                                layers=[layer], cache_dir=args.cache_dir), "mean"
        )[:, 0] @ direction
        for s in (data.harmful_test, data.harmless_test)
    ]  # fmt: skip
    top_diff, top_attr = by_diff.top(16), by_attr.top(16)
    return {
        "rankings": rows,
        "overlap_top16": len(set(top_diff) & set(top_attr)),
        "attribution_seconds": attr_seconds,
        "diff_means_auroc_test": feature_auroc(*proj),
        "n_test": [len(test_h), len(test_s)],
        "order": {"difference": top_diff, "attribution": top_attr},
        "_ranking": {"difference": by_diff, "attribution": by_attr},
    }


def edits(model, sae, folder, data, args, sizes, ds, massive, order) -> list[dict]:
    judge = MarkerJudge()
    harmless_kl = list(data.harmless_test.prompts[: sizes["n_kl"]])
    kl = KLBaseline.compute(model, harmless_kl, k=4, batch_size=args.batch_size)
    common = {
        "harmful": list(data.jailbreakbench.prompts[: sizes["n_jbb"]]),
        "harmless": list(data.harmless_test.prompts[: sizes["n_harmless"]]),
        "judge": judge, "split": "jailbreakbench", "kl_baseline": kl,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
    }  # fmt: skip
    arms = [("organism", None, "")]
    arms.append(("diff-means", DirectionalAblation(DirectionRef.inline(ds), index=float(sae.layer)),
                 "DirectionalAblation, every writer"))  # fmt: skip
    for k in args.top:
        arms.append((f"sae top-{k} ablated", feature_ablation(sae, order[:k]),
                     "SubspaceAblation of the decoder rows, every writer"))  # fmt: skip
    k = args.top[min(1, len(args.top) - 1)]
    clean = without_massive(feature_directions(sae, order[:k]), massive)
    arms.append((f"sae top-{k} ablated, sinks' direction removed",
                 SubspaceAblation(DirectionRef.inline(clean), layer=0),
                 "SubspaceAblation of the decoder rows minus the massive direction"))  # fmt: skip
    arms.append((f"sae top-{k} clamped to 0", feature_clamp(sae, folder, order[:k], 0.0),
                 "FeatureClamp at the SAE's hook (inference only)"))  # fmt: skip
    rows = []
    for name, iv, what in arms:
        started = time.perf_counter()
        with apply(model, *([] if iv is None else [iv])):
            card, _ = score_model(model, name, **common)
        row = json.loads(card.to_json())
        row.update({"arm": name, "intervention": what, "seconds": time.perf_counter() - started})
        rows.append(row)
        d = row["derived"]
        print(f"{name:28} JBB {d['refusal_rate']:.1%} {d['refusal_ci']}, harmless "
              f"{d['over_refusal_rate']:.1%}, KL {row['kl_first']:.3f}/{row['kl_k']:.3f}",
              flush=True)  # fmt: skip
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = SMALL if args.small else FULL
    model = HookedModel.load(ModelSpec(args.model, cache_dir=Path(args.cache_dir)))
    data = testbed_data()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.model).name).strip("-")
    out = Path(args.out or Path(args.cache_dir) / "sae")
    folder = out / f"{slug}-L{args.layer}"
    started = time.perf_counter()
    trained = train(model, data, args, sizes, folder)
    sae, record = trained["sae"], trained["record"]
    print(f"trained: {record['n_tokens']} tokens, {record['wall_seconds_total']:.0f} s", flush=True)
    qual = quality(model, sae, data, args, sizes, torch.tensor(record["mean"]))
    print(f"quality: {qual}", flush=True)
    ds, massive = diff_means(model, data, args, sizes)
    found = features(model, sae, data, args, sizes, ds)
    rows = feature_directions(sae, found["order"][args.ranking][:16]).directions[0]
    cosines = (rows.double() @ massive.double().T).abs()  # [16, found]; no sinks: none
    found["massive_cosine_top16"] = cosines.max(-1).values.tolist() if len(massive) else []
    rankings = found.pop("_ranking")
    order = found["order"][args.ranking]
    rows = edits(model, sae, folder, data, args, sizes, ds, massive, order)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    result = {
        "model": args.model, "layer": args.layer, "sae": str(folder), "sae_hash": sae.hash,
        "args": vars(args), "sizes": sizes, "torch_threads": torch.get_num_threads(),
        "training": {k: v for k, v in record.items() if k != "mean"}, "quality": qual,
        "features": found, "edits": rows, "seconds": time.perf_counter() - started,
        "command": shlex.join(["python", "experiments/sae_organism.py", *argv_list]),
    }  # fmt: skip
    path = out / f"experiment-{slug}-L{args.layer}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    report = sae_report(result, rankings, command=result["command"])
    report.write(out / f"report-{slug}-L{args.layer}.html")
    print(f"written: {path}")
    return result


if __name__ == "__main__":
    main()
