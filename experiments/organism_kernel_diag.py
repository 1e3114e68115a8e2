"""Where does the organism's ablation KL come from? Same direction, different layer kernels.

Usage: .venv/bin/python experiments/organism_kernel_diag.py [MODEL] [LAYER]
Prints first-token KL on 32 held-out harmless prompts and refusals on 30 JailbreakBench
prompts (32 tokens, marker judge) for full ablation with and without the embedding stream,
ablation restricted to layers >= 8, and half-weight ablation.
"""

import sys

import torch

from circuitlab import HookedModel
from circuitlab.activations import collect_activations, select_position
from circuitlab.directions import extract_diff_means
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.refusals import judged_generate
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionalAblation, DirectionRef, LayerKernel
from circuitlab.testbed import testbed_data


def main() -> None:
    torch.set_num_threads(1)
    model = HookedModel.load(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-refusal")
    layer = float(sys.argv[2]) if len(sys.argv) > 2 else 21.0
    data = testbed_data()
    harmful, harmless = (
        select_position(collect_activations(model, p))
        for p in (data.harmful_train.take(96), data.harmless_train.take(96))
    )
    ref = DirectionRef.inline(extract_diff_means(harmful, harmless))
    base = KLBaseline.compute(model, list(data.harmless_test.take(32)), k=1)
    jbb = list(data.jailbreakbench.take(30))
    upper = LayerKernel(1.0, 18.5, 1.0, 10.6)  # weight 1 on layers 8..29, 0 below
    variants = {
        "every writer + embedding": DirectionalAblation(ref, index=layer),
        "every writer, no embedding": DirectionalAblation(ref, index=layer, embed=0.0),
        "layers >= 8, no embedding": DirectionalAblation(
            ref, index=layer, embed=0.0, attn=upper, mlp=upper
        ),
        "every writer, weight 0.5": DirectionalAblation(ref, index=layer, calibration=0.5),
    }
    for name, edit in variants.items():
        with apply(model, edit):
            kl = base.score(model).first_token
            refused = judged_generate(model, jbb, MarkerJudge(), 32).refusals
        print(f"{name}: first-token KL {kl:.3f}, JailbreakBench refusals {refused}/30", flush=True)


if __name__ == "__main__":
    main()
