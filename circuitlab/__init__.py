"""circuitlab: find, test and export the internal mechanisms behind a language model's refusals."""

import lazy_loader

__version__ = "0.1.0"

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["Settings", "load_settings"],
        "engine": ["HookedModel"],
        "errors": ["CircuitlabError"],
        "models": ["HeadId", "ModelFacts", "ModelSpec"],
    },
)
