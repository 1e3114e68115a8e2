"""Parity of exported weights with the hooked model, per architecture and intervention type.

For each (architecture, intervention) pair: fold, build the folded model, compare it with
the hooked model on the 16 held-out prompts, write the export, reload it with plain
``transformers.AutoModelForCausalLM.from_pretrained`` and compare again. With ``--fp64`` it
also runs the *exact* maths -- the unedited model in float64 with the same edits as forward
hooks, each prompt unpadded -- and reports how far the float32 hooked model and the float32
export each are from it (which tells a fold error from float32 rounding).

    .venv/bin/python experiments/export_parity.py                # all five architectures
    .venv/bin/python experiments/export_parity.py --archs smollm2-135m --fp64

Architectures: the two presets and the random-init tiny configs of ``tests/tiny.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny configs and planted interventions

from tiny import TINY_KINDS, example_interventions, tiny_model  # noqa: E402

from circuitlab.engine import HookedModel  # noqa: E402
from circuitlab.export import compare, fold, manifest, reference, run_plain, save  # noqa: E402
from circuitlab.models import ModelSpec  # noqa: E402
from circuitlab.models.facts import o_proj_columns  # noqa: E402
from circuitlab.plan import HeadZero, ResidualAddition, plan  # noqa: E402

KINDS = ["directional", "subspace", "subspace-per-layer", "addition", "head"]
ARCHS = [*TINY_KINDS, "smollm2-135m", "gemma3-270m"]


def load(arch: str, cache_dir: Path, work: Path) -> HookedModel:
    if arch in TINY_KINDS:
        return HookedModel.load(str(tiny_model(arch, work / arch.replace("/", "_"), cache_dir)))
    return HookedModel.load(ModelSpec(arch, cache_dir=cache_dir))


# ------------------------------------------------------------------ exact float64 maths
def _edit_hooks(model: HookedModel, exact, interventions) -> list:
    """The interventions as PyTorch hooks on a plain float64 model (the hooks' maths)."""
    layers, handles = exact.model.layers, []
    for iv in interventions:
        for edit in plan(model, iv):
            if not isinstance(edit, ResidualAddition):
                handles += _site_hooks(model, exact, edit)
                continue

            def add(module, args, kwargs, vector=edit.vector):
                if "hidden_states" in kwargs:
                    return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}
                return (args[0] + vector, *args[1:]), kwargs

            handles.append(layers[edit.layer].register_forward_pre_hook(add, with_kwargs=True))
    return handles


def _site_hooks(model: HookedModel, exact, edit) -> list:
    zeroed = isinstance(edit, HeadZero)  # the only edit without a basis
    basis = None if zeroed else edit.basis.double()
    scaled = None if zeroed else basis * edit.weights.double()[:, None]
    layer = exact.model.layers[edit.layer] if edit.writer != "embed" else None
    module = {
        "embed": lambda: exact.model.embed_tokens,
        "attn": lambda: layer.self_attn.o_proj,
        "mlp": lambda: layer.mlp.down_proj,
    }[edit.writer]()
    if getattr(edit, "head", None) is None:
        return [module.register_forward_hook(lambda m, a, out: out - (out @ basis.T) @ scaled)]
    cols = o_proj_columns(edit.head, model.facts.d_head)
    if zeroed:

        def zero(m, args):
            z = args[0].clone()
            z[..., cols] = 0
            return (z,)

        return [module.register_forward_pre_hook(zero)]
    readout, share = basis @ module.weight[:, cols].detach().clone(), {}

    def read(m, args):
        share["coef"] = args[0][..., cols] @ readout.T

    def remove(m, args, out):
        return out - share.pop("coef") @ scaled

    return [module.register_forward_pre_hook(read), module.register_forward_hook(remove)]


@torch.no_grad()
def fp64_errors(model: HookedModel, interventions, ref, folded_logits) -> tuple[float, float]:
    """(hooked float32 vs exact, folded float32 vs exact): max |Δlogit| over real tokens."""
    exact = AutoModelForCausalLM.from_pretrained(
        model.resolved.location, dtype=torch.float64, attn_implementation="eager"
    ).eval()
    handles = _edit_hooks(model, exact, interventions)
    hooked_err = folded_err = 0.0
    try:
        for batch, hooked, folded in zip(ref.batches, ref.logits, folded_logits, strict=True):
            rows = []
            # One prompt at a time: float64 padding rows turn to NaN in Gemma's eager attention.
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                rows.append(exact(input_ids=ids[mask.bool()][None], use_cache=False).logits[0])
            truth = torch.cat(rows).float()
            hooked_err = max(hooked_err, (hooked - truth).abs().max().item())
            folded_err = max(folded_err, (folded - truth).abs().max().item())
    finally:
        for handle in handles:
            handle.remove()
    return hooked_err, folded_err


# ---------------------------------------------------------------------------------- rows
def parity_row(model: HookedModel, kind: str, work: Path, fp64: bool) -> dict:
    start = time.perf_counter()
    interventions = example_interventions(model, kind)
    folded = fold(model, interventions)
    hf_model = folded.build()
    ref = reference(model, interventions)
    in_memory = compare(ref, *run_plain(hf_model, ref))
    out = save(hf_model, model, work / kind, manifest(model, interventions, folded, in_memory))
    reloaded_model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    logits, tokens = run_plain(reloaded_model, ref)
    reloaded = compare(ref, logits, tokens)
    clean = reference(model, [], max_new_tokens=1)
    effect = max((a - b).abs().max().item() for a, b in zip(ref.logits, clean.logits, strict=True))
    row = {
        "kind": kind,
        "folded": in_memory.max_abs_logit_diff,
        "reloaded": reloaded.max_abs_logit_diff,
        "kl": reloaded.mean_kl,
        "greedy": f"{reloaded.greedy_agree}/{reloaded.n_prompts}",
        "noise": ref.noise_floor,
        "effect": effect,
        "seconds": time.perf_counter() - start,
    }
    if fp64:
        row["hooks_vs_fp64"], row["fold_vs_fp64"] = fp64_errors(model, interventions, ref, logits)
    return row


def print_table(rows: list[tuple[str, dict]], fp64: bool) -> None:
    head = ["architecture", "intervention", "max|Δ| folded", "max|Δ| reloaded", "mean KL"]
    head += ["greedy", "hooked noise", "edit effect"]
    head += ["hooks vs fp64", "export vs fp64"] if fp64 else []
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for arch, r in rows:
        cells = [arch, r["kind"], f"{r['folded']:.1e}", f"{r['reloaded']:.1e}", f"{r['kl']:.0e}"]
        cells += [r["greedy"], f"{r['noise']:.1e}", f"{r['effect']:.1f}"]
        if fp64:
            cells += [f"{r['hooks_vs_fp64']:.1e}", f"{r['fold_vs_fp64']:.1e}"]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--fp64", action="store_true", help="also compare with exact maths")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "cache")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-parity-") as tmp:
        for arch in args.archs:
            work = Path(tmp) / arch.replace("/", "_")
            work.mkdir()
            model = load(arch, args.cache_dir, work)
            for kind in args.kinds:
                rows.append((arch, parity_row(model, kind, work, args.fp64)))
                r = rows[-1][1]
                print(f"{arch} {kind}: {r['reloaded']:.1e} in {r['seconds']:.0f} s", flush=True)
            del model
    print()
    print_table(rows, args.fp64)


if __name__ == "__main__":
    main()
