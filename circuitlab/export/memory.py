"""How much memory a search and an export need, on paper, and whether this machine has it.

The formula counts the large allocations only (weights, KV cache, logits, the float64
fold of one matrix, one shard); ``experiments/export_memory.py`` measures what it leaves
out (interpreter, libraries, allocator slack) on the models that run here.

Export (streamed from the source files, parity in place), on top of the loaded model:

- accelerator: the parity logits (``B x T x V`` in the model dtype and in float32) and
  one edited matrix in float64 while it is folded; the folded tensors replace the
  originals, which wait on the host.
- host: the originals of the edited tensors (embedding, every ``o_proj`` and
  ``down_proj``), the reference logits (``B x T x V x 4``), then while writing one
  source shard in and one out, plus one float64 matrix.

Search, on top of the loaded model: the KV cache (``2 x layers x kv_heads x d_head`` per
token) and first-token logits (``B x V x 4``) of a generation batch on the accelerator;
residual caches (``prompts x layers x d_model x 4``) on the host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from circuitlab.errors import CircuitlabError

__all__ = ["MemoryPlan", "ModelShape", "available_host", "check_export_memory", "plan_memory"]

GIB = 2**30
BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "8bit": 1.0, "4bit": 0.5}
# NF4 stores a float32 absmax per 64 weights (double-quantized: ~0.127 bits/weight), and
# embeddings, norms and lm_head stay in the compute dtype.
QUANT_OVERHEAD = {"4bit": 0.127 / 8, "8bit": 4 / 4096}


@dataclass(frozen=True)
class ModelShape:
    """The sizes the formula needs (read from a config or ``ModelFacts``)."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    vocab: int
    tied: bool = False

    @property
    def layer_params(self) -> int:
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads)
        return attn + 3 * self.d_model * self.d_mlp

    @property
    def embed_params(self) -> int:
        return self.vocab * self.d_model * (1 if self.tied else 2)

    @property
    def n_params(self) -> int:
        return self.n_layers * self.layer_params + self.embed_params

    @property
    def edited_params(self) -> int:
        """Embedding, every o_proj and down_proj: what an all-layer ablation edits."""
        per_layer = self.d_model * self.n_heads * self.d_head + self.d_model * self.d_mlp
        return self.n_layers * per_layer + self.vocab * self.d_model

    @property
    def largest_matrix(self) -> int:
        return max(self.d_model * self.d_mlp, self.d_model * self.n_heads * self.d_head)

    @classmethod
    def from_facts(cls, facts) -> ModelShape:
        return cls(
            facts.n_layers, facts.d_model, facts.d_mlp, facts.n_heads, facts.n_kv_heads,
            facts.d_head, facts.vocab_size, facts.tied_embeddings,
        )  # fmt: skip


@dataclass(frozen=True)
class MemoryPlan:
    """Peak memory in bytes, by phase and place."""

    weights: float
    search_accelerator: float
    search_host: float
    export_accelerator: float
    export_host: float

    def as_gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 1) for k, v in asdict(self).items()}


def plan_memory(
    shape: ModelShape,
    weights: str = "bfloat16",
    source: str = "bfloat16",
    *,
    batch: int = 16,
    prompt_tokens: int = 64,
    new_tokens: int = 100,
    parity_tokens: int = 64,
    shard_bytes: float = 5e9,
    activation_prompts: int = 512,
    on_accelerator: bool = True,
) -> MemoryPlan:
    """Peak memory of search and export for a model of ``shape``.

    Args:
        weights: how the model is loaded (``bfloat16``, ``4bit``, ...).
        source: the dtype of the source files (what the export writes).
        batch, prompt_tokens, new_tokens: the generation batch of a search trial.
        parity_tokens: tokens per parity prompt (prompt and continuation).
        shard_bytes: the largest source shard (hub models: 5 GB or less).
        activation_prompts: prompts whose residuals are cached for the directions.
        on_accelerator: False: everything is on the host (a CPU run).
    """
    compute = "bfloat16" if weights in QUANT_OVERHEAD else weights
    b_compute, b_source = BYTES[compute], BYTES[source]
    dense = shape.embed_params + shape.n_layers * 2 * shape.d_model  # embeddings, norms
    quantized = shape.n_params - dense
    if weights in QUANT_OVERHEAD:
        loaded = dense * b_compute + quantized * (BYTES[weights] + QUANT_OVERHEAD[weights])
    else:
        loaded = shape.n_params * BYTES[weights]
    kv_per_token = 2 * shape.n_layers * shape.n_kv_heads * shape.d_head * b_compute
    kv = batch * (prompt_tokens + new_tokens) * kv_per_token
    first_logits = batch * prompt_tokens * shape.vocab * b_compute + batch * shape.vocab * 4
    search_acc = kv + first_logits
    search_host = 2 * activation_prompts * shape.n_layers * shape.d_model * 4
    logits = batch * parity_tokens * shape.vocab
    matrix64 = 3 * shape.largest_matrix * 8  # original, result, product, float64
    export_acc = logits * (b_compute + 4) + matrix64
    parked = shape.edited_params * b_compute
    export_host = max(parked + logits * 4 + matrix64, 2 * shard_bytes + matrix64)
    if not on_accelerator:  # one memory: add the accelerator's share to the host's
        search_host += search_acc
        export_host = max(parked + logits * (b_compute + 8) + matrix64, 2 * shard_bytes)
        search_acc = export_acc = 0.0
    del b_source  # the written dtype changes the files, not the peak (one shard at a time)
    return MemoryPlan(loaded, search_acc, search_host, export_acc, export_host)


def available_host() -> float:
    """Bytes the host can still give (``MemAvailable``), or inf where unknown."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    return float("inf")


def check_export_memory(model, shard_bytes: float) -> MemoryPlan:
    """Raise :class:`CircuitlabError` now if this machine cannot hold the export's peak
    (on top of the model already loaded); return the plan otherwise."""
    import torch

    shape = ModelShape.from_facts(model.facts)
    dtype = str(model.hf_model.dtype).removeprefix("torch.")
    plan = plan_memory(
        shape, dtype if dtype in BYTES else "bfloat16", shard_bytes=shard_bytes,
        on_accelerator=model.on_accelerator,
    )  # fmt: skip
    host = available_host()
    if plan.export_host > host:
        raise CircuitlabError(
            f"the export needs about {plan.export_host / GIB:.1f} GiB of host memory beyond "
            f"the loaded model, {host / GIB:.1f} GiB is available: free memory, or search "
            "without exporting and export later on a larger machine"
        )
    if model.on_accelerator and torch.cuda.is_available():
        device = model.device if model.device.type == "cuda" else torch.device("cuda", 0)
        free, _ = torch.cuda.mem_get_info(device)
        if plan.export_accelerator > free:
            raise CircuitlabError(
                f"the export's parity check needs about {plan.export_accelerator / GIB:.1f} "
                f"GiB on {device}, {free / GIB:.1f} GiB is free"
            )
    return plan
