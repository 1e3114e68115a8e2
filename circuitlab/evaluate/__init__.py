"""Evaluation: judges (markers, classifier, NLI), KL, capability, the scorecard, and the
hand-off to lm-eval.

Judges share one signature, ``judge(prompts, responses) -> Judgements``. Heavy pieces
(MiniLM, the NLI pipeline, model judges) load only when such a judge is built or first used.
"""

import lazy_loader

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "agreement": ["describe_judge"],
        "capability": ["CapabilityResult", "Question", "capability", "load_mmlu"],
        "classifier": ["ClassifierJudge", "MiniLM"],
        "factory": ["JudgeOptions", "build_judge"],
        "handoff": ["lm_eval_handoff", "lm_eval_tasks"],
        "judges": [
            "CombinedJudge",
            "Judge",
            "Judgements",
            "LABELS",
            "MarkerJudge",
            "REFUSAL_LABELS",
            "UNCERTAIN",
        ],
        "kl": ["KLBaseline", "KLScores", "kl_divergence"],
        "layers": ["LayerScore", "LayerSelection", "layer_ablation", "select_layer"],
        "openings": ["REFUSAL_OPENINGS", "opening_token_ids", "refusal_log_mass"],
        "labelled": [
            "JudgeAccuracy",
            "LabelledSet",
            "judge_accuracy",
            "labelled_split",
            "load_jailbreakbench",
            "load_labelled",
            "read_labelled_csv",
        ],
        "model_judges": ["LLMJudge", "MODEL_JUDGES", "SequenceClassifierJudge", "model_judge"],
        "nli": ["NLIJudge"],
        "questions": ["QuestionColumns", "QuestionSource", "load_questions"],
        "refusals": ["JudgedGenerations", "judged_generate", "refusal_counts"],
        "scorecard": ["Scorecard", "score_model", "scorecard_table"],
        "stats": ["BinaryMetrics", "Proportion", "binary_metrics", "wilson_interval"],
    },
)
