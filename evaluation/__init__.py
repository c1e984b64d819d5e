"""glasszoo.evaluation: task metrics with CIs, explanation metrics, results files and figures."""

from glasszoo.evaluation.metrics import (
    METRIC_NAMES,
    bootstrap_ci,
    format_value,
    mean_ci,
    pointing_game,
    relevance_mass_in_mask,
    stratified_bootstrap_indices,
    task_metrics,
)
from glasszoo.evaluation.results import format_markdown, format_table, tradeoff_rows, write_tradeoff

__all__ = [
    "METRIC_NAMES",
    "bootstrap_ci",
    "format_markdown",
    "format_table",
    "format_value",
    "mean_ci",
    "pointing_game",
    "relevance_mass_in_mask",
    "stratified_bootstrap_indices",
    "task_metrics",
    "tradeoff_rows",
    "write_tradeoff",
]
