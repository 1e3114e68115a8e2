"""Where one generating search trial spends its time, on the refusal organism.

Runs the steps of ``circuitlab.search.objective.score_trial`` one by one, timed in wall and
CPU seconds (``time.process_time``: steadier than wall time on a shared machine): the KL
pass (one teacher-forced pass over the harmless search prompts), the prefill of the harmful
search prompts, the decode steps (with the search's early stop), and the judge. The edit is
the classic one: the diff-means direction of one layer (``--layer``) projected out of every
writer. The trial runs with the search's objective settings of before (``legacy``: batches
of 16, each verdict read from the whole two-sentence opening) and of now (one batch, the
verdict read from the first sentence or 48 characters), on the decoder's fast path (plain
HF view, the edit as writer-module hooks), and the current settings once more forced
through the TransformerLens bridge: both paths must give the same texts.

Usage: .venv/bin/python experiments/profile_trial.py [--layer 22] [--dtype bfloat16] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from circuitlab import decoding, fastpath
from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionalAblation, DirectionRef
from circuitlab.models import ModelSpec
from circuitlab.search.assets import SearchPrompts, extract_directions, prepare_assets
from circuitlab.search.objective import ObjectiveConfig, kl_pass, refusal_stopper


class Clock:
    """Wall and CPU seconds per named step."""

    def __init__(self):
        self.steps: dict[str, dict[str, float]] = {}

    def __call__(self, name: str, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.steps[name] = {
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
        }
        return result


def trial(model, ablation, assets, harmful, config, bridge: bool) -> tuple[dict, list[str]]:
    clock, judge = Clock(), MarkerJudge()
    stop = refusal_stopper(judge, config.verdict_sentences, config.verdict_chars).decided
    rows = config.generation_rows(len(harmful), model.on_accelerator)
    noop = [("blocks.0.hook_resid_pre", lambda x, hook: None)]
    steps: list[int] = []
    with apply(model, ablation), model.hooks(noop) if bridge else nullcontext():
        assert (fastpath.runner(model).net is model.hf_model) == bridge
        kl = clock("kl pass (30 harmless, teacher-forced)", lambda: kl_pass(model, assets, 16))
        state = clock("prefill (30 harmful)", lambda: decoding.prefill(model, harmful, rows))

        def counted(texts):
            steps.append(len(texts))
            return stop(texts)

        texts = clock(
            "decode (early stop)",
            lambda: decoding.decode(model, state, config.max_new_tokens, counted, 1),
        )
    verdict = clock("judge (markers)", lambda: judge.judge(harmful, texts))
    total = {k: sum(s[k] for s in clock.steps.values()) for k in ("wall_s", "cpu_s")}
    tokens = sum(len(model.tokenizer(t, add_special_tokens=False).input_ids) for t in texts)
    record = {
        "path": "bridge" if bridge else "fast path",
        "steps": clock.steps,
        "total": total,
        "kl_first": kl[0],
        "refusals": int(sum(verdict.is_refusal)),
        "decode_steps": len(steps),
        "row_steps": sum(steps),
        "tokens": tokens,
    }
    return record, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-refusal")
    parser.add_argument("--layer", type=int, default=22)
    parser.add_argument("--dtype", default="float32", help="weights (bfloat16: AMX / AVX512-BF16)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(os.environ.get("CIRCUITLAB_CACHE_DIR", Path(__file__).parents[1] / "cache"))
    model = HookedModel.load(ModelSpec(args.model, cache_dir=cache, dtype=args.dtype))
    prompts = SearchPrompts.from_testbed()
    scratch = Path(tempfile.mkdtemp(prefix="profile-trial-"))
    sets = extract_directions(model, prompts, ["diff-means"], cache_dir=scratch)
    ref = DirectionRef.inline(sets["diff-means"])
    assets = prepare_assets(model, prompts, {"diff-means": ref}, cache_dir=scratch, calibrate=False)
    ablation = DirectionalAblation(ref, index=float(args.layer))
    harmful = list(prompts.harmful_search)
    legacy, now = ObjectiveConfig.from_dict({}), ObjectiveConfig()
    records, outputs = [], []
    runs = [("now", now, False), ("legacy", legacy, False), ("now", now, True), ("now", now, False)]
    for name, config, bridge in runs:  # the first run warms up
        record, texts = trial(model, ablation, assets, harmful, config, bridge)
        record["settings"] = name
        records.append(record)
        outputs.append(texts)
    print(f"{args.model}: 30 harmful + 30 harmless search prompts, layer {args.layer} ablation")
    for record in records[1:]:
        print(
            f"\n  {record['settings']}, {record['path']}: {record['refusals']}/30 refusals, KL "
            f"{record['kl_first']:.3f}, {record['decode_steps']} decode steps, "
            f"{record['tokens']} tokens"
        )
        for name, step in record["steps"].items():
            print(f"    {name:40s} {step['wall_s']:7.2f} s wall {step['cpu_s']:7.2f} s CPU")
        total = record["total"]
        print(f"    {'total':40s} {total['wall_s']:7.2f} s wall {total['cpu_s']:7.2f} s CPU")
    same = outputs[0] == outputs[2] == outputs[3]
    print(f"\n  same texts on both paths: {same}")
    if args.out is not None:
        args.out.write_text(json.dumps({"records": records[1:], "same_texts": same}, indent=1))


if __name__ == "__main__":
    main()
