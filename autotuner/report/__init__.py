"""A campaign's report: one self-contained HTML page and a short Markdown summary.

The report answers, for a reader who was not there: did the search find something, how much
better is it (capacity under SLO on held-out workloads, with confidence intervals), where does
the gain come from (latency distributions and the capacity curve), is it more than a known
router or chunk schedule (every reference policy in ``baselines/``, tuned the same way as the
baseline), how far is it from what the hardware could do (a roofline upper bound), and what did
the search cost (failures, tokens, dollars, time).

Every number comes from the trusted side, through the campaign's own yardstick (``measure``);
results the campaign already has are read from its evaluation cache, anything new is cached in
``report_cache.json`` beside the archive (``cache``), so a second report costs seconds. The
archive and the Optuna journal are only read (``search``).

The stages, in order: ``search`` (the archive alone) -> ``measure`` (capacities, runs, tuned
references, distributions) -> ``statistics`` (the gate's intervals, fairness, references,
headroom; ``roofline`` for the bound) -> ``figures`` (which plots) -> ``records`` (the frozen
``Report``) -> ``render`` (the templates ``prompts/report.html.j2`` and ``report.md.j2``).
``collect`` runs them in that order.
"""

from autotuner.report.collect import collect
from autotuner.report.measure import ReportOptions, trusted_result
from autotuner.report.records import Report
from autotuner.report.render import render_headline, render_html, render_markdown, write_report
from autotuner.report.roofline import RooflineBound, capacity_bound
from autotuner.report.search import ReportError, dashboard_command
from autotuner.report.statistics import gain_interval

__all__ = [
    "Report", "ReportError", "ReportOptions", "RooflineBound", "capacity_bound", "collect",
    "dashboard_command", "gain_interval", "render_headline", "render_html", "render_markdown",
    "trusted_result", "write_report",
]
