"""What a model is made of, read from its config and modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

__all__ = ["ModelFacts", "HeadId", "heads_of_group", "kv_group", "o_proj_columns", "read_facts"]


def kv_group(head: int, n_heads: int, n_kv_heads: int) -> int:
    """KV head read by query head ``head`` (GQA keeps ``n_heads / n_kv_heads`` per group)."""
    return head // (n_heads // n_kv_heads)


def heads_of_group(group: int, n_heads: int, n_kv_heads: int) -> list[int]:
    """The query heads that read KV head ``group`` (all of them under MQA)."""
    k = n_heads // n_kv_heads
    return list(range(group * k, (group + 1) * k))


def o_proj_columns(head: int, d_head: int) -> slice:
    """The o_proj weight columns query head ``head`` writes through (its output's share)."""
    return slice(head * d_head, (head + 1) * d_head)


@dataclass(frozen=True, order=True)
class HeadId:
    """A query head, which knows the KV group it reads (GQA-aware by construction)."""

    layer: int
    head: int

    def kv_group(self, n_heads: int, n_kv_heads: int) -> int:
        return kv_group(self.head, n_heads, n_kv_heads)


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    norm_placement: Literal["pre", "sandwich"]
    tied_embeddings: bool
    has_chat_template: bool
    n_params: int

    @property
    def heads_per_kv_group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """KV head read by query head ``head``: ``head // (n_heads / n_kv_heads)``."""
        if not 0 <= head < self.n_heads:
            raise ValueError(f"head {head} out of range [0, {self.n_heads})")
        return kv_group(head, self.n_heads, self.n_kv_heads)

    def heads_of_group(self, group: int) -> list[int]:
        return heads_of_group(group, self.n_heads, self.n_kv_heads)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kv_group_of_head"] = [self.kv_group(h) for h in range(self.n_heads)]
        return data


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers on {type(model).__name__}")
    return layers


def read_facts(model: nn.Module, has_chat_template: bool) -> ModelFacts:
    """Facts of an HF causal LM (works before or after a bridge is booted on it)."""
    config = model.config.get_text_config()
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    # Gemma 2/3 wrap each sublayer in a second RMSNorm after it ("sandwich"); Llama's
    # `post_attention_layernorm` is really the pre-MLP norm, so test the MLP post-norm.
    sandwich = hasattr(_decoder_layers(model)[0], "post_feedforward_layernorm")
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    return ModelFacts(
        architecture=(model.config.architectures or [type(model).__name__])[0],
        model_type=config.model_type,
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_mlp=config.intermediate_size,
        vocab_size=config.vocab_size,
        norm_placement="sandwich" if sandwich else "pre",
        tied_embeddings=tied,
        has_chat_template=has_chat_template,
        n_params=sum(p.numel() for p in model.parameters()),
    )
