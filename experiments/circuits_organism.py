"""Refusal circuits on a model: attribution speed and accuracy, head- vs layer-level ablation.

1. Refusal direction: difference of means at the last prompt token of ``--n-direction``
   AdvBench-train vs harmless-train prompts (the testbed's splits), layer ``--layer``
   (default: about three quarters of the depth, e.g. 22 of 30).
2. Circuit (harmful val prompts paired with harmless val prompts, post-instruction
   positions, refusal log-odds metric by default): exact activation patching of every query
   head, KV head, attention block and MLP (or read back with ``--exact``), then attribution
   plain and with integrated gradients (``--ig-steps``), each timed in CPU seconds; Spearman
   of each estimate on the exact top 20 heads (``scipy.stats.spearmanr``), top-20 overlap,
   top-1 match, Spearman over every KV head, MLP and attention block; the sampled agreement
   checks (heads and MLPs) that ``discover`` runs; the estimates refined (their top
   ``--refine`` heads patched exactly), including ``discover``'s default (integrated
   gradients with plain attribution as a second screen). Then joint patching of groups from
   the exact ranking: top heads against whole attention layers against MLPs.
3. Edits, judged on held-out prompts (harmful test split: refusal rate by greedy generation
   and the marker judge; harmless test split: first-token and 4-token KL from the unedited
   model): head-level ``HeadAblation`` of the direction from the circuit's top-k heads for
   several k, and layer-level ``DirectionalAblation`` (every writer, all layers) at several
   calibrations. Each head-level edit is compared with the KL of the weakest layer-level
   edit that reaches the same refusal rate, interpolated along calibration ("matched").

Writes ``cache/circuits/experiment-<model>.json`` with every figure, the circuit files and
heat maps next to it, and prints a summary.

Usage: .venv/bin/python experiments/circuits_organism.py [MODEL] [--n 16] [--n-eval 32]
MODEL defaults to the refusal organism ``smollm2-135m-refusal``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from circuitlab.activations import collect_activations, select_position
from circuitlab.circuits import (
    RefusalCircuit,
    RefusalTokenMetric,
    activation_patching,
    attribution_patching,
    check_agreement,
    head_ablation,
    joint_patching,
    localisation_groups,
    plot_head_scores,
    rank_agreement,
    refine,
)
from circuitlab.directions import extract_diff_means
from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.refusals import refusal_counts
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionalAblation, DirectionRef, LayerKernel
from circuitlab.models import ModelSpec
from circuitlab.testbed import testbed_data


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="smollm2-135m-refusal")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--n", type=int, default=16, help="harmful/harmless pairs for patching")
    p.add_argument("--n-direction", type=int, default=64, help="prompts per side, direction")
    p.add_argument("--n-eval", type=int, default=32, help="held-out prompts per side, edits")
    p.add_argument("--layer", type=int, default=None, help="layer of the refusal direction")
    p.add_argument("--top", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    p.add_argument("--calibrations", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    p.add_argument("--metric", choices=["logprob", "logodds"], default="logodds")
    p.add_argument("--ig-steps", type=int, default=4, help="integrated-gradients steps")
    p.add_argument("--check-sample", type=int, default=16, help="heads in the sampled check")
    p.add_argument("--refine", type=int, default=40, help="attribution's top heads re-scored")
    p.add_argument("--no-edits", action="store_true", help="stop after discovery")
    p.add_argument("--exact", default=None, help="reuse this exact (activation) circuit file")
    p.add_argument(
        "--edits-only", action="store_true", help="only the edits, from the --exact circuit"
    )
    p.add_argument(
        "--no-plain-refine",
        action="store_true",
        help="skip re-scoring plain attribution's leaders alone (discover's default is kept)",
    )
    p.add_argument("--out-dir", default=None, help="where results go (default CACHE/circuits)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def direction(model: HookedModel, data, n: int, cache_dir: str):
    harmful, harmless = (
        select_position(collect_activations(model, s.take(n).prompts, cache_dir=cache_dir))
        for s in (data.harmful_train, data.harmless_train)
    )
    return extract_diff_means(harmful, harmless)


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def evaluate(model, edit, harmful, baseline: KLBaseline, args) -> dict:
    """Refusal rate on held-out harmful prompts and KL on harmless ones, under ``edit``."""
    edits = () if edit is None else (edit,)
    with apply(model, *edits):
        judged = refusal_counts(
            model, {"harmful": harmful}, MarkerJudge(), args.max_new_tokens,
            batch_size=args.batch_size,
        )  # fmt: skip
        kl = baseline.score(model, batch_size=args.batch_size)
    return {
        "refusal_rate": judged["harmful"].refused.rate,
        "refused": judged["harmful"].refused.k,
        "n": judged["harmful"].refused.n,
        "kl_first": kl.first_token,
        "kl_k": kl.k_token,
        "sample": judged["harmful"].responses[0][:120],
    }


def matched_kl(rate: float, unedited: dict, layer_rows: list[dict], key: str) -> float | None:
    """KL of the weakest layer-level ablation that brings refusals down to ``rate``.

    Walks up the calibrations (the unedited model is calibration 0) to the first at which
    the layer-level refusal rate is at most ``rate`` and interpolates linearly between it
    and the one before. None when no calibration gets that low.
    """
    points = [(0.0, unedited["refusal_rate"], 0.0)] + sorted(
        (r["calibration"], r["refusal_rate"], r[key]) for r in layer_rows
    )
    if points[0][1] <= rate:
        return 0.0
    for (_, r0, k0), (_, r1, k1) in zip(points, points[1:], strict=False):
        if r1 <= rate:
            return k0 + (r0 - rate) / (r0 - r1) * (k1 - k0)
    return None


def block_agreement(exact, estimate) -> dict:
    """Spearman of two scorings over every MLP, every attention block and both together,
    and their top-5s."""
    from scipy.stats import spearmanr

    figures = {}
    for kind, columns in (("mlp", [1]), ("attn", [0]), ("both", [0, 1])):
        ref = exact.block_effect[:, columns].flatten().tolist()
        est = estimate.block_effect[:, columns].flatten().tolist()
        figures[f"spearman_{kind}"] = float(spearmanr(ref, est).statistic)
    figures["top5_exact"] = [str(s) for s, _ in exact.ranked_blocks()[:5]]
    figures["top5_estimate"] = [str(s) for s, _ in estimate.ranked_blocks()[:5]]
    return figures


def kv_agreement(exact, estimate) -> dict:
    """Spearman over every KV head, and whether the top KV head matches."""
    from scipy.stats import spearmanr

    ref, est = exact.kv_effect.flatten().tolist(), estimate.kv_effect.flatten().tolist()
    return {
        "spearman": float(spearmanr(ref, est).statistic),
        "top1_match": exact.ranked_kv()[0][0] == estimate.ranked_kv()[0][0],
        "top3_exact": [str(g) for g, _ in exact.ranked_kv()[:3]],
    }


def agreement_figures(exact, estimate, seconds: tuple[float, float]) -> dict:
    a = rank_agreement(exact, estimate, k=20)
    extra = {}
    if estimate.block_effect is not None and exact.block_effect is not None:
        extra["blocks"] = block_agreement(exact, estimate)
    if estimate.kv_effect is not None and exact.kv_effect is not None:
        extra["kv"] = kv_agreement(exact, estimate)
    return {
        "seconds": {"wall": seconds[0], "cpu": seconds[1]},
        "spearman_top20": a.spearman,
        "spearman_p": a.p_value,
        "overlap_top20": a.overlap,
        "top1_match": a.top1_match,
        "top_heads": [str(h) for h in estimate.top(10)],
        **extra,
    }


def exact_scores(model, harmful, harmless, metric, args, out: Path, slug: str, patch: dict):
    """(exact scores, wall s, CPU s): computed and saved, or read back with ``--exact``."""
    if args.exact:
        circuit = RefusalCircuit.load(args.exact)
        meta = circuit.metadata
        return circuit.to_scores(), meta.get("seconds", 0.0), meta.get("cpu", 0.0)
    exact, wall, cpu = timed(
        activation_patching, model, harmful, harmless, metric, progress=True, **patch
    )
    RefusalCircuit.from_scores(
        exact, model.facts, args.model, seconds=round(wall, 2), cpu=round(cpu, 2),
        n_pairs=args.n,
    ).save(out.parent / f"{slug}-activation.json")  # fmt: skip
    return exact, wall, cpu


def _refined_from_exact(estimate, exact, top: int):
    """What ``refine`` returns, read off a full exact scoring (patching is deterministic, so
    the candidates' exact values are the same); no cost is measured."""
    effect = estimate.effect.clone()
    for head in estimate.top(min(top, exact.effect.numel()), by="abs"):
        effect[head.layer, head.head] = exact.effect[head.layer, head.head]
    return replace(estimate, method=f"{estimate.method}+exact", effect=effect)


def discover(model, data, args, out: Path, slug: str) -> dict:
    harmful = list(data.harmful_val.take(args.n).prompts)
    harmless = list(data.harmless_val.take(args.n).prompts)
    metric = RefusalTokenMetric.from_openings(model.tokenizer, log_odds=args.metric == "logodds")
    options = {"batch_size": args.batch_size, "chat": model.facts.has_chat_template}
    patch = {**options, "blocks": True}
    exact, exact_wall, exact_cpu = exact_scores(
        model, harmful, harmless, metric, args, out, slug, patch
    )
    fast, fast_wall, fast_cpu = timed(
        attribution_patching, model, harmful, harmless, metric, progress=True, **patch
    )
    ig, ig_wall, ig_cpu = timed(
        attribution_patching, model, harmful, harmless, metric, ig_steps=args.ig_steps,
        progress=True, **patch,
    )  # fmt: skip
    checks = {}
    for name, estimate in (("attribution", fast), ("integrated_gradients", ig)):
        for kind in ("heads", "mlp"):
            check, wall, cpu = timed(
                check_agreement, model, harmful, harmless, metric, estimate, kind=kind,
                sample=args.check_sample, **options,
            )  # fmt: skip
            checks[f"{name}/{kind}"] = {**check.to_dict(), "cpu": cpu}
    if args.no_plain_refine:
        refined, refine_wall, refine_cpu = _refined_from_exact(fast, exact, args.refine), 0.0, 0.0
    else:
        refined, refine_wall, refine_cpu = timed(
            refine, model, harmful, harmless, metric, fast, top=args.refine, progress=True,
            **options,
        )  # fmt: skip
    # What ``discover`` does by default: integrated gradients, with plain attribution as a
    # second screen, and the union of their leaders re-scored exactly.
    ig_refined, ig_refine_wall, ig_refine_cpu = timed(
        refine, model, harmful, harmless, metric, ig, top=args.refine, screens=[fast],
        progress=True, **options,
    )  # fmt: skip
    groups = localisation_groups(exact)
    joint, joint_wall, joint_cpu = timed(
        joint_patching, model, harmful, harmless, metric, groups, progress=True, **options
    )
    circuits = {}
    for scores, wall, cpu in (
        (fast, fast_wall, fast_cpu),
        (ig, ig_wall, ig_cpu),
        (refined, fast_wall + refine_wall, fast_cpu + refine_cpu),
        (ig_refined, fast_wall + ig_wall + ig_refine_wall, fast_cpu + ig_cpu + ig_refine_cpu),
        (exact, exact_wall, exact_cpu),
    ):
        circuit = RefusalCircuit.from_scores(
            scores, model.facts, args.model, seconds=round(wall, 2), cpu=round(cpu, 2),
            n_pairs=args.n,
        )  # fmt: skip
        stem = out.parent / f"{slug}-{scores.method}"
        circuit.save(stem.with_suffix(".json"))
        plot_head_scores(scores, stem.with_suffix(".png"), title=f"{args.model}: {scores.method}")
        circuits[scores.method] = circuit
    return {
        "circuits": circuits,
        "figures": {
            "n_pairs": args.n,
            "metric": metric.name,
            "metric_clean": fast.clean,
            "metric_counterfactual": fast.counterfactual,
            "activation_seconds": {"wall": exact_wall, "cpu": exact_cpu},
            "top_heads_activation": [str(h) for h in exact.top(10)],
            "top_kv_activation": [[str(g), v] for g, v in exact.ranked_kv()[:10]],
            "blocks_activation": [[str(s), v] for s, v in exact.ranked_blocks()],
            "attribution": agreement_figures(exact, fast, (fast_wall, fast_cpu)),
            "integrated_gradients": {
                "steps": args.ig_steps,
                **agreement_figures(exact, ig, (ig_wall, ig_cpu)),
            },
            "refined": {
                "top": args.refine,
                "measured": not args.no_plain_refine,
                **agreement_figures(
                    exact, refined, (fast_wall + refine_wall, fast_cpu + refine_cpu)
                ),
            },
            "ig_refined": {
                "top": args.refine,
                "screens": ["integrated-gradients", "attribution"],
                **agreement_figures(
                    exact,
                    ig_refined,
                    (fast_wall + ig_wall + ig_refine_wall, fast_cpu + ig_cpu + ig_refine_cpu),
                ),
            },
            "sampled_checks": checks,
            "joint_patching": {
                "seconds": {"wall": joint_wall, "cpu": joint_cpu},
                "groups": [g.to_dict() for g in joint],
            },
            "speedup_cpu": exact_cpu / max(fast_cpu, 1e-9),
        },
    }


def compare_edits(model, data, ds, layer: int, circuit: RefusalCircuit, args) -> dict:
    harmful = data.harmful_test.take(min(args.n_eval, len(data.harmful_test)))
    harmless = data.harmless_test.take(min(args.n_eval, len(data.harmless_test))).prompts
    baseline = KLBaseline.compute(model, harmless, k=4, batch_size=args.batch_size)
    ref = DirectionRef.inline(ds)
    unedited = evaluate(model, None, harmful, baseline, args)
    layer_rows = []
    for c in args.calibrations:
        edit = DirectionalAblation(ref, index=float(layer), calibration=c)
        row = {"calibration": c, **evaluate(model, edit, harmful, baseline, args)}
        layer_rows.append(row)
        print(f"layer-level x{c}: {row}", flush=True)
    # Which writers carry the direction: attention outputs only, MLP outputs only.
    off = LayerKernel.off()
    writers = {}
    for name, kernels in (("attention", {"mlp": off}), ("mlp", {"attn": off})):
        edit = DirectionalAblation(ref, index=float(layer), embed=0.0, **kernels)
        writers[name] = evaluate(model, edit, harmful, baseline, args)
        print(f"{name} outputs only: {writers[name]}", flush=True)
    head_rows = []
    for k in args.top:
        if k > len(circuit.heads):
            continue
        edit = head_ablation(circuit, k, ref, index=float(layer))
        row = {"k": k, **evaluate(model, edit, harmful, baseline, args)}
        for key in ("kl_first", "kl_k"):
            matched = matched_kl(row["refusal_rate"], unedited, layer_rows, key)
            row[f"layer_{key}_at_matched_rate"] = matched
        head_rows.append(row)
        print(f"head-level top-{k}: {row}", flush=True)
    return {
        "unedited": unedited,
        "layer_level": layer_rows,
        "writers_only": writers,
        "head_level": head_rows,
    }


def summary(result: dict) -> None:
    f = result["discovery"]
    print(f"\n== {result['model']}  direction layer {result['layer']}  metric {f['metric']}")
    print(
        f"metric {f['metric_clean']:.2f} clean, {f['metric_counterfactual']:.2f} counterfactual; "
        f"exact patching ({f['n_heads_scored']} query heads + KV heads + "
        f"{2 * result['facts']['n_layers']} blocks): {f['activation_seconds']['cpu']:.1f} CPU s"
    )
    for name in ("attribution", "integrated_gradients", "refined", "ig_refined"):
        g = f[name]
        blocks = g.get("blocks", {})
        kv = g.get("kv", {})
        print(
            f"{name}: {g['seconds']['cpu']:.1f} CPU s; Spearman on exact top 20 heads "
            f"{g['spearman_top20']:.3f}, overlap {g['overlap_top20']}/20, top-1 "
            f"{g['top1_match']}; KV Spearman {kv.get('spearman', float('nan')):.3f}; MLP "
            f"Spearman {blocks.get('spearman_mlp', float('nan')):.3f}"
        )
    for name, c in f["sampled_checks"].items():
        print(
            f"sampled check {name} ({len(c['sites'])} sites, {c['cpu']:.1f} CPU s): Spearman "
            f"{c['spearman']:.3f} on the leaders, top-1 {c['top1_match']}, missed {c['missed']}"
        )
    print(f"top blocks (exact): {', '.join(f'{s} {v:.2f}' for s, v in f['blocks_activation'][:6])}")
    print("joint patching (exact ranking):        sites  metric  share of gap  log-odds > 0")
    for g in f["joint_patching"]["groups"]:
        print(
            f"  {g['group']:36} {g['n_sites']:5d}  {g['patched']:6.2f}  "
            f"{g['fraction_of_gap']:11.1%}  {g['above_zero']}/{g['n']}"
        )
    e = result["edits"]
    if e is None:
        return
    u = e["unedited"]
    print(f"unedited: refusals {u['refusal_rate']:.1%}")
    print("layer-level DirectionalAblation:   calib  refusals  KL1    KL4")
    for r in e["layer_level"]:
        cells = f"{r['calibration']:5.2f}  {r['refusal_rate']:7.1%}  {r['kl_first']:.3f}"
        print(f"{'':35}{cells}  {r['kl_k']:.3f}")
    for name, r in e["writers_only"].items():
        print(
            f"{name} outputs only (x1): refusals {r['refusal_rate']:.1%}, KL1 {r['kl_first']:.3f}"
        )
    print("head-level HeadAblation (top k):       k  refusals  KL1    KL4    layer KL1 @ same rate")
    for r in e["head_level"]:
        m = r["layer_kl_first_at_matched_rate"]
        cells = f"{r['k']:5d}  {r['refusal_rate']:7.1%}  {r['kl_first']:.3f}  {r['kl_k']:.3f}"
        print(f"{'':35}{cells}  {'–' if m is None else f'{m:.3f}'}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = HookedModel.load(ModelSpec(args.model, cache_dir=Path(args.cache_dir)))
    data = testbed_data()
    layer = args.layer if args.layer is not None else round(0.75 * (model.n_layers - 1))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.model).name).strip("-")
    folder = Path(args.out_dir) if args.out_dir else Path(args.cache_dir) / "circuits"
    out = folder / f"experiment-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds = direction(model, data, args.n_direction, args.cache_dir)
    if args.edits_only:
        circuit = RefusalCircuit.load(args.exact)
        edits = compare_edits(model, data, ds, layer, circuit, args)
        result = {"model": args.model, "layer": layer, "args": vars(args), "edits": edits}
        path = out.with_name(out.stem + "-edits.json")
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwritten: {path}")
        return
    found = discover(model, data, args, out, slug)
    found["figures"]["n_heads_scored"] = model.n_layers * model.facts.n_heads
    result = {
        "model": args.model,
        "layer": layer,
        "args": vars(args),
        "facts": model.facts.as_dict(),
        "torch_threads": torch.get_num_threads(),
        "discovery": found["figures"],
        "edits": None,
    }
    # Discovery is written before the (slow) edits, so it survives an interrupted run.
    first = out.with_name(out.stem + "-discovery.json")
    first.write_text(json.dumps(result, indent=1) + "\n")
    summary(result)
    print(f"\nwritten: {first}", flush=True)
    if args.no_edits:
        return
    result["edits"] = compare_edits(model, data, ds, layer, found["circuits"]["activation"], args)
    out.write_text(json.dumps(result, indent=1) + "\n")
    summary(result)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
