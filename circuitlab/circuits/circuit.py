"""RefusalCircuit: the ranked heads that patching found, saved as JSON, turned into edits.

A circuit lists every query head (layer, head, KV group, importance), most important
first, every KV head when they were patched, and every attention block and MLP when those
were; its :func:`head_ablation` is the head-level intervention the search and the exporter
take.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitlab._resources import atomic_write
from circuitlab.circuits.scores import BLOCK_KINDS, HeadScores, KVHeadId, LayerSite
from circuitlab.errors import CircuitlabError
from circuitlab.interventions import DirectionRef, HeadAblation
from circuitlab.models.facts import HeadId, ModelFacts

__all__ = ["CircuitBlock", "CircuitHead", "CircuitKVHead", "RefusalCircuit", "head_ablation"]

FORMAT = "circuitlab.RefusalCircuit/1"


@dataclass(frozen=True)
class CircuitHead:
    """One query head of a circuit and the importance patching gave it."""

    layer: int
    head: int
    kv_group: int
    importance: float

    @property
    def id(self) -> HeadId:
        return HeadId(self.layer, self.head)


@dataclass(frozen=True)
class CircuitKVHead:
    """One KV head (patched through ``hook_k`` + ``hook_v``) and the query heads it feeds."""

    layer: int
    kv_group: int
    heads: tuple[int, ...]
    importance: float

    @property
    def id(self) -> KVHeadId:
        return KVHeadId(self.layer, self.kv_group)


@dataclass(frozen=True)
class CircuitBlock:
    """A whole attention block (``attn``) or MLP (``mlp``) output of one layer."""

    layer: int
    kind: str
    importance: float

    @property
    def id(self) -> LayerSite:
        return LayerSite(self.layer, self.kind)


@dataclass(frozen=True)
class RefusalCircuit:
    """Heads ranked by how much refusal they carry, with what is needed to reproduce them.

    Attributes:
        model: the model it was found on (name or path as given).
        method: ``activation`` or ``attribution``.
        metric: the metric's name.
        n_layers, n_heads, n_kv_heads: the model's shape (checked when the circuit is used).
        heads: every query head, most important first.
        kv_heads: every KV head, most important first (empty if not patched).
        blocks: every attention block and MLP, most important first (empty if not patched).
        clean, counterfactual: mean metric of the harmful and the counterfactual runs.
        metadata: provenance (prompt sources and hashes, counterfactual, positions, timing).
    """

    model: str
    method: str
    metric: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    heads: tuple[CircuitHead, ...]
    kv_heads: tuple[CircuitKVHead, ...] = ()
    blocks: tuple[CircuitBlock, ...] = ()
    clean: float = 0.0
    counterfactual: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_scores(
        cls, scores: HeadScores, facts: ModelFacts, model: str, **metadata: Any
    ) -> RefusalCircuit:
        """Rank ``scores`` into a circuit; ``metadata`` is stored as given (JSON values)."""
        if (scores.n_layers, scores.n_heads) != (facts.n_layers, facts.n_heads):
            raise CircuitlabError("scores do not match the model's layers and heads")
        heads = tuple(
            CircuitHead(h.layer, h.head, facts.kv_group(h.head), value)
            for h, value in scores.ranked()
        )
        kv_heads = tuple(
            CircuitKVHead(g.layer, g.group, tuple(facts.heads_of_group(g.group)), value)
            for g, value in scores.ranked_kv()
        )
        metadata = {"n_prompts": scores.n_prompts, "n_positions": scores.n_positions, **metadata}
        return cls(
            model=model,
            method=scores.method,
            metric=scores.metric,
            n_layers=facts.n_layers,
            n_heads=facts.n_heads,
            n_kv_heads=facts.n_kv_heads,
            heads=heads,
            kv_heads=kv_heads,
            blocks=tuple(CircuitBlock(b.layer, b.kind, v) for b, v in scores.ranked_blocks()),
            clean=scores.clean,
            counterfactual=scores.counterfactual,
            metadata=metadata,
        )

    def top(self, k: int) -> tuple[CircuitHead, ...]:
        """The ``k`` most important query heads."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self.heads[:k]

    def to_scores(self) -> HeadScores:
        """The circuit's importances back as a HeadScores (e.g. to redraw its heat map)."""
        effect = torch.zeros(self.n_layers, self.n_heads)
        for h in self.heads:
            effect[h.layer, h.head] = -h.importance
        kv_effect = None
        if self.kv_heads:
            kv_effect = torch.zeros(self.n_layers, self.n_kv_heads)
            for g in self.kv_heads:
                kv_effect[g.layer, g.kv_group] = -g.importance
        block_effect = None
        if self.blocks:
            block_effect = torch.zeros(self.n_layers, len(BLOCK_KINDS))
            for b in self.blocks:
                block_effect[b.layer, BLOCK_KINDS.index(b.kind)] = -b.importance
        return HeadScores(
            method=self.method,
            metric=self.metric,
            effect=effect,
            kv_effect=kv_effect,
            clean=self.clean,
            counterfactual=self.counterfactual,
            n_prompts=int(self.metadata.get("n_prompts", 0)),
            n_positions=self.metadata.get("n_positions"),
            block_effect=block_effect,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefusalCircuit:
        if data.get("format") != FORMAT:
            raise CircuitlabError(f"not a refusal circuit (expected format {FORMAT})")
        data = {k: v for k, v in data.items() if k != "format"}
        data["heads"] = tuple(CircuitHead(**h) for h in data["heads"])
        data["kv_heads"] = tuple(
            CircuitKVHead(**{**g, "heads": tuple(g["heads"])}) for g in data.get("kv_heads", ())
        )
        data["blocks"] = tuple(CircuitBlock(**b) for b in data.get("blocks", ()))
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write the circuit as indented JSON (atomically: temp file, then rename)."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RefusalCircuit:
        """Read a circuit written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise CircuitlabError(f"circuit file not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise CircuitlabError(f"{path} is not a valid circuit: {exc}") from None


def head_ablation(
    circuit: RefusalCircuit,
    k: int,
    directions: DirectionRef,
    index: float | None = None,
    weight: float = 1.0,
) -> HeadAblation:
    """Remove the refusal direction from the outputs of the circuit's top ``k`` heads.

    Args:
        circuit: the ranked heads.
        k: how many heads (most important first).
        directions: the refusal directions (a saved set by reference, or inline).
        index: fractional layer index of the direction used at every head; ``None`` uses
            each head's own layer's direction.
        weight: fraction of the direction removed (1 = all of it).

    Returns:
        A foldable ``HeadAblation(mode="project")`` over those heads' o_proj columns.
    """
    heads = tuple(h.id for h in circuit.top(k))
    return HeadAblation(heads, mode="project", directions=directions, index=index, weight=weight)
