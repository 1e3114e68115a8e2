"""Build a judge from plain options (what the CLI, the search and a scorecard record)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from circuitlab.evaluate.agreement import with_agreement
from circuitlab.evaluate.classifier import ClassifierJudge
from circuitlab.evaluate.judges import CombinedJudge, Judge, MarkerJudge
from circuitlab.evaluate.model_judges import model_judge
from circuitlab.evaluate.nli import DEFAULT_NLI_MODEL, NLIJudge

__all__ = ["JudgeOptions", "build_judge", "JUDGE_KINDS"]

JudgeKind = Literal["markers", "classifier", "combined", "nli", "model"]
JUDGE_KINDS: tuple[str, ...] = ("markers", "classifier", "combined", "nli", "model")


@dataclass(frozen=True)
class JudgeOptions:
    """Which judge, and how it is tuned.

    Attributes:
        kind: ``markers`` (phrases), ``classifier`` (local MiniLM + logistic regression),
            ``combined`` (markers ``combine_rule`` classifier), ``nli`` (zero-shot model) or
            ``model`` (``model_judge``: a sequence classifier or an LLM with a rubric).
        user_markers: extra refusal phrases for the marker judge.
        threshold: confidences below this are reported as uncertain.
        combine_rule: ``first`` (markers decide where they are sure, the classifier
            elsewhere), ``or`` (a refusal if either judge says so) or ``and``.
        model_judge: the model judge's spec (see
            :func:`~circuitlab.evaluate.model_judges.model_judge`).
        model_judge_for_search: also use the model judge in search trials; off by default
            (trials use markers, the final scorecard the model judge).
        use_neural_refusal_detection: add the NLI judge to the chosen judge with ``or``
            (a second opinion for refusals phrases cannot catch).
        neural_detection_model: the NLI model (hub id or folder).
        neural_detection_for_optuna: also use NLI inside search trials; off by default,
            since it is slow, so trials use the cheaper judge and the final scorecard NLI.
        neural_device: device of the NLI model (may differ from the model under test).
        neural_batch_size: NLI pairs per forward pass.
    """

    kind: JudgeKind = "markers"
    user_markers: tuple[str, ...] = ()
    threshold: float = 0.5
    combine_rule: Literal["first", "or", "and"] = "first"
    model_judge: str = "rubric"
    model_judge_for_search: bool = False
    use_neural_refusal_detection: bool = False
    neural_detection_model: str = DEFAULT_NLI_MODEL
    neural_detection_for_optuna: bool = False
    neural_device: str = "cpu"
    neural_batch_size: int = 8

    @classmethod
    def from_settings(cls, settings: Any, user_markers: Sequence[str] = (), **overrides: Any):
        """The options a :class:`circuitlab.config.Settings` describes (``overrides`` win)."""
        values = {
            "kind": settings.judge,
            "user_markers": tuple(user_markers),
            "threshold": settings.judge_threshold,
            "use_neural_refusal_detection": settings.use_neural_refusal_detection,
            "neural_detection_model": settings.neural_detection_model,
            "neural_detection_for_optuna": settings.neural_detection_for_optuna,
            "neural_device": settings.neural_device,
            "model_judge": getattr(settings, "model_judge", "rubric"),
            "model_judge_for_search": getattr(settings, "model_judge_for_search", False),
        }
        return cls(**{**values, **overrides})


def build_judge(
    options: JudgeOptions = JudgeOptions(),
    cache_dir: str | Path | None = None,
    for_search: bool = False,
    device: str = "cpu",
) -> Judge:
    """The judge the options describe.

    Args:
        options: the judge options.
        cache_dir: circuitlab cache (classifier weights live under ``judges/``).
        for_search: building for search trials (honours ``neural_detection_for_optuna``).
        device: device of the MiniLM embedder of the classifier.

    Returns:
        A judge; ``judge.name`` says what it is (e.g. ``markers-first-classifier``) and
        ``judge.agreement`` how it agreed with human labels where that was measured (see
        :func:`~circuitlab.evaluate.agreement.agreement_note`).
    """
    return with_agreement(_build(options, cache_dir, for_search, device), cache_dir)


def _build(options: JudgeOptions, cache_dir, for_search: bool, device: str) -> Judge:
    markers = MarkerJudge(user_markers=tuple(options.user_markers), threshold=options.threshold)

    def nli() -> NLIJudge:
        return NLIJudge(
            options.neural_detection_model,
            device=options.neural_device,
            batch_size=options.neural_batch_size,
            threshold=options.threshold,
        )

    def classifier() -> Judge:
        return ClassifierJudge.load(cache_dir, device=device, threshold=options.threshold)

    if options.kind == "markers":
        judge: Judge = markers
    elif options.kind == "classifier":
        judge = classifier()
    elif options.kind == "combined":
        judge = CombinedJudge(markers, classifier(), options.combine_rule, options.threshold)
    elif options.kind == "nli":
        return nli()
    elif options.kind == "model":
        if for_search and not options.model_judge_for_search:
            return markers

        return model_judge(
            options.model_judge,
            device=options.neural_device,
            threshold=options.threshold,
            cache_dir=cache_dir,
        )
    else:
        raise ValueError(f"unknown judge {options.kind!r}; choose from {JUDGE_KINDS}")
    neural = options.use_neural_refusal_detection and (
        options.neural_detection_for_optuna or not for_search
    )
    if neural:
        judge = CombinedJudge(judge, nli(), "or", options.threshold)
    return judge
