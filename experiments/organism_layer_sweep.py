"""Which (layer, position) difference-of-means direction of the organism ablates cheaply?

Usage: .venv/bin/python experiments/organism_layer_sweep.py [MODEL] [FIRST LAST]

For each post-instruction template position (``-1`` is the last prompt token) and each layer
in FIRST..LAST (default 6..26), the difference-of-means direction (96 + 96 train prompts) is
projected out of every writer at full weight (:func:`circuitlab.directions.layer_ablation`,
the classic experiment's edit). Printed per candidate: first-token KL on 32 harmless
validation prompts, and the cheap refusal score (mean log-odds of refusal first tokens) on 32
harmful validation prompts; candidates with KL <= 0.5 are then judged by generation on 30
JailbreakBench prompts (24 tokens, marker judge). Arditi et al. (2024) choose among
(position, layer) candidates the same way, after discarding those with high KL.
"""

import sys

import torch

from circuitlab import HookedModel
from circuitlab.activations import collect_activations
from circuitlab.directions import extract_diff_means
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.evaluate.kl import kl_divergence
from circuitlab.evaluate.layers import layer_ablation
from circuitlab.evaluate.openings import opening_token_ids, refusal_log_mass
from circuitlab.evaluate.refusals import judged_generate
from circuitlab.hooks import apply
from circuitlab.testbed import testbed_data


def main() -> None:
    torch.set_num_threads(1)
    model = HookedModel.load(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-refusal")
    first, last = (int(a) for a in sys.argv[2:4]) if len(sys.argv) > 3 else (6, 26)
    data = testbed_data()
    harmful, harmless = (
        collect_activations(model, p, positions="post_instruction")
        for p in (data.harmful_train.take(96), data.harmless_train.take(96))
    )
    harmful_val, harmless_val = list(data.harmful_val.take(32)), list(data.harmless_val.take(32))
    jbb = list(data.jailbreakbench.take(30))
    tokens = opening_token_ids(model.tokenizer)
    base_harmless = model.next_token_logprobs(harmless_val)
    base_score = refusal_log_mass(model.next_token_logprobs(harmful_val), tokens).mean().item()
    print(f"unedited: refusal score {base_score:.2f}; {harmful.shape[2]} template positions")
    print("pos  layer  refusal score   KL   JBB refused/30", flush=True)
    for pos in range(-1, -harmful.shape[2] - 1, -1):
        directions = extract_diff_means(harmful[:, :, pos], harmless[:, :, pos])
        for layer in range(first, last + 1):
            with apply(model, layer_ablation(directions, layer)):
                score = refusal_log_mass(model.next_token_logprobs(harmful_val), tokens).mean()
                kl = kl_divergence(base_harmless, model.next_token_logprobs(harmless_val)).mean()
                judged = ""
                if kl <= 0.5:
                    refused = judged_generate(model, jbb, MarkerJudge(), 24).refusals
                    judged = f"{refused:3d}"
            print(f"{pos:3d} {layer:6d} {score:14.2f} {kl:6.3f}   {judged}", flush=True)


if __name__ == "__main__":
    main()
