"""Model presets, loading and facts."""

import lazy_loader

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "facts": ["HeadId", "ModelFacts", "read_facts"],
        "loading": ["ModelSpec", "ResolvedSource", "convert_gguf", "load_hf"],
        "presets": ["PRESETS", "Preset", "get_preset", "register_preset"],
        "support": ["EXPORT_REFUSED", "check_generative"],
    },
)
