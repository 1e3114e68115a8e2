"""Circuit discovery: which attention heads carry refusal, found by patching.

``activation_patching`` (exact, one pass per head) and ``attribution_patching`` (first
order, one forward and backward pass per batch) score every query head and every KV head
into :class:`HeadScores`; :class:`RefusalCircuit` ranks and saves them, and
:func:`head_ablation` turns its top heads into a foldable head-level intervention.
"""

from circuitlab.circuits.circuit import (
    CircuitBlock,
    CircuitHead,
    CircuitKVHead,
    RefusalCircuit,
    head_ablation,
)
from circuitlab.circuits.metrics import DirectionMetric, Metric, RefusalTokenMetric
from circuitlab.circuits.patching import (
    AgreementCheck,
    activation_patching,
    attribution_patching,
    check_agreement,
    refine,
)
from circuitlab.circuits.scores import (
    BLOCK_KINDS,
    HeadScores,
    KVHeadId,
    LayerSite,
    RankAgreement,
    head_scores_figure,
    plot_head_scores,
    rank_agreement,
    site_agreement,
)
from circuitlab.circuits.sources import (
    Counterfactual,
    PatchSource,
    patch_hooks,
    patched_positions,
    record_source,
)

__all__ = [
    "BLOCK_KINDS",
    "AgreementCheck",
    "CircuitBlock",
    "LayerSite",
    "check_agreement",
    "refine",
    "site_agreement",
    "CircuitHead",
    "CircuitKVHead",
    "Counterfactual",
    "DirectionMetric",
    "HeadScores",
    "KVHeadId",
    "Metric",
    "PatchSource",
    "RankAgreement",
    "RefusalCircuit",
    "RefusalTokenMetric",
    "activation_patching",
    "attribution_patching",
    "head_ablation",
    "head_scores_figure",
    "patch_hooks",
    "patched_positions",
    "plot_head_scores",
    "rank_agreement",
    "record_source",
]
