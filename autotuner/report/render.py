"""The report as text: ``report.html`` (one self-contained page, plots inline) and
``report.md`` (a short summary), both rendered from the ``Report`` record by jinja2 templates
in ``prompts/``. The headline is one template, shared by the summary and the command's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotuner.report import text
from autotuner.report.collect import collect
from autotuner.report.measure import ReportOptions
from autotuner.report.records import Report
from autotuner.resources import asset_dir
from autotuner.review import SATURATION_FACTOR

FAIRNESS_INTRO = (
    "Beside capacity, at each policy's own capacity (means over the held-out instances): "
    "token goodput, output tokens/s at saturation ({factor:g} x the tuned baseline's "
    "capacity), the longest wait for a first token (seconds, and as a multiple of the request's "
    "TTFT deadline), the share of requests finished after the last arrival, Jain's index of TTFT "
    "slowdown over prompt-length deciles (1 = every length served alike), and the requests "
    "starved or overtaken (priority inversions), summed over instances.")


def _optional(value: Any, spec: str, suffix: str = "") -> str:
    """``value`` in the format ``spec`` (Python's format mini-language), "-" if not measured."""
    return "-" if value is None else format(value, spec) + suffix


def _environment(html: bool) -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(asset_dir("prompts"))),
                             autoescape=html, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=not html)
    env.filters |= {"pct": text.pct, "share": text.share, "num": text.num, "dur": text.dur,
                    "fmt": format, "opt": _optional}
    return env


def _diff_lines(diff: str) -> list[tuple[str, str]]:
    out = []
    for line in diff.splitlines():
        kind = ("head" if line.startswith(("+++", "---")) else "hunk" if line.startswith("@@")
                else "add" if line.startswith("+") else "del" if line.startswith("-")
                else "ctx")
        out.append((kind, line))
    return out


def _context(report: Report) -> dict[str, Any]:
    return {"d": report, "fairness_intro": FAIRNESS_INTRO.format(factor=SATURATION_FACTOR)}


def render_html(report: Report) -> str:
    import markupsafe

    plots = {k: markupsafe.Markup(v) for k, v in report.plots.items()}
    return _environment(html=True).get_template("report.html.j2").render(
        **_context(report), plots=plots, diff_lines=_diff_lines(report.diff or ""))


def render_markdown(report: Report) -> str:
    """A short summary: the headline, per-workload gains, fairness, references, headroom,
    spend."""
    return _environment(html=False).get_template("report.md.j2").render(**_context(report))


def render_headline(report: Report) -> str:
    """The report's verdict in one paragraph (Markdown)."""
    return _environment(html=False).get_template("report_headline.md.j2").render(
        d=report).strip()


def write_report(folder: Path, out_dir: Path | None = None, opts: ReportOptions | None = None
                 ) -> tuple[Path, Path, Report]:
    """Measure the campaign in ``folder`` and write ``report.html`` and ``report.md`` (into
    ``out_dir``, default the campaign folder; each file whole or not at all)."""
    report = collect(folder, opts)
    out_dir = out_dir or folder
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    for path, body in ((html_path, render_html(report)), (md_path, render_markdown(report))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(path)
    return html_path, md_path, report
