"""Throughput of hooked generation vs plain Hugging Face generation on smollm2-135m.

Greedy generation of a batch of prompts, exactly ``--tokens`` new tokens each (EOS
suppressed so every variant does the same work), one torch thread, variants interleaved
and the best of ``--repeats`` runs kept, in CPU and in wall time. Variants:

- HF sdpa: a separately loaded, un-bridged ``AutoModelForCausalLM`` (the reference);
- HF eager: the same model switched to eager attention;
- bridge: the HookedModel's HF model (TL bridge booted on it), no hooks;
- bridge + ablation: DirectionalAblation of one direction at every layer and the embedding;
- bridge + ablation, sdpa: the same after ``hf_model.set_attn_implementation("sdpa")``;
- HF sdpa + ablation: the same ``plan()`` edits as plain torch forward hooks on the
  un-bridged model's writer modules (embed_tokens, o_proj, down_proj).

Booting the bridge switches the HF model to eager attention; the script checks that
switching back to sdpa keeps hooks firing and outputs identical. On a shared machine whole
generations are noisy, so it also times single KV-cached decode steps (median of many,
interleaved), which is the steadier comparison.

Usage: .venv/bin/python experiments/bench_hooked_generation.py [--batch 16] [--tokens 48]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from circuitlab.engine import HookedModel
from circuitlab.hooks import apply, plan
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


def timed(fn: Callable) -> tuple[float, float]:
    """Wall and CPU seconds of one call (CPU: this process only, one torch thread)."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        fn()
    return time.perf_counter() - wall, time.process_time() - cpu


@contextmanager
def attn_implementation(model: torch.nn.Module, name: str):
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@contextmanager
def module_hooks(plain: torch.nn.Module, edits):
    """The plan's edits as torch forward hooks on an un-bridged Llama's writer modules."""

    def module(edit):
        if edit.writer == "embed":
            return plain.model.embed_tokens
        layer = plain.model.layers[edit.layer]
        return layer.self_attn.o_proj if edit.writer == "attn" else layer.mlp.down_proj

    handles = []
    try:
        for edit in edits:
            basis, scaled = edit.basis.float(), (edit.basis * edit.weights[:, None]).float()

            def project(mod, args, out, basis=basis, scaled=scaled):
                return out - (out @ basis.T) @ scaled

            handles.append(module(edit).register_forward_hook(project))
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_sdpa(model: HookedModel, batch: dict, generate: Callable) -> None:
    """Does switching the bridged HF model to sdpa keep hooks firing and outputs identical?"""
    calls: list[int] = []
    counter = [("blocks.0.hook_resid_pre", lambda x, hook: calls.append(1))]
    results = {}
    for name in ("eager", "sdpa"):
        calls.clear()
        with attn_implementation(model.hf_model, name), torch.no_grad(), model.hooks(counter):
            results[name] = (generate(), model.hf_model(**batch).logits, len(calls))
    (tokens_e, logits_e, calls_e), (tokens_s, logits_s, calls_s) = results.values()
    diff = (logits_e - logits_s).abs()[batch["attention_mask"].bool()].max().item()
    print("set_attn_implementation('sdpa') after boot (the bridge left 'eager'):")
    print(f"  hook calls (generation + forward): {calls_e} -> {calls_s}")
    print(f"  greedy tokens identical: {torch.equal(tokens_e, tokens_s)}")
    print(f"  max |logit diff| over real tokens: {diff:.2e}")


def generation_table(variants: dict, repeats: int, n_tokens: int) -> None:
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved; the minimum discards the first (warm-up) round
        for name, fn in variants.items():
            times[name].append(timed(fn))
    best = {name: (min(t[0] for t in ts), min(t[1] for t in ts)) for name, ts in times.items()}
    print(f"\n  {'whole generation':28s} {'tokens/s (CPU)':>15s} {'tokens/s (wall)':>16s}")
    for name, (wall, cpu) in best.items():
        print(f"  {name:28s} {n_tokens / cpu:15.1f} {n_tokens / wall:16.1f}")
    reference = best["HF sdpa"]
    for name in ("bridge + ablation", "HF sdpa + ablation"):
        cpu, wall = (reference[i] / best[name][i] for i in (1, 0))
        print(f"  {name} / HF sdpa: {cpu:.2f}x CPU, {wall:.2f}x wall (target >= 0.9x)")


def decode_step_table(steps: dict, batch: dict, n: int) -> None:
    """Median CPU time of one KV-cached decode step per variant, interleaved."""
    mask = torch.cat([batch["attention_mask"], torch.ones_like(batch["attention_mask"][:, :1])], 1)
    inputs = {
        "input_ids": torch.full((mask.shape[0], 1), 100),
        "attention_mask": mask,
        "position_ids": mask.sum(1, keepdim=True) - 1,
        "use_cache": True,
    }
    caches = {}
    for name, (model, context) in steps.items():
        with context(), torch.no_grad():
            caches[name] = model(**batch, use_cache=True).past_key_values
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, (model, context) in steps.items():
            step = partial(model, **inputs, past_key_values=copy.deepcopy(caches[name]))
            with context():
                times[name].append(timed(step)[1])
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"\n  one decode step (median of {n}, CPU ms)")
    for name, seconds in medians.items():
        ratio = medians["HF sdpa"] / seconds
        print(f"  {name:28s} {seconds * 1e3:8.1f} ms   {ratio:.2f}x HF sdpa speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="decode steps timed per variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(os.environ.get("CIRCUITLAB_CACHE_DIR", Path(__file__).parents[1] / "cache"))
    model = HookedModel.load(ModelSpec("smollm2-135m", cache_dir=cache))
    plain = AutoModelForCausalLM.from_pretrained(model.resolved.location, dtype=torch.float32)
    plain.eval().set_attn_implementation("sdpa")
    batch = model.encode((PROMPTS * 4)[: args.batch])
    config = GenerationConfig(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        do_sample=False,
        pad_token_id=model.tokenizer.pad_token_id,
    )
    r = torch.randn(model.facts.d_model, generator=torch.Generator().manual_seed(0))
    ablation = DirectionalAblation(DirectionRef.inline(r / r.norm()), index=0.0)
    contexts = {
        "HF sdpa": (plain, lambda: attn_implementation(plain, "sdpa")),
        "HF eager": (plain, lambda: attn_implementation(plain, "eager")),
        "bridge, no hooks": (model.hf_model, contextmanager(lambda: (yield))),
        "bridge + ablation": (model.hf_model, lambda: apply(model, ablation)),
        "bridge + ablation, sdpa": (
            model.hf_model,
            lambda: stacked(apply(model, ablation), attn_implementation(model.hf_model, "sdpa")),
        ),
        "HF sdpa + ablation": (plain, lambda: module_hooks(plain, plan(model, ablation))),
    }

    def generator(hf, context):
        def run():
            with context():
                return hf.generate(**batch, generation_config=config)

        return run

    check_sdpa(model, batch, generator(model.hf_model, contextmanager(lambda: (yield))))
    print(f"\nsmollm2-135m, batch {args.batch}, {args.tokens} new tokens, 1 torch thread")
    variants = {name: generator(*pair) for name, pair in contexts.items()}
    generation_table(variants, args.repeats, args.batch * args.tokens)
    decode_step_table(contexts, batch, args.steps)


@contextmanager
def stacked(*contexts):
    with contexts[0], contexts[1]:
        yield


if __name__ == "__main__":
    main()
