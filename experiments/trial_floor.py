"""The physical floor of a search trial on this machine, and each trial's time as a multiple.

A trial cannot do less than: one forward pass (prefill) over the harmless KL prompts (the
first-token KL), one prefill over the harmful search prompts (the first-token refusal mass,
and the start of generation), and -- when it generates -- the decode steps whose tokens
decide the refusal verdicts. This script measures those pieces with a plain Hugging Face
forward (SDPA attention, KV cache, no hooks, no bridge: the cheapest way this library's
own dependencies can run the model) and prices each trial of a finished study:

    floor(pruned on KL)    = prefill(harmless)
    floor(pruned on mass)  = prefill(harmless) + prefill(harmful)
    floor(generating)      = prefill(harmless) + prefill(harmful) + tokens × decode_token

where ``tokens`` is what the trial generated (its stored score) and ``decode_token`` the
cost of one token in a decode step with every harmful prompt in the batch (the cheapest
per-token rate; rows that stop early only make real batches smaller and dearer per token).
The floor is therefore a lower bound: a trial at 1.0× did nothing but unavoidable work.

Usage:
    .venv/bin/python experiments/trial_floor.py --journal STUDY.journal [--study NAME]
        [--json OUT.json] [--repeats 3]
Without ``--journal`` only the floor's pieces are measured. Report ``uptime`` beside the
figures: on a shared 2-core machine they move several-fold with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from circuitlab.search import SearchPrompts
from circuitlab.testbed import Recipe


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-refusal", help="preset or HF folder")
    p.add_argument("--journal", help="a study's journal file: price its trials")
    p.add_argument("--study", help="study name in the journal (default: its only study)")
    p.add_argument("--n-harmful", type=int, default=30)
    p.add_argument("--n-kl", type=int, default=30)
    p.add_argument("--decode-steps", type=int, default=16, help="steps timed per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    return p.parse_args()


def _load(source: str):
    """The plain HF model and tokenizer of a preset or folder (SDPA attention)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitlab.config import load_settings
    from circuitlab.models import ModelSpec
    from circuitlab.models.loading import resolve_source
    from circuitlab.testbed import NAME, testbed_folder

    # The organism's built folder directly: resolving the preset checks the build against
    # the base model, minutes of work on a loaded machine.
    built = testbed_folder(Path(load_settings().cache_dir))
    if source == NAME and (built / "config.json").is_file():
        location = str(built)
    else:
        location = resolve_source(ModelSpec(source)).location
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(
        location, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.eval(), tokenizer


def _batch(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"  # generation continues from the last column
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _best_of(repeats: int, fn) -> float:
    """The fastest of ``repeats`` runs: the floor, not the contention, is what we want."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.inference_mode()
def measure_floor(model, tokenizer, prompts: SearchPrompts, steps: int, repeats: int) -> dict:
    """Seconds of each unavoidable piece of a trial (best of ``repeats``)."""
    harmful = _batch(tokenizer, list(prompts.harmful_search))
    harmless = _batch(tokenizer, list(prompts.harmless_search))
    prefill_harmless = _best_of(repeats, lambda: model(**harmless, use_cache=False))
    prefill_harmful = _best_of(repeats, lambda: model(**harmful, use_cache=False))

    def decode() -> None:
        out = model(**harmful, use_cache=True)
        cache, mask = out.past_key_values, harmful["attention_mask"]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)

    with_decode = _best_of(repeats, decode)
    rows = harmful["input_ids"].shape[0]
    per_step = max(with_decode - prefill_harmful, 0.0) / steps
    return {
        "prefill_harmless_s": prefill_harmless,
        "prefill_harmful_s": prefill_harmful,
        "decode_step_s": per_step,
        "decode_token_s": per_step / rows,
        "batch_rows": rows,
    }


def trial_floor(score: dict, floor: dict) -> float:
    """The floor of one stored trial score (see the module docstring)."""
    base = floor["prefill_harmless_s"]
    reason = score.get("pruned") or ""
    if reason.startswith(("KL", "non-finite")):
        return base
    base += floor["prefill_harmful_s"]
    return base + score.get("tokens", 0) * floor["decode_token_s"]


def price_study(journal: str, study: str | None, floor: dict) -> list[dict]:
    """Each finished trial's seconds, floor and multiple, from a study's journal."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(journal))
    name = study or optuna.get_all_study_names(storage)[0]
    rows = []
    for trial in optuna.load_study(study_name=name, storage=storage).trials:
        score = trial.user_attrs.get("score")
        if not score:
            continue
        low = trial_floor(score, floor)
        rows.append({
            "trial": trial.number,
            "pruned": score.get("pruned"),
            "tokens": score.get("tokens", 0),
            "seconds": score["seconds"],
            "floor_s": low,
            "multiple": score["seconds"] / low if low else None,
        })  # fmt: skip
    return rows


def _summary(rows: list[dict]) -> dict:
    def stats(group: list[dict]) -> dict:
        if not group:
            return {"n": 0}
        multiples = [r["multiple"] for r in group]
        return {
            "n": len(group),
            "median_seconds": statistics.median(r["seconds"] for r in group),
            "median_floor_s": statistics.median(r["floor_s"] for r in group),
            "median_multiple": statistics.median(multiples),
            "max_multiple": max(multiples),
        }

    generating = [r for r in rows if r["pruned"] is None]
    pruned = [r for r in rows if r["pruned"] is not None]
    return {"generating": stats(generating), "pruned": stats(pruned), "all": stats(rows)}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    prompts = SearchPrompts.from_testbed(
        n_search=args.n_harmful, n_kl=args.n_kl, n_test=0, split_seed=Recipe().split_seed
    )
    model, tokenizer = _load(args.model)
    floor = measure_floor(model, tokenizer, prompts, args.decode_steps, args.repeats)
    result: dict = {
        "model": args.model,
        "threads": args.threads,
        "load": os.getloadavg()[0],
        "floor": floor,
    }
    if args.journal:
        rows = price_study(args.journal, args.study, floor)
        result["trials"] = rows
        result["summary"] = _summary(rows)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)  # noqa: T201 - the script's output


if __name__ == "__main__":
    main()
