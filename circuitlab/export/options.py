"""How an export is checked and written, as one value shared by both export formats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ExportOptions"]


@dataclass(frozen=True)
class ExportOptions:
    """The options of :func:`circuitlab.export.export` and
    :func:`circuitlab.export.adapter.export_adapter`; each format ignores the other's.

    Attributes:
        prompts: held-out prompts of the parity check (None: ``HELD_OUT_PROMPTS``).
        chat: chat-format those prompts (None: when the model has a chat template).
        tolerance: bound on max |Δlogit|; None fits it to the dtype (``derive_tolerance``).
        max_new_tokens: length of the parity check's greedy continuations.
        force: replace the destination if it is an earlier export (or empty).
        seed: the seed the interventions were found with, for the manifest.
        command: the command line that reproduces the export, for the model card.
        progress: a bar over the parity check's passes (stderr).
        max_shard_size: merged weights: bound per safetensors file of the in-memory path
            (the streamed path keeps the source's shards).
        stream: merged weights: fold the source safetensors shard by shard (None: whenever
            the model has them; False: fold the loaded weights in memory).
        client: adapter: also load it with plain peft on the base model in a subprocess
            and compare its logits with the hooks (loads the base a second time).
    """

    prompts: Sequence[str] | None = None
    chat: bool | None = None
    tolerance: float | None = None
    max_new_tokens: int = 16
    force: bool = False
    seed: int | None = None
    command: str | None = None
    progress: bool = False
    max_shard_size: str | int = "4GB"
    stream: bool | None = None
    client: bool = True

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompts"] = None if self.prompts is None else list(self.prompts)
        return data
