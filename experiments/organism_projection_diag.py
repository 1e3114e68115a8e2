"""Why does ablating the organism's refusal direction cost so much harmless KL?

Usage: .venv/bin/python experiments/organism_projection_diag.py [LAYER] [MODEL]

Prints, every third layer, the mean projection of harmful and harmless last-token residuals on
the difference-of-means direction of LAYER (default 21) and the harmless spread along it;
then first-token KL on 32 held-out harmless prompts and refusals on 30 JailbreakBench prompts
(32 tokens, marker judge) for four edits made with raw hooks at every ``hook_resid_pre``:
projecting the direction out, affine ablation (the projection set to the harmless mean at
that layer; Marshall et al. 2024, "Refusal in LLMs is an affine function"), and both
restricted to layers >= 8 (the layers the organism's fine-tuning changed).
"""

import sys

import torch

from circuitlab import HookedModel
from circuitlab.activations import collect_activations, select_position
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.refusals import judged_generate
from circuitlab.testbed import testbed_data


def main() -> None:
    torch.set_num_threads(1)
    layer = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    model = HookedModel.load(sys.argv[2] if len(sys.argv) > 2 else "smollm2-135m-refusal")
    data = testbed_data()
    harmful, harmless = (
        select_position(collect_activations(model, p)).double()
        for p in (data.harmful_train.take(96), data.harmless_train.take(96))
    )
    r = harmful[:, layer].mean(0) - harmless[:, layer].mean(0)
    r = r / r.norm()
    print("layer  harmful mean  harmless mean  harmless std  (projections on r)")
    harmless_mean = []
    for i in range(model.n_layers):
        on_harmful, on_harmless = harmful[:, i] @ r, harmless[:, i] @ r
        harmless_mean.append(on_harmless.mean().item())
        if i % 3 == 0 or i == layer:
            print(
                f"{i:5d} {on_harmful.mean():13.2f} {on_harmless.mean():14.2f} "
                f"{on_harmless.std():13.2f}"
            )
    unit = r.float()
    base = KLBaseline.compute(model, list(data.harmless_test.take(32)), k=1)
    jbb = list(data.jailbreakbench.take(30))

    def run(name: str, target, layers) -> None:
        def hook(i: int):
            def fn(x, hook):
                offset = 0.0 if target is None else target[i]
                return x - ((x @ unit) - offset)[..., None] * unit

            return fn

        with model.hooks([(f"blocks.{i}.hook_resid_pre", hook(i)) for i in layers]):
            kl = base.score(model).first_token
            refused = judged_generate(model, jbb, MarkerJudge(), 32).refusals
        print(f"{name}: first-token KL {kl:.3f}, JailbreakBench refused {refused}/30", flush=True)

    before = judged_generate(model, jbb, MarkerJudge(), 32).refusals
    print(f"unedited: JailbreakBench refused {before}/30", flush=True)
    every, upper = range(model.n_layers), range(8, model.n_layers)
    run("ablation, every resid_pre", None, every)
    run("affine (harmless mean), every resid_pre", harmless_mean, every)
    run("affine, layers >= 8", harmless_mean, upper)
    run("ablation, layers >= 8", None, upper)


if __name__ == "__main__":
    main()
