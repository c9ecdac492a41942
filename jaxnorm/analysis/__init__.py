"""Analysis of finished runs: discovery, curves, γ/β contour plots, activity metrics,
ReLU sparsity, summary tables, statistics over seeds (``jaxnorm.analysis.stats``: 95%
t-intervals, paired t and sign tests), a one-call report, a listing of the runs below a
folder (``run_table``: ``jaxnorm runs``), and the gradient-conditioning study's plots and tables. Reads ``results/`` only; never trains.

Each study's analysis is a module here, imported by name (``jaxnorm.analysis.init_scale``,
``.norm_kinds``, ``.regularization``, ``.smoothness``, ``.sharpness``, ``.tent``,
``.conditioning``): it reads a study's stored files and writes its plots and
``summary.md``; ``plotting.pyplot`` is the one headless matplotlib import."""

from jaxnorm.analysis.activity import activity_metrics, activity_table_md, zero_crossings
from jaxnorm.analysis.conditioning import (
    collect_costs,
    conditioning_summary_md,
    find_conditioning_runs,
    key_points,
    write_conditioning_report,
)
from jaxnorm.analysis.contours import channel_order, plot_gamma_beta, symmetric_range
from jaxnorm.analysis.curves import COLORS, LABELS, plot_curves
from jaxnorm.analysis.gammabeta import NEUTRAL, gamma_beta_arrays
from jaxnorm.analysis.report import write_report
from jaxnorm.analysis.runs import VARIANTS, Run, find_runs, group_runs, load_run
from jaxnorm.analysis.sparsity import plot_sparsity, sparsity_series, sparsity_table_md
from jaxnorm.analysis.summary import epochs_to_target, summarize, summary_markdown

__all__ = [
    "COLORS", "LABELS", "NEUTRAL", "VARIANTS", "Run", "activity_metrics", "activity_table_md",
    "channel_order", "collect_costs", "conditioning_summary_md", "epochs_to_target", "find_conditioning_runs",
    "find_runs", "gamma_beta_arrays", "group_runs", "key_points", "load_run",
    "plot_curves", "plot_gamma_beta", "plot_sparsity", "sparsity_series", "sparsity_table_md", "summarize", "summary_markdown", "symmetric_range",
    "write_conditioning_report", "write_report", "zero_crossings",
]
