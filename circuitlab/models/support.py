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
    "check_export_family",
    "check_generative",
    "generative",
    "model_types",
]

# model_type -> why a directional edit does not fold exactly (measured on a tiny model by
# ``python experiments/family_table.py --sweep``; the hooks still apply, the search runs,
# but an export would fail its parity check after the whole run).
EXPORT_REFUSED: dict[str, str] = {
    "afmoe": "its MoE block scales the routed experts' sum after they write, which the fold "
    "does not see",
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

    found: dict[str, str] = {}
    for name in dir(auto):
        mapping = getattr(auto, name)
        if name.endswith("_MAPPING_NAMES") and isinstance(mapping, dict):
            for model_type, classes in mapping.items():
                for cls in classes if isinstance(classes, tuple | list) else (classes,):
                    found.setdefault(cls, model_type)
    return found


def check_generative(architectures: list[str], model_type: str) -> None:
    """Refuse, in one line, a model that is not a text generator (an encoder, a translation
    or speech model, an image classifier, a base model without its LM head).

    Raises:
        UnsupportedArchitectureError: naming the architecture and its family.
    """
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
            f"cannot export {model_type} models: {reason} (hooks, search and circuits work; "
            "export the intervention as JSON and apply it with hooks instead)"
        )
