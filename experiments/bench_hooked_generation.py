"""Throughput of hooked generation vs plain Hugging Face generation on smollm2-135m.

Greedy generation of a batch of prompts, exactly ``--tokens`` new tokens each (EOS
suppressed so every variant does the same work), one torch thread, variants interleaved
and the best of ``--repeats`` runs kept (the machine is shared; the best run is the one
least disturbed). Variants:

- HF sdpa: a separately loaded, un-bridged ``AutoModelForCausalLM`` (the reference);
- HF eager: the same model switched to eager attention;
- bridge: the HookedModel's HF model (TL bridge booted on it), no hooks;
- bridge + ablation: DirectionalAblation of one direction at every layer and the embedding.

Then it checks whether ``hf_model.set_attn_implementation("sdpa")`` after booting the bridge
keeps hooks firing and outputs identical, and what it changes in speed.

Usage: .venv/bin/python experiments/bench_hooked_generation.py [--batch 16] [--tokens 48]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from circuitlab.engine import HookedModel
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionalAblation, DirectionRef
from circuitlab.models import ModelSpec

PROMPTS = [
    "Write a short poem about the sea.",
    "What is the capital of Norway?",
    "List three uses for baking soda around the house.",
    "Explain recursion to a child.",
    "Give me a recipe for pancakes.",
    "How do plants make food from sunlight?",
    "Suggest a name for a grey cat.",
    "What are the rules of chess castling?",
    "Summarise the plot of Romeo and Juliet.",
    "How do I change a bicycle tyre?",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves.",
    "What is a prime number?",
    "Describe a good morning routine.",
    "How does a refrigerator keep food cold?",
    "Tell me a fun fact about octopuses.",
]


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return time.perf_counter() - start, out


def count_hook_calls(model: HookedModel, fn) -> int:
    calls = []
    with model.hooks([("blocks.0.hook_resid_pre", lambda x, hook: calls.append(1))]):
        fn()
    return len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(os.environ.get("CIRCUITLAB_CACHE_DIR", Path(__file__).parents[1] / "cache"))
    model = HookedModel.load(ModelSpec("smollm2-135m", cache_dir=cache))
    plain = AutoModelForCausalLM.from_pretrained(model.resolved.location, dtype=torch.float32)
    plain.eval()
    batch = model.encode((PROMPTS * 4)[: args.batch])
    config = GenerationConfig(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        do_sample=False,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    r = torch.randn(model.facts.d_model, generator=torch.Generator().manual_seed(0))
    ablation = DirectionalAblation(DirectionRef.inline(r / r.norm()), index=0.0)

    def hf(attn: str):
        def run():
            plain.set_attn_implementation(attn)
            return plain.generate(**batch, generation_config=config)

        return run

    def bridge():
        return model.hf_model.generate(**batch, generation_config=config)

    def hooked():
        with apply(model, ablation):
            return model.hf_model.generate(**batch, generation_config=config)

    variants = {
        "HF sdpa (un-bridged)": hf("sdpa"),
        "HF eager (un-bridged)": hf("eager"),
        "bridge, no hooks": bridge,
        "bridge + ablation": hooked,
    }
    best = measure(variants, args.repeats)
    n_tokens = args.batch * args.tokens
    print(f"\nsmollm2-135m, batch {args.batch}, {args.tokens} new tokens, 1 thread (best of runs)")
    for name, seconds in best.items():
        print(f"  {name:28s} {n_tokens / seconds:7.1f} tokens/s  ({seconds:.2f} s)")
    ratio = best["HF sdpa (un-bridged)"] / best["bridge + ablation"]
    print(f"  hooked / plain HF sdpa: {ratio:.2f}x   (target >= 0.9x)")
    eager = best["HF eager (un-bridged)"] / best["bridge + ablation"]
    print(f"  hooked / plain HF eager: {eager:.2f}x")
    investigate_sdpa(model, batch, config, bridge, hooked, args.repeats)


def measure(variants: dict, repeats: int) -> dict[str, float]:
    for fn in variants.values():  # warm-up: allocator, first-call overheads
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn)[0])
    return {name: min(ts) for name, ts in times.items()}


def investigate_sdpa(model, batch, config, bridge, hooked, repeats: int) -> None:
    """Does switching the bridged HF model to sdpa keep hooks and outputs, and help?"""
    before = model.hf_model.config._attn_implementation
    with torch.no_grad():
        tokens_before = bridge()
        logits_before = model.hf_model(**batch).logits
    calls_before = count_hook_calls(model, bridge)
    model.hf_model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            tokens_after = bridge()
            logits_after = model.hf_model(**batch).logits
        calls_after = count_hook_calls(model, bridge)
        mask = batch["attention_mask"].bool()
        diff = (logits_before - logits_after).abs()[mask].max().item()
        timing = measure({"bridge + ablation, sdpa": hooked}, repeats)
    finally:
        model.hf_model.set_attn_implementation(before)
    seconds = timing["bridge + ablation, sdpa"]
    n_tokens = tokens_before.shape[0] * config.max_new_tokens
    print(f"\nset_attn_implementation('sdpa') after boot (was {before!r}):")
    print(f"  hook calls per generation: {calls_before} -> {calls_after}")
    print(f"  greedy tokens identical: {torch.equal(tokens_before, tokens_after)}")
    print(f"  max |logit diff| over real tokens: {diff:.2e}")
    print(f"  bridge + ablation, sdpa: {n_tokens / seconds:.1f} tokens/s ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
