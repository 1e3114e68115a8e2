"""Circuit discovery: which attention heads carry refusal, found by patching.

``activation_patching`` (exact, one pass per head) and ``attribution_patching`` (first
order, one forward and backward pass per batch) score every query head and every KV head
into :class:`HeadScores`; :class:`RefusalCircuit` ranks and saves them, and
:func:`head_ablation` turns its top heads into a foldable head-level intervention;
:func:`joint_patching` patches whole groups (top heads, attention layers, MLPs) at once.
"""

import lazy_loader

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "circuit": [
            "CircuitBlock",
            "CircuitHead",
            "CircuitKVHead",
            "RefusalCircuit",
            "head_ablation",
        ],
        "localise": ["GroupEffect", "joint_patching", "localisation_groups"],
        "metrics": ["DirectionMetric", "Metric", "RefusalTokenMetric"],
        "agreement": ["AgreementCheck", "check_agreement", "refine"],
        "patching": ["activation_patching", "attribution_patching"],
        "scores": [
            "BLOCK_KINDS",
            "HeadScores",
            "KVHeadId",
            "LayerSite",
            "RankAgreement",
            "head_scores_figure",
            "plot_head_scores",
            "rank_agreement",
            "site_agreement",
        ],
        "sources": [
            "Counterfactual",
            "PatchSource",
            "patch_hooks",
            "patched_positions",
            "record_source",
        ],
    },
)
