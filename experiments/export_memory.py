"""Peak host memory of an export: what the fold, the parity proof and the write add on top
of the loaded model.

Each measurement runs in a fresh process: load the model, run one forward pass, reset the
kernel's high-water mark (``/proc/self/clear_refs``), export one directional ablation
(embedding, every ``o_proj`` and ``down_proj``: the most tensors an ablation edits), and
read the high-water mark again. The JSON gives the resident size before the export, the
peak during it, and their difference (the export's own memory).

    .venv/bin/python experiments/export_memory.py --model smollm2-135m --json out.json
    .venv/bin/python experiments/export_memory.py --tiny-shards /tmp/shards --json out.json

``--tiny-shards DIR`` first builds a random-init Llama (4 layers, d_model 256, untied) saved
in 8 MB shards, the multi-shard case. Works against any circuitlab whose ``export`` takes
``(model, interventions, out)``, so the same script measures before and after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _status(field: str) -> float:
    """A /proc/self/status figure (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def build_tiny_shards(path: Path, cache_dir: Path, shard: str = "8MB") -> Path:
    """A random-init, untied Llama saved in several safetensors shards (with an index)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from circuitlab.models import ModelSpec
    from circuitlab.models.loading import resolve_source

    if (path / "config.json").is_file():
        return path
    location = resolve_source(ModelSpec("smollm2-135m", cache_dir=cache_dir)).location
    tokenizer = AutoTokenizer.from_pretrained(location)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(path, max_shard_size=shard)
    tokenizer.save_pretrained(path)
    return path


def _phased(model, interventions, out: Path, before: float):
    """export(), stage by stage, with the peak of each stage above ``before`` (new API)."""
    from circuitlab.export import ExportResult, manifest, plan_fold, save_streamed
    from circuitlab.export import verify_in_place as verify
    from circuitlab.models.loading import source_files

    phases = {}
    plan = plan_fold(model, interventions)
    files = source_files(model.resolved)
    _reset_peak()
    parity, digests = verify(model, interventions, plan, files)
    phases["parity"] = _status("VmHWM") - before
    data = manifest(model, interventions, plan, parity)
    _reset_peak()
    path = save_streamed(plan, model, files, out, data, digests=digests)
    phases["write"] = _status("VmHWM") - before
    return ExportResult(path, parity, data), phases


def measure(source: str, cache_dir: Path, dtype: str, phased: bool = False) -> dict:
    from circuitlab.engine import HookedModel
    from circuitlab.export import ExportOptions, export
    from circuitlab.interventions import DirectionalAblation, DirectionRef
    from circuitlab.models import ModelSpec

    model = HookedModel.load(ModelSpec(source, cache_dir=cache_dir, dtype=dtype))
    d = model.facts.d_model
    direction = torch.randn(d, generator=torch.Generator().manual_seed(0))
    ablation = DirectionalAblation(DirectionRef.inline(direction / direction.norm()), index=0.0)
    model.next_token_logprobs(["warm-up"], chat=False)  # allocator pools, lazy buffers
    before = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    phases = {}
    with tempfile.TemporaryDirectory() as tmp:
        tolerance = {"float32": 1e-3}.get(dtype)
        options = ExportOptions(tolerance=tolerance)
        if phased:
            result, phases = _phased(model, [ablation], Path(tmp) / "out", before)
        else:
            result = export(model, [ablation], Path(tmp) / "out", options)
        files = sorted(p.name for p in result.path.iterdir())
    seconds = time.perf_counter() - start
    peak = max([_status("VmHWM"), *(before + v for v in phases.values())])
    weights = sum(p.numel() * p.element_size() for p in model.hf_model.parameters())
    return {
        "model": source,
        "dtype": dtype,
        "n_params": model.facts.n_params,
        "weights_mib": round(weights / 2**20, 1),
        "rss_before_export_mib": round(before, 1),
        "peak_during_export_mib": round(peak, 1),
        "export_extra_mib": round(peak - before, 1),
        "extra_per_weights": round((peak - before) / (weights / 2**20), 2),
        "seconds": round(seconds, 1),
        "phase_extra_mib": {k: round(v, 1) for k, v in phases.items()},
        "parity": result.parity.as_dict(),
        "files": files,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="preset, folder or hub id")
    parser.add_argument("--tiny-shards", type=Path, help="build (once) and use a sharded tiny")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--phases", action="store_true", help="peak per stage (parity, write): new API only"
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("CIRCUITLAB_THREADS", "1")))
    source = args.model
    if args.tiny_shards is not None:
        source = str(build_tiny_shards(args.tiny_shards, args.cache_dir))
    if source is None:
        parser.error("give --model or --tiny-shards")
    figures = measure(source, args.cache_dir, args.dtype, args.phases)
    text = json.dumps(figures, indent=1)
    print(text)  # noqa: T201 - the script's output
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
