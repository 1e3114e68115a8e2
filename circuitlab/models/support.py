"""Which architectures circuitlab can edit, decided from the config before any weight loads.

TransformerLens 4.3 bridges about 160 architectures, encoders, translation models, speech
and vision classifiers among them; circuitlab abliterates decoder-only language models and
the language model inside a multimodal chat wrapper. The family matrix
(``tests/test_families.py``, ``experiments/family_table.py``) builds a tiny model of every
bridged architecture that ``transformers`` can build offline and measures what folds
exactly; what it found that a user must hear before a long run is written down here.
"""

from __future__ import annotations

import functools

from circuitlab.errors import UnsupportedArchitectureError

__all__ = [
    "EXPORT_REFUSED",
    "UNSUPPORTED",
    "check_export_family",
    "check_generative",
    "generative",
    "model_types",
]

# model_type -> why circuitlab cannot work on it at all: refused before any weight loads.
UNSUPPORTED: dict[str, str] = {
    model_type: "it has no attention layers (a state-space or recurrent model), and "
    "circuitlab's heads, directions and folds are read from attention blocks"
    for model_type in ("mamba", "mamba2", "falcon_mamba", "rwkv")
}

_HYBRID = (
    "some of its blocks mix tokens without attention (linear attention, state-space or "
    "recurrent layers), which have no attention output projection to fold into"
)
# model_type -> why a directional edit cannot be folded exactly (what the family matrix's
# sweep found, ``python experiments/family_table.py --sweep``). The exporter refuses them
# before a search starts, rather than after a run whose export would fail.
EXPORT_REFUSED: dict[str, str] = {
    **{
        model_type: _HYBRID
        for model_type in (
            "bamba",
            "falcon_h1",
            "granitemoehybrid",
            "jamba",
            "nemotron_h",
            "olmo_hybrid",
            "qwen3_next",
            "qwen3_5",
            "qwen3_5_text",
            "qwen3_5_moe",
            "qwen3_5_moe_text",
            "recurrent_gemma",
            "zamba2",
        )
    },  # fmt: skip
    "jetmoe": "its attention is itself a mixture of experts (no single output projection)",
    "openai-gpt": "its HF model keeps no KV cache, which the export's parity check decodes with",
    "bert": "its HF decoder fails to generate under the export's parity check",
    "muse_glimmer": "its fold missed the hooks on the family matrix's tiny model (cause not "
    "found yet)",
}


def generative(architecture: str) -> bool | None:
    """Whether ``transformers`` lists ``architecture`` as a causal or image-text-to-text LM
    (read from its auto mappings: no modelling module is imported).

    Returns:
        None when ``transformers`` has no such class (remote code: nothing to judge by).
    """
    from transformers.models.auto import modeling_auto as auto

    if architecture not in _transformers_names():
        return None
    generators = set(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    generators |= set(auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())
    return architecture in generators


@functools.cache
def _transformers_names() -> frozenset[str]:
    import transformers

    return frozenset(dir(transformers))  # the lazy module lists every name it can import


def model_types() -> dict[str, str]:
    """Architecture class name -> its ``model_type``, from ``transformers``' auto mappings."""
    from transformers.models.auto import modeling_auto as auto

    candidates: dict[str, set[str]] = {}
    for name in dir(auto):
        mapping = getattr(auto, name)
        if name.endswith("_MAPPING_NAMES") and isinstance(mapping, dict):
            for model_type, classes in mapping.items():
                for cls in classes if isinstance(classes, tuple | list) else (classes,):
                    candidates.setdefault(cls, set()).add(model_type)

    # Several model types reuse one class (internlm3 and llama -> LlamaForCausalLM): the
    # class's own is the one its name starts with.
    def plain(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    def shared_prefix(cls: str, model_type: str) -> int:
        a, b = plain(cls), plain(model_type)
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(b))

    return {
        cls: max(sorted(types), key=lambda t: (shared_prefix(cls, t), -len(t)))
        for cls, types in candidates.items()
    }


def check_generative(architectures: list[str], model_type: str) -> None:
    """Refuse, in one line, a model that is not a text generator (an encoder, a translation
    or speech model, an image classifier, a base model without its LM head) or has no
    attention (:data:`UNSUPPORTED`).

    Raises:
        UnsupportedArchitectureError: naming the architecture and its family.
    """
    reason = UNSUPPORTED.get(model_type)
    if reason is not None:
        raise UnsupportedArchitectureError(
            f"{(architectures or [model_type])[0]} ({model_type}) is not supported: {reason}"
        )
    verdicts = [generative(a) for a in architectures]
    if verdicts and all(v is False for v in verdicts):
        raise UnsupportedArchitectureError(
            f"{architectures[0]} ({model_type}) is not a decoder-only language model in "
            "transformers (an encoder, encoder-decoder, speech or vision model, or one without "
            "its LM head): circuitlab edits models that generate text, e.g. *ForCausalLM"
        )


def check_export_family(model_type: str) -> None:
    """Refuse, in one line, a family whose edits are known not to fold exactly.

    Raises:
        UnsupportedArchitectureError: naming the family and the reason.
    """
    reason = EXPORT_REFUSED.get(model_type)
    if reason is not None:
        raise UnsupportedArchitectureError(
            f"cannot export {model_type} models: {reason}; the export would fail its parity "
            "check after the whole run"
        )
