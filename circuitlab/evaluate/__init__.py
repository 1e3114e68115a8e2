"""Evaluation: judges (markers, classifier, NLI), KL, capability, the scorecard, and the
hand-off to lm-eval.

Judges share one signature, ``judge(prompts, responses) -> Judgements``. Heavy pieces
(MiniLM, the NLI pipeline, model judges) load only when such a judge is built or first used.
"""

from circuitlab.evaluate.agreement import describe_judge
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
    load_jailbreakbench,
    load_labelled,
    read_labelled_csv,
)
from circuitlab.evaluate.model_judges import (
    MODEL_JUDGES,
    LLMJudge,
    SequenceClassifierJudge,
    model_judge,
)
from circuitlab.evaluate.nli import NLIJudge
from circuitlab.evaluate.questions import QuestionColumns, QuestionSource, load_questions
from circuitlab.evaluate.refusals import JudgedGenerations, judged_generate
from circuitlab.evaluate.scorecard import Scorecard, score_model, scorecard_table
from circuitlab.evaluate.stats import BinaryMetrics, binary_metrics, wilson_interval

__all__ = [
    "LABELS",
    "MODEL_JUDGES",
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
    "LLMJudge",
    "LabelledSet",
    "MarkerJudge",
    "MiniLM",
    "NLIJudge",
    "Question",
    "QuestionColumns",
    "QuestionSource",
    "Scorecard",
    "SequenceClassifierJudge",
    "binary_metrics",
    "build_judge",
    "capability",
    "describe_judge",
    "judge_accuracy",
    "judged_generate",
    "kl_divergence",
    "lm_eval_handoff",
    "lm_eval_tasks",
    "labelled_split",
    "load_jailbreakbench",
    "load_labelled",
    "load_mmlu",
    "load_questions",
    "model_judge",
    "read_labelled_csv",
    "score_model",
    "scorecard_table",
    "wilson_interval",
]
