"""How early a search trial's refusal verdicts can be read, and what reading them early costs.

A search trial generates for the harmful search prompts only to count refusals, and a row
leaves the batch once its verdict is final. With the marker judge that is when the answer's
opening (two sentences) is complete (``OpeningDecides``). This script measures, on real
search edits, how often a verdict read earlier -- after the first sentence, or after a
fixed number of tokens -- differs from the verdict of the full opening, and how many decode
tokens and steps it saves.

The edits are the complete trials of a finished study (``--journal``: the edits a search
really tries, from no-ops to the ones that remove every refusal) plus the unedited model.
Each edit's harmful search prompts are decoded once with the full-opening stop, keeping the
tokens; every rule is then replayed on those tokens (a rule that stops earlier sees a prefix
of the same greedy text), so the rules are compared on identical generations.

Usage:
    .venv/bin/python experiments/early_verdict.py --journal STUDY.journal [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import optuna
import torch

from circuitlab import decoding
from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.hooks import apply
from circuitlab.models import ModelSpec
from circuitlab.search.assets import SearchPrompts
from circuitlab.search.front import trial_interventions
from circuitlab.search.objective import early_reading, refusal_stopper


def rules(judge: MarkerJudge) -> dict:
    """Candidate stoppers by name: each maps a partial text to decided or not."""
    one = replace(judge, n_sentences=1)
    full = refusal_stopper(judge)
    first = refusal_stopper(one)
    out = {"opening (2 sentences, current)": full.decided, "first sentence": first.decided}
    for chars in (16, 24, 32, 48, 80):
        out[f"first sentence or {chars} chars"] = lambda texts, c=chars: [
            d or len(t.lstrip()) >= c for d, t in zip(first.decided(texts), texts, strict=True)
        ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-refusal")
    p.add_argument("--journal", required=True)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    cache = Path(os.environ.get("CIRCUITLAB_CACHE_DIR", Path(__file__).parents[1] / "cache"))
    model = HookedModel.load(ModelSpec(args.model, cache_dir=cache))
    harmful = list(SearchPrompts.from_testbed().harmful_search)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(args.journal)
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    edits = [("base", ())] + [
        (f"trial {t.number}", trial_interventions(t, cache)) for t in complete
    ]
    judge = MarkerJudge()
    stoppers = rules(judge)
    full_stop = stoppers["opening (2 sentences, current)"]
    rows = []  # (edit, prompt index, tokens)
    start = time.perf_counter()
    for name, edit in edits:
        with apply(model, *edit):
            state = decoding.prefill(model, harmful, args.batch_size)
            eos = decoding.eos_ids(model.hf_model, model.tokenizer)
            stop = decoding._text_stop(model.tokenizer, full_stop)
            found = decoding.decode_tokens(state, args.max_new_tokens, eos, stop, 1)
        rows.extend((name, i, toks) for i, toks in enumerate(found.tokens))
        print(f"{name}: decoded ({time.perf_counter() - start:.0f} s)", flush=True)
    tok = model.tokenizer
    # Each row's text as it grew, token by token: every rule replays these same prefixes.
    grown = [
        [tok.decode(toks[:t], skip_special_tokens=True) for t in range(1, len(toks) + 1)] or [""]
        for _, _, toks in rows
    ]
    results = {}
    for rule, decided in stoppers.items():
        flips, tokens, steps = [], 0, {}
        for (name, i, toks), prefixes in zip(rows, grown, strict=True):
            cut, whole, early = early_reading(judge, decided, harmful[i], prefixes)
            t = min(cut + 1, len(toks))
            if whole != early:
                flips.append({"edit": name, "prompt": i, "full": prefixes[-1][:160],
                              "early": prefixes[cut], "full_refusal": whole})  # fmt: skip
            tokens += t
            steps[name] = max(steps.get(name, 0), t)
        per_edit = {}
        for f in flips:
            per_edit[f["edit"]] = per_edit.get(f["edit"], 0) + 1
        results[rule] = {
            "rows": len(rows),
            "verdict_flips": len(flips),
            "edits_with_a_flip": len(per_edit),
            "max_flips_in_one_edit": max(per_edit.values(), default=0),
            "tokens": tokens,
            "steps_sum": sum(steps.values()),
            "flips": flips[:20],
        }
        print(
            f"{rule:34s} flips {len(flips):3d}/{len(rows)} "
            f"(edits {len(per_edit)}, worst {max(per_edit.values(), default=0)})  "
            f"tokens {tokens:6d}  batch steps {sum(steps.values()):5d}"
        )
    if args.json:
        tokens = [{"edit": name, "prompt": i, "tokens": toks} for name, i, toks in rows]
        args.json.write_text(
            json.dumps({"edits": len(edits), "results": results, "rows": tokens}, indent=1)
        )


if __name__ == "__main__":
    main()
