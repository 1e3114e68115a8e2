"""Evaluation: judges (markers, classifier, NLI), KL, capability, the scorecard, and the
hand-off to lm-eval.

Judges share one signature, ``judge(prompts, responses) -> Judgements``. Heavy pieces
(MiniLM, the NLI pipeline) load only when such a judge is built.
"""

from circuitlab.evaluate.capability import CapabilityResult, Question, capability, load_mmlu
from circuitlab.evaluate.classifier import ClassifierJudge, MiniLM
from circuitlab.evaluate.factory import JudgeOptions, build_judge
from circuitlab.evaluate.handoff import lm_eval_handoff, lm_eval_tasks
from circuitlab.evaluate.judges import (
    LABELS,
    REFUSAL_LABELS,
    UNCERTAIN,
    CombinedJudge,
    Judge,
    Judgements,
    MarkerJudge,
)
from circuitlab.evaluate.kl import KLBaseline, KLScores, kl_divergence
from circuitlab.evaluate.labelled import (
    JudgeAccuracy,
    LabelledSet,
    judge_accuracy,
    labelled_split,
    load_labelled,
    read_labelled_csv,
)
from circuitlab.evaluate.nli import NLIJudge
from circuitlab.evaluate.questions import QuestionColumns, QuestionSource, load_questions
from circuitlab.evaluate.refusals import JudgedGenerations, judged_generate
from circuitlab.evaluate.scorecard import Scorecard, score_model, scorecard_table
from circuitlab.evaluate.stats import BinaryMetrics, binary_metrics, wilson_interval

__all__ = [
    "LABELS",
    "REFUSAL_LABELS",
    "UNCERTAIN",
    "BinaryMetrics",
    "CapabilityResult",
    "ClassifierJudge",
    "CombinedJudge",
    "JudgeAccuracy",
    "JudgeOptions",
    "JudgedGenerations",
    "Judge",
    "Judgements",
    "KLBaseline",
    "KLScores",
    "LabelledSet",
    "MarkerJudge",
    "MiniLM",
    "NLIJudge",
    "Question",
    "QuestionColumns",
    "QuestionSource",
    "Scorecard",
    "binary_metrics",
    "build_judge",
    "capability",
    "judge_accuracy",
    "judged_generate",
    "kl_divergence",
    "lm_eval_handoff",
    "lm_eval_tasks",
    "labelled_split",
    "load_labelled",
    "load_mmlu",
    "load_questions",
    "read_labelled_csv",
    "score_model",
    "scorecard_table",
    "wilson_interval",
]
