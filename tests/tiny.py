"""Tiny random-init Hugging Face models for edge cases, and planted interventions to try on them.

Every builder writes an ordinary HF folder (``config.json``, safetensors, the SmolLM2
tokenizer with its ChatML template) that ``HookedModel.load(str(path))`` and plain
``from_pretrained`` both read. The vocabulary is the SmolLM2 tokenizer's (49,152 tokens), so
chat formatting works as on the real preset; at ``hidden_size=64`` the embedding is 3M
parameters and a forward pass takes milliseconds.

Norm weights are randomised too: at their init values (ones, or zeros for Gemma's
``1 + w``) every norm gain is 1 and an exporter that forgot the post-norm gain would pass.

Example:
    >>> path = tiny_llama(tmp_path / "gqa", n_heads=4, n_kv_heads=2, cache_dir=CACHE)
    >>> model = HookedModel.load(str(path))
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = [
    "TINY_KINDS",
    "example_interventions",
    "orthonormal",
    "smollm_tokenizer",
    "tiny_gemma3",
    "tiny_llama",
    "tiny_model",
]

VOCAB = 49152  # the SmolLM2 tokenizer's size: every token id has an embedding row


def smollm_tokenizer(cache_dir: Path):
    """The SmolLM2 tokenizer (ChatML template), from the preset's converted folder."""
    from transformers import AutoTokenizer

    from circuitlab.models import ModelSpec
    from circuitlab.models.loading import resolve_source

    location = resolve_source(ModelSpec("smollm2-135m", cache_dir=Path(cache_dir))).location
    return AutoTokenizer.from_pretrained(location)


def _save(model, tokenizer, path: Path, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                # Gemma norms scale by (1 + w), Llama's by w: spread both around gain 1.
                centre = 0.0 if model.config.model_type.startswith("gemma") else 1.0
                param.copy_(centre + 0.5 * torch.randn(param.shape, generator=generator))
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _token_ids(tokenizer) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }


def tiny_llama(
    path: Path,
    *,
    cache_dir: Path,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    tied: bool = True,
    n_layers: int = 3,
    hidden_size: int = 64,
    seed: int = 0,
) -> Path:
    """A random-init Llama (pre-norm) folder: GQA ``n_heads / n_kv_heads``, MHA when equal.

    Args:
        path: folder to write (created).
        cache_dir: circuitlab cache holding (or receiving) the SmolLM2 preset's tokenizer.
        tied: tie ``lm_head`` to the embedding (SmolLM2 does; most large Llamas do not).

    Returns:
        ``path``.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = smollm_tokenizer(cache_dir)
    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=hidden_size // n_heads,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        initializer_range=0.1,  # peakier logits than 0.02: fewer near-ties in greedy tests
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _save(model, tokenizer, Path(path), seed)


def tiny_gemma3(
    path: Path,
    *,
    cache_dir: Path,
    n_heads: int = 4,
    n_kv_heads: int = 1,
    n_layers: int = 3,
    hidden_size: int = 64,
    seed: int = 0,
) -> Path:
    """A random-init Gemma 3 text model folder: sandwich norms, MQA by default, tied."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    tokenizer = smollm_tokenizer(cache_dir)
    head_dim = hidden_size // n_heads
    config = Gemma3TextConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        sliding_window=64,
        initializer_range=0.1,
        **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _save(model, tokenizer, Path(path), seed)


# name -> (builder, keyword arguments); the shapes the issue asks for, and one sandwich model.
TINY_KINDS = {
    "tiny-llama-gqa-4/2": (tiny_llama, {"n_heads": 4, "n_kv_heads": 2, "tied": True}),
    "tiny-llama-mha-untied": (tiny_llama, {"n_heads": 4, "n_kv_heads": 4, "tied": False}),
    "tiny-gemma3-mqa": (tiny_gemma3, {"n_heads": 4, "n_kv_heads": 1}),
}


def tiny_model(kind: str, path: Path, cache_dir: Path, seed: int = 0) -> Path:
    """Build one of :data:`TINY_KINDS` into ``path``."""
    builder, kwargs = TINY_KINDS[kind]
    return builder(path, cache_dir=cache_dir, seed=seed, **kwargs)


# ------------------------------------------------------------------- planted interventions
def orthonormal(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """k random orthonormal vectors [k, d]."""
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def _resid_scale(model) -> float:
    """Typical residual norm (of the embedding stream), so additions are neither lost nor
    overwhelming on models whose activations differ by orders of magnitude."""
    embed = model.hf_model.get_input_embeddings()
    embed = getattr(embed, "original_component", embed)
    scale = float(getattr(embed, "embed_scale", 1.0))
    return float(embed.weight[:1000].norm(dim=-1).mean()) * scale


def example_interventions(model, kind: str, seed: int = 0) -> list:
    """Foldable interventions of one ``kind`` that visibly change the model.

    ``directional`` (a tent kernel with partial weights, embedding included: lm_head must
    be untied), ``subspace`` (a middle layer's three directions, eigenvalue-weighted, at
    every writer; ``subspace-per-layer``: each layer's own three), ``addition``
    (all positions; the embedding stream and, where a bias can carry it, a middle layer)
    and ``head`` (a projection out of two heads of one KV group, and a zeroed head).
    """
    from circuitlab.directions import DirectionSet
    from circuitlab.interventions import (
        ActivationAddition,
        DirectionalAblation,
        DirectionRef,
        HeadAblation,
        LayerKernel,
        SubspaceAblation,
    )
    from circuitlab.models import HeadId

    facts, n = model.facts, model.n_layers
    r = DirectionRef.inline(orthonormal(facts.d_model, 1, seed)[0])
    mid = n // 2
    if kind == "directional":
        tent = LayerKernel(0.9, float(mid), 0.3, float(max(n // 2, 1)))
        return [DirectionalAblation(r, index=0.0, attn=tent, mlp=LayerKernel(0.8), embed=1.0)]
    if kind in ("subspace", "subspace-per-layer"):
        vectors = torch.stack([orthonormal(facts.d_model, 3, seed + 1 + i) for i in range(n)])
        scores = torch.tensor([3.0, 2.0, 1.0]).expand(n, -1).clone()
        ds = DirectionRef.inline(DirectionSet("pca", vectors, scores))
        # One layer's subspace everywhere (as when every concept-cone direction is ablated);
        # per layer, three random directions at every writer break a model outright.
        layer = None if kind == "subspace-per-layer" else mid
        return [SubspaceAblation(ds, layer=layer, weighting="eigenvalue")]
    if kind == "addition":
        sandwich = facts.norm_placement == "sandwich"
        layers = (0,) if sandwich else (0, mid)
        strength = 0.5 * _resid_scale(model)
        return [ActivationAddition(r, strength=strength, layers=layers, index=0.0)]
    if kind == "head":
        group = facts.heads_of_group(facts.n_kv_heads - 1)  # heads sharing the last KV group
        heads = tuple(HeadId(mid, h) for h in group[:2])
        zeroed = (HeadId(n - 1, 0),)
        return [
            HeadAblation(heads, directions=r, index=0.0, weight=0.7),
            HeadAblation(zeroed, mode="zero"),
        ]
    raise ValueError(f"unknown intervention kind {kind!r}")
