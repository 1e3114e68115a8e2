"""circuitlab: find, test and export the internal mechanisms behind a language model's refusals."""

from circuitlab.config import Settings, load_settings
from circuitlab.engine import HookedModel
from circuitlab.errors import CircuitlabError
from circuitlab.models import HeadId, ModelFacts, ModelSpec

__version__ = "0.1.0"

__all__ = [
    "CircuitlabError",
    "HeadId",
    "HookedModel",
    "ModelFacts",
    "ModelSpec",
    "Settings",
    "load_settings",
]
