"""What a model is made of, read from its config and modules."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

__all__ = [
    "ModelFacts",
    "HeadId",
    "decoder_layers",
    "heads_of_group",
    "kv_group",
    "o_proj_columns",
    "read_facts",
]


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


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's layer list, wherever the architecture keeps it.

    ``get_decoder()`` reaches the language model inside a multimodal wrapper
    (``Gemma3ForConditionalGeneration.model.language_model``) as well as a causal LM's
    ``model``; the attribute walk covers models without it.
    """
    getter = getattr(model, "get_decoder", None)
    candidates = [getter()] if callable(getter) else []
    candidates += [getattr(model, "model", None), model]
    for inner in candidates:
        inner = getattr(inner, "original_component", inner)  # a bridge-wrapped module
        layers = getattr(inner, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    # GPT-2, GPT-NeoX, Falcon, ... name the list otherwise (``transformer.h``,
    # ``gpt_neox.layers``): the first list of as many modules as the config has layers.
    n_layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for _, module in model.named_modules():
        module = getattr(module, "original_component", module)
        if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find decoder layers on {type(model).__name__}")


def read_facts(model: nn.Module, has_chat_template: bool) -> ModelFacts:
    """Facts of an HF causal LM (works before or after a bridge is booted on it)."""
    config = model.config.get_text_config()
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    # Gemma 2/3 wrap each sublayer in a second RMSNorm after it ("sandwich"); Llama's
    # `post_attention_layernorm` is really the pre-MLP norm, so test the MLP post-norm
    # (AFMoE names it `post_mlp_layernorm`).
    first = decoder_layers(model)[0]
    first = getattr(first, "original_component", first)
    sandwich = any(hasattr(first, n) for n in ("post_feedforward_layernorm", "post_mlp_layernorm"))
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
        # MoE configs name the expert width apart; the dense width may be absent.
        d_mlp=getattr(config, "moe_intermediate_size", None)
        or getattr(config, "intermediate_size", None)
        or 4 * config.hidden_size,
        vocab_size=config.vocab_size,
        norm_placement="sandwich" if sandwich else "pre",
        tied_embeddings=tied,
        has_chat_template=has_chat_template,
        n_params=sum(p.numel() for p in model.parameters()),
    )
