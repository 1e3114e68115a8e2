"""The validation suite's statistics and outputs: arms against the baseline, paired over seeds.

:mod:`~circuitlab.validation.stats` summarises each arm (mean ± std over seeds), tests it
against the baseline (paired t-test, Cohen's d) and applies the acceptance rule;
:mod:`~circuitlab.validation.power` summarises each run's test-split front (best refusal
rate under KL budgets, front area) and gives paired tests their minimum detectable effect;
:mod:`~circuitlab.validation.outputs` writes the markdown table, figures, CSV and HTML
report. ``experiments/validate.py`` runs the arms and calls both.
"""

import lazy_loader

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "outputs": [
            "SUMMARY_COLUMNS",
            "combine_verdict_rows",
            "comparison_figure",
            "helps",
            "markdown_table",
            "paired_differences_figure",
            "render_markdown",
            "summary_columns",
            "summary_markdown",
            "tests_table",
            "summary_rows",
            "validation_report",
            "reading",
            "verdict_table",
            "write_csv",
        ],
        "power": [
            "PairedTest",
            "best_under_budget",
            "budget_name",
            "front_area",
            "front_summary",
            "min_detectable_effect",
            "paired_test",
        ],
        "stats": [
            "AcceptanceRule",
            "Comparison",
            "METRICS",
            "Spread",
            "cohens_d",
            "compare",
            "paired_p",
            "spread",
            "verdicts",
        ],
    },
)
