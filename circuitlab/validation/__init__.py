"""The validation suite's statistics and outputs: arms against the baseline, paired over seeds.

:mod:`~circuitlab.validation.stats` summarises each arm (mean ± std over seeds), tests it
against the baseline (paired t-test, Cohen's d) and applies the acceptance rule;
:mod:`~circuitlab.validation.outputs` writes the markdown table, figures, CSV and HTML
report. ``experiments/validate.py`` runs the arms and calls both.
"""

from circuitlab.validation.outputs import (
    SUMMARY_COLUMNS,
    comparison_figure,
    markdown_table,
    paired_differences_figure,
    summary_markdown,
    summary_rows,
    validation_report,
    write_csv,
)
from circuitlab.validation.stats import (
    METRICS,
    AcceptanceRule,
    Comparison,
    Spread,
    cohens_d,
    compare,
    paired_p,
    spread,
)

__all__ = [
    "METRICS",
    "SUMMARY_COLUMNS",
    "AcceptanceRule",
    "Comparison",
    "Spread",
    "cohens_d",
    "compare",
    "comparison_figure",
    "markdown_table",
    "paired_differences_figure",
    "paired_p",
    "spread",
    "summary_markdown",
    "summary_rows",
    "validation_report",
    "write_csv",
]
