"""The family matrix: one tiny random model per architecture family, and the checks each gets.

Every family is built from a config (no download): 2 layers, hidden size 64, 4 query heads
over 2 KV heads where the family has grouped attention, and a 512-token byte-level BPE
tokenizer with a ChatML template trained on a paragraph of English (the SmolLM2
tokenizer's 49k-row vocabulary made every check several times slower). The checks are the
ones a user relies on:

- ``hooks``: the bridge's logits equal plain ``transformers``' on the same weights;
- ``export``: a directional ablation (embedding, attention and MLP writers) goes through
  :func:`circuitlab.export.export` -- fold, parity against the hooks, save -- and the folder
  reloads with plain ``transformers`` as the source's class, reproducing the hooks;
- ``circuits``: a head-level ablation (a projected pair of heads sharing a KV group, and a
  zeroed head) folds into ``o_proj`` columns with parity against the hooks.

``tests/test_families.py`` asserts them; ``experiments/family_table.py`` runs the same
:func:`check_family` and renders the README's table from its results.

:data:`FAMILIES` are the families people abliterate, each with a hand-made config;
:func:`architectures` classifies every architecture TransformerLens bridges, and
``family_table.py --sweep`` runs the checks on each other one ``transformers`` can build,
from :func:`sized`'s generic tiny config.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tiny import _save, _token_ids, example_interventions

__all__ = ["FAMILIES", "build_family", "check_family"]

# Tolerance on max |Δlogit| for float32 (the export's own bar is the same order).
TOLERANCE = 1e-3
VOCAB = 512
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = (
    "Write a short poem about the sea and the wind. How do I bake bread at home? Explain "
    "why the sky is blue, step by step. Give me three tips for learning a new language. "
    "Summarise the plot of a famous novel in two sentences. What is the capital of France? "
    "I can't help with that request, but here is something else you might like instead. "
    "Sure, here is a recipe: mix the flour, water, salt and yeast, then let it rest. "
    "<think>The user asks a simple question; answer it plainly.</think> The answer is 42."
)
PROMPTS = ["Write a haiku about rain.", "How do I boil an egg?"]

_ATTN = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": VOCAB,
    "max_position_embeddings": 256,
    "initializer_range": 0.1,  # peakier logits than 0.02: fewer near-ties in greedy checks
}
_MOE = {"num_experts_per_tok": 2}
_GEMMA = {"query_pre_attn_scalar": 16, "sliding_window": 64}
_VISION = {  # the smallest SigLIP tower Gemma 3 accepts: 2x2 patches of a 28-pixel image
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
}


def sized(config_class, **extra) -> Callable[..., Any]:
    """A maker of ``config_class`` at the matrix's tiny size: the :data:`_ATTN` fields the
    config knows (GPT-2's ``n_embd`` answers to ``hidden_size``), so a family without
    grouped attention or an explicit ``head_dim`` gets neither, and each list the config
    derives from the layer count (``layer_types``) is derived again."""

    def fields(config, wanted: dict) -> dict:
        settable = lambda k: not isinstance(getattr(type(config), k, None), property)  # noqa: E731
        out = {k: v for k, v in wanted.items() if hasattr(config, k) and settable(k)}
        return out | {k: None for k in _DERIVED if k in config.to_dict()}

    def make(**ids):
        base = config_class()
        own = fields(base, {**_ATTN, **_SMALL_MOE})
        sub = getattr(base, "sub_configs", {})
        if "text_config" in sub and "vision_config" in sub:  # a multimodal wrapper
            text, vision = base.get_text_config(), getattr(base, "vision_config", None)
            own = {"text_config": {**fields(text, {**_ATTN, **_SMALL_MOE}), **extra, **ids}}
            if vision is not None:
                own["vision_config"] = {k: v for k, v in fields(vision, _VISION).items() if v}
        try:
            return config_class(**own, **extra, **ids)
        except (TypeError, ValueError):  # a config that insists on its own layer lists
            return config_class(**{k: v for k, v in own.items() if v is not None}, **extra, **ids)

    return make


_DERIVED = ("layer_types", "mlp_layer_types", "moe_layers", "no_rope_layers")
_SMALL_MOE = {  # only the fields a config has are set
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 48,
    "n_shared_experts": 1,
}
_PIXTRAL = {**_VISION, "head_dim": 16}
_LLAMA4_VISION = {
    **_VISION,
    "vision_output_dim": 32,
    "projector_input_dim": 32,
    "projector_output_dim": 32,
}
_LLAMA4_TEXT = {  # every second layer MoE (one routed expert and a shared one)
    "intermediate_size": 32,
    "intermediate_size_mlp": 128,
    "num_local_experts": 4,
    "num_experts_per_tok": 1,
    "interleave_moe_layer_step": 2,
    "attention_chunk_size": 64,
}


def _configs() -> dict[str, tuple[str, Callable[..., Any]]]:
    import transformers as tf

    def mistral3(**ids):  # Mistral Small 3.x: a Pixtral tower over a Mistral text model
        text = {**_ATTN, "model_type": "mistral", **ids}
        return tf.Mistral3Config(
            text_config=text, vision_config=_PIXTRAL, spatial_merge_size=2, **ids
        )

    def llama4(**ids):
        text = {**_ATTN, **_LLAMA4_TEXT, **ids}
        return tf.Llama4Config(text_config=text, vision_config=_LLAMA4_VISION, **ids)

    def gemma3(**ids):
        text = {**_ATTN, **_GEMMA, **ids}
        return tf.Gemma3Config(
            text_config=text, vision_config=_VISION, mm_tokens_per_image=4, **ids
        )

    def phi3(**ids):  # Phi-3 derives head_dim; its fused qkv_proj / gate_up_proj are readers
        return tf.Phi3Config(**{k: v for k, v in _ATTN.items() if k != "head_dim"}, **ids)

    return {
        "llama": ("LlamaForCausalLM", lambda **ids: tf.LlamaConfig(**_ATTN, **ids)),
        "mistral": ("MistralForCausalLM", lambda **ids: tf.MistralConfig(**_ATTN, **ids)),
        "qwen2": ("Qwen2ForCausalLM", lambda **ids: tf.Qwen2Config(**_ATTN, **ids)),
        "qwen3": ("Qwen3ForCausalLM", lambda **ids: tf.Qwen3Config(**_ATTN, **ids)),
        "phi3": ("Phi3ForCausalLM", phi3),
        "qwen3_moe": (
            "Qwen3MoeForCausalLM",
            lambda **ids: tf.Qwen3MoeConfig(
                **_ATTN, **_MOE, num_experts=4, moe_intermediate_size=32, **ids
            ),
        ),
        "mixtral": (
            "MixtralForCausalLM",
            lambda **ids: tf.MixtralConfig(**_ATTN, **_MOE, num_local_experts=4, **ids),
        ),
        "qwen2_moe": (  # routed experts plus a gated shared expert
            "Qwen2MoeForCausalLM",
            lambda **ids: tf.Qwen2MoeConfig(
                **_ATTN,
                **_MOE,
                num_experts=4,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                **ids,
            ),  # fmt: skip
        ),
        "olmoe": (
            "OlmoeForCausalLM",
            lambda **ids: tf.OlmoeConfig(
                **{k: v for k, v in _ATTN.items() if k != "head_dim"},
                **_MOE,
                num_experts=4,
                **ids,
            ),  # fmt: skip
        ),
        "gpt_oss": (  # input-major fused experts with biases, attention sinks
            "GptOssForCausalLM",
            lambda **ids: tf.GptOssConfig(
                **{**_ATTN, "intermediate_size": 32},
                **_MOE,
                num_local_experts=4,
                sliding_window=64,
                **ids,
            ),  # fmt: skip
        ),
        "gemma2": ("Gemma2ForCausalLM", lambda **ids: tf.Gemma2Config(**_ATTN, **_GEMMA, **ids)),
        "gemma3_text": (
            "Gemma3ForCausalLM",
            lambda **ids: tf.Gemma3TextConfig(**_ATTN, **_GEMMA, **ids),
        ),
        "gemma3": ("Gemma3ForConditionalGeneration", gemma3),
        "gemma": ("GemmaForCausalLM", sized(tf.GemmaConfig)),
        "gpt2": ("GPT2LMHeadModel", sized(tf.GPT2Config)),  # Conv1D writers: [in, out]
        "gpt_neox": ("GPTNeoXForCausalLM", sized(tf.GPTNeoXConfig)),  # Pythia; parallel
        "falcon": ("FalconForCausalLM", sized(tf.FalconConfig)),  # multi-query, parallel
        "phi": ("PhiForCausalLM", sized(tf.PhiConfig)),  # parallel, biased writers
        "granite": ("GraniteForCausalLM", sized(tf.GraniteConfig)),  # residual multiplier
        "cohere": ("CohereForCausalLM", sized(tf.CohereConfig)),  # parallel, logit scale
        "olmo2": ("Olmo2ForCausalLM", sized(tf.Olmo2Config)),  # norms after each sublayer
        "stablelm": ("StableLmForCausalLM", sized(tf.StableLmConfig)),
        "mistral3": ("Mistral3ForConditionalGeneration", mistral3),
        "llama4": ("Llama4ForConditionalGeneration", llama4),
    }


FAMILIES: tuple[str, ...] = tuple(_configs())

# Config fields a swept architecture needs beyond the generic tiny size (where its default
# derives a size that does not fit hidden 64 / 4 heads).
SWEEP_FIELDS: dict[str, dict[str, Any]] = {
    "GPTJForCausalLM": {"rotary_dim": 8},  # the default 64 exceeds a 16-wide head
    "CodeGenForCausalLM": {"rotary_dim": 8},
    "GPTNeoForCausalLM": {"attention_types": [[["global", "local"], 1]]},  # one per layer
    "AfmoeForCausalLM": {"num_dense_layers": 0},
}


def architectures() -> list[dict[str, str]]:
    """Every architecture TransformerLens 4.3 bridges, and how the matrix covers it.

    Returns:
        ``architecture``, ``model_type`` (``""`` when ``transformers`` lacks the class) and
        ``kind``: ``matrix`` (a hand-made tiny config in :data:`FAMILIES`, tested), ``sweep``
        (built from :func:`sized`'s generic tiny config by ``family_table.py --sweep``),
        ``remote code`` (not in ``transformers``: only a hub download with
        ``trust_remote_code`` builds it, so nothing offline can) or ``not a text generator``
        (refused by the loader before any weight loads).
    """
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    from circuitlab.models.support import generative, model_types

    tested = {architecture for architecture, _ in _configs().values()}
    types = model_types()
    out = []
    for architecture in sorted(SUPPORTED_ARCHITECTURES):
        model_type = types.get(architecture, "")
        verdict = generative(architecture)
        kind = (
            "matrix" if architecture in tested
            else "remote code" if verdict is None
            else "sweep" if verdict
            else "not a text generator"
        )  # fmt: skip
        out.append({"architecture": architecture, "model_type": model_type, "kind": kind})
    return out


def sweep_configs() -> dict[str, tuple[str, Callable[..., Any]]]:
    """Family name -> (architecture, config maker) for every ``sweep`` architecture."""
    import transformers

    out: dict[str, tuple[str, Callable[..., Any]]] = {}
    for row in architectures():
        if row["kind"] == "sweep":
            taken = row["model_type"] in out or row["model_type"] in FAMILIES
            name = row["architecture"] if taken else row["model_type"]
            config_class = getattr(transformers, row["architecture"]).config_class
            fields = SWEEP_FIELDS.get(row["architecture"], {})
            out[name] = (row["architecture"], sized(config_class, **fields))
    return out


@functools.cache
def tiny_tokenizer():
    """A byte-level BPE tokenizer of :data:`VOCAB` tokens with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([CORPUS] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def _family_config(family: str) -> tuple[str, Callable[..., Any]]:
    configs = _configs()
    return configs[family] if family in configs else sweep_configs()[family]


def build_family(family: str, path: Path, cache_dir: Path | None = None, seed: int = 0) -> Path:
    """Write a tiny random model of ``family`` (an HF folder with :func:`tiny_tokenizer`)."""
    import transformers

    tokenizer = tiny_tokenizer()
    architecture, make = _family_config(family)
    torch.manual_seed(seed)
    # The named class, not an Auto class: Llama 4's causal mapping would build the text model.
    model_class = getattr(transformers, architecture)
    model = model_class._from_config(make(**_token_ids(tokenizer)), dtype=torch.float32)
    return _save(model, tokenizer, Path(path), seed)


def _vision_weights(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "vision" in k or "projector" in k}


@torch.no_grad()
def _bridge_vs_hf(model, plain) -> float:
    ids = torch.tensor([[1, 200, 300, 450, 17, 9, 502, 31]])
    return (model.bridge(ids).float() - plain(ids).logits.float()).abs().max().item()


def _fold_parity(model, interventions) -> float:
    from circuitlab.export import compare, fold, reference, run_plain

    ref = reference(model, interventions, PROMPTS, max_new_tokens=4)
    return compare(ref, *run_plain(fold(model, interventions).build(), ref)).max_abs_logit_diff


def check_family(family: str, work: Path, cache_dir: Path) -> dict[str, Any]:
    """Run the family's checks; every figure in the result is measured, none asserted here.

    Returns:
        ``family``, ``architecture``, ``bridge_vs_hf`` (max |Δlogit|), ``ablation_effect``
        (how far the hooks move the logits), ``export_parity`` (reloaded export vs hooks),
        ``reload_class``, ``head_parity`` (None without heads), ``vision_identical`` (None
        without a vision tower), ``moe``, ``seconds``; or ``error`` when a stage raised.
    """
    import transformers

    from circuitlab.engine import HookedModel
    from circuitlab.export import ExportOptions, compare, export, reference, run_plain
    from circuitlab.export.fold import layout

    start = time.perf_counter()
    architecture = _family_config(family)[0]
    model_class = getattr(transformers, architecture)
    result: dict[str, Any] = {"family": family, "architecture": architecture}
    stage = "build"
    try:
        path = build_family(family, work / family, cache_dir)
        stage = "load"
        plain = model_class.from_pretrained(path, dtype=torch.float32).eval()
        model = HookedModel.load(str(path))
        result["bridge_vs_hf"] = _bridge_vs_hf(model, plain)
        result["moe"] = layout(model).moe
        stage = "export"
        ablation = example_interventions(model, "directional")
        options = ExportOptions(prompts=PROMPTS, max_new_tokens=4)
        out = export(model, ablation, work / f"{family}-export", options)
        # Reloaded as the class the export's config names (what a user's pipeline reads).
        named = transformers.AutoConfig.from_pretrained(out.path).architectures[0]
        reloaded = getattr(transformers, named).from_pretrained(out.path, dtype=torch.float32)
        reloaded.eval()
        result["reload_class"] = type(reloaded).__name__
        ref = reference(model, ablation, PROMPTS, max_new_tokens=4)
        result["export_parity"] = compare(ref, *run_plain(reloaded, ref)).max_abs_logit_diff
        clean = run_plain(plain, ref)[0]
        result["ablation_effect"] = max(
            (a - b).abs().max().item() for a, b in zip(ref.logits, clean, strict=True)
        )
        vision = _vision_weights(plain)
        result["vision_identical"] = (
            None
            if not vision
            else all(torch.equal(v, _vision_weights(reloaded)[k]) for k, v in vision.items())
        )
        stage = "circuits"
        result["head_parity"] = _fold_parity(model, example_interventions(model, "head"))
    except Exception as exc:  # noqa: BLE001 - a family's failure is a result, recorded
        result["error"] = f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def passes(result: dict[str, Any]) -> dict[str, bool]:
    """Which columns of the family table a result earns (hooks / circuits / export)."""

    def small(key: str) -> bool:
        value = result.get(key)
        return value is not None and value <= TOLERANCE

    export_ok = (
        small("export_parity")
        and result.get("reload_class") == result["architecture"]
        and result.get("vision_identical") is not False
    )
    return {"hooks": small("bridge_vs_hf"), "circuits": small("head_parity"), "export": export_ok}
