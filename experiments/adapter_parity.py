"""The LoRA adapter export against the hooks and the merged export, on a real edit.

Reads interventions from an export's manifest (the demo's chosen refusal edit by default)
or an interventions file, exports them as a PEFT adapter (peft loads it on the base model in
a subprocess that never imports circuitlab), folds the same edit into merged weights, and
writes every figure as JSON.

    python experiments/adapter_parity.py --model smollm2-135m-refusal \
        --interventions cache/exports/<demo export>/circuitlab_manifest.json --out /tmp/adapter.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _interventions(path: Path):
    from circuitlab.interventions import from_dict, load_interventions

    data = json.loads(path.read_text())
    if "interventions" in data and "parity" in data:  # an export manifest
        return [from_dict(item) for item in data["interventions"]]
    return list(load_interventions(path))


def main() -> None:
    from circuitlab.engine import HookedModel
    from circuitlab.export import fold, run_plain
    from circuitlab.export.adapter import ADAPTER_WEIGHTS, export_adapter
    from circuitlab.models import ModelSpec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-refusal")
    parser.add_argument("--interventions", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = HookedModel.load(ModelSpec(args.model, cache_dir=args.cache_dir))
    interventions = _interventions(args.interventions)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = export_adapter(model, interventions, Path(tmp) / "adapter")
        seconds = time.perf_counter() - start
        size = (result.path / ADAPTER_WEIGHTS).stat().st_size
    merged, merged_tokens = run_plain(fold(model, interventions).build(), result.reference)
    adapted, tokens = result.client_outputs
    figures = {
        "model": args.model,
        "interventions": result.manifest["summary"],
        "fold_vs_hooks": result.parity.as_dict(),
        "peft_vs_hooks": result.client.as_dict(),
        "peft_vs_merged_max_abs_logit_diff": max(
            (a - b).abs().max().item() for a, b in zip(adapted, merged, strict=True)
        ),
        "peft_vs_merged_greedy_identical": all(
            torch.equal(a, b) for a, b in zip(tokens, merged_tokens, strict=True)
        ),
        "adapter": result.manifest["adapter"],
        "adapter_bytes": size,
        "model_params": model.facts.n_params,
        "export_seconds": round(seconds, 1),
    }
    args.out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "adapter"}, indent=1))


if __name__ == "__main__":
    main()
