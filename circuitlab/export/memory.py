"""How much memory a search and an export need, on paper, and whether this machine has it.

The formula counts the large allocations (weights, KV cache, logits, the float64 fold of
one matrix, one tensor of a shard); ``experiments/export_memory.py`` measures the rest
(interpreter, libraries, allocator slack) on the models that run here. ``P`` parity
positions (16 prompts x their tokens), ``V`` vocabulary, ``b`` bytes per weight:

Export (parity in place, then the source files folded tensor by tensor):

- accelerator, beyond the loaded model: one batch's full logits (``B x T x V x b``), their
  float32 copy at real positions (``P x V x 4``) and the greedy steps' scores
  (``2 x 16 x B x V x 4``). The folded tensors take the place of the originals, which
  are freed and read back from the source files afterwards (or parked on the host when
  the files hold other bits); a tied embedding stays, so its folded copy is extra, and
  so do a quantized load's edited tensors (their re-quantized copies are extra).
- host: the reference and folded logits (``2 x P x V x 4``), one matrix folded in
  float64 (three ``d x d_mlp`` float64 buffers), and while writing one stored tensor,
  its folded copy (and ``lm_head``'s copy of the embedding when untied).

Search, beyond the loaded model: the KV cache (``2 x layers x kv_heads x d_head x b`` per
token) of a generation batch and its first-token logits on the accelerator; residual
caches (``prompts x layers x d_model x 4`` per prompt set) on the host.
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
    *,
    batch: int = 16,
    prompt_tokens: int = 64,
    new_tokens: int = 100,
    parity_tokens: int = 48,
    activation_prompts: int = 512,
    on_accelerator: bool = True,
) -> MemoryPlan:
    """Peak memory of search and export for a model of ``shape``.

    Args:
        weights: how the model is loaded (``bfloat16``, ``float32``, ``4bit``, ``8bit``).
        batch, prompt_tokens, new_tokens: the generation batch of a search trial.
        parity_tokens: real tokens per parity prompt (16 prompts, 16 new tokens each).
        activation_prompts: prompts per set whose residuals are cached for the directions.
        on_accelerator: False: one memory (a CPU run); the accelerator's share is the host's.
    """
    quantized = weights in QUANT_OVERHEAD
    b = BYTES["bfloat16"] if quantized else BYTES[weights]
    dense = shape.embed_params + shape.n_layers * 2 * shape.d_model  # embeddings, norms
    if quantized:
        bits = BYTES[weights] + QUANT_OVERHEAD[weights]
        loaded = dense * b + (shape.n_params - dense) * bits
    else:
        loaded = shape.n_params * b
    v, positions = shape.vocab, 16 * parity_tokens
    kv_per_token = 2 * shape.n_layers * shape.n_kv_heads * shape.d_head * b
    search_acc = batch * (prompt_tokens + new_tokens) * kv_per_token + batch * v * 4
    search_host = 2 * activation_prompts * shape.n_layers * shape.d_model * 4
    full_logits = 16 * parity_tokens * 1.3 * v * b  # padded to the longest prompt
    scores = 2 * 16 * 16 * v * 4
    tied_copy = shape.vocab * shape.d_model * b if shape.tied else 0.0
    # The full logits are freed before the greedy steps' scores are kept: one or the other.
    export_acc = max(full_logits + positions * v * 4, scores) + tied_copy
    if quantized:  # the re-quantized folded tensors sit beside the originals
        export_acc += shape.edited_params * (BYTES[weights] + QUANT_OVERHEAD[weights])
    matrix64 = 3 * shape.largest_matrix * 8
    embed = shape.vocab * shape.d_model * BYTES["bfloat16" if quantized else weights]
    write = 3 * embed if shape.tied else 2 * embed
    export_host = max(2 * positions * v * 4 + matrix64, write + matrix64)
    if not on_accelerator:
        search_host, search_acc = search_host + search_acc, 0.0
        export_host = max(2 * positions * v * 4 + matrix64 + export_acc, write + matrix64)
        export_acc = 0.0
    return MemoryPlan(loaded, search_acc, search_host, export_acc, export_host)


def available_host() -> float:
    """Bytes the host can still give (``MemAvailable``), or inf where unknown."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    return float("inf")


def check_export_memory(model) -> MemoryPlan:
    """Raise :class:`CircuitlabError` now if this machine cannot hold the export's peak
    (on top of the model already loaded); return the plan otherwise."""
    import torch

    shape = ModelShape.from_facts(model.facts)
    dtype = str(model.hf_model.dtype).removeprefix("torch.")
    plan = plan_memory(
        shape, dtype if dtype in BYTES else "bfloat16", on_accelerator=model.on_accelerator
    )
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
