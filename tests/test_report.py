"""``autotuner report``: the numbers (against the gate's record and the roofline bound), the
cache, the no-promotion paths, the SVG plots, the page in a real headless browser, and the
Optuna dashboard on a campaign's journal.

The campaign here is tiny (multiturn, 150 requests, in-process simulator for trusted files) and
promotes routing by waiting prefill work net of prefix-cache hits over round robin (the honest
control of ``tests/gaming``), which it reliably does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest

from autotuner import archive as A
from autotuner import report_plots as P
from autotuner.archive import Archive
from autotuner.campaign import Campaign
from autotuner.commands.main import main
from autotuner.config import load_config
from autotuner.proposers.base import Proposal
from autotuner.report import (
    ReportOptions,
    capacity_bound,
    gain_interval,
    render_html,
    trusted_result,
    write_report,
)
from autotuner.resources import baseline_path
from autotuner.scoring import Instance, build_workload, in_process

FIXED = baseline_path("fixed_chunk").read_text()
LEAST = FIXED.replace(
    "def route(request, cluster, params):\n    return request.id % len(cluster.replicas)",
    "def route(request, cluster, params):\n"
    "    best = min(cluster.replicas, key=lambda r: (r.outstanding, r.waiting_tokens, r.replica))\n"
    "    return best.replica",
)
PLOTS = ("plot-progress", "plot-gains", "plot-ttft", "plot-tbt", "plot-curve", "plot-attainment",
         "plot-references", "plot-headroom", "plot-failures")
HONEST = (Path(__file__).resolve().parent / "gaming" / "honest_cache_aware.py").read_text()
REFERENCES = {"least_outstanding", "power_of_two", "prefix_aware", "sarathi_shrinking"}
CHROMIUM = Path("/usr/bin/chromium")


class Scripted:
    name = "scripted"

    def __init__(self, codes):
        self.codes = list(codes)

    def propose(self, request, check):
        if not self.codes:
            return Proposal(None, False, "no code in reply")
        return Proposal(self.codes.pop(0), True, "", attempts=1, model="scripted")


def _config(root: Path, name: str, **extra):
    return load_config(**{
        "name": name, "results_dir": str(root / "results"),
        "workloads.scenarios": ["multiturn"], "workloads.screen": ["multiturn"],
        "workloads.requests": 150, "workloads.scenario_requests": {},
        "workloads.heldout_seeds": [1001, 1002, 1003], "objective.ladder": [1.0, 1.4],
        "budget.trials": 2, "budget.proposals": 2, "search.seeds": ["least_outstanding"],
        "search.finalists": 1, "gate.bootstrap": 500, "gate.capacity_rel_tol": 0.05,
        # no reference bar for the gate here (the report still compares with every reference);
        # 150 multiturn requests cannot rank policies on the ladder: the seed is tuned anyway
        "gate.references": [], "search.screen_threshold": -0.5, "parallelism": 1, **extra})


@pytest.fixture(autouse=True)
def no_endpoint(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cfg = _config(root, "r")
    rc = Campaign(cfg, proposer=Scripted([HONEST, "garbage("]), simulator=in_process,
                  stream=io.StringIO(), tty=False).run()
    assert rc == 0
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        assert archive.get_meta("promoted"), "the tiny campaign should promote the router"
    return cfg.campaign_dir


@pytest.fixture(scope="module")
def reported(campaign):
    html, md, data = write_report(campaign, opts=ReportOptions(
        parallelism=1, simulator=in_process, stream=io.StringIO()))
    return html, md, data


# ------------------------------------------------------------------------------- the numbers
def test_report_restates_the_gate_and_covers_every_section(campaign, reported):
    html_path, md_path, data = reported
    assert html_path == campaign / "report.html" and md_path == campaign / "report.md"
    with Archive(campaign / "archive.sqlite") as archive:
        promoted = archive.get_meta("promoted")
    record = json.loads((campaign / "promotions" / f"{promoted}.json").read_text())
    stats = record["statistics"]["comparisons"][0]
    assert data.state == "promoted" and data.subject.id == promoted
    assert data.reproduced is True
    assert data.gains.mean == pytest.approx(stats["mean_gain"])
    assert data.gains.lower_bound == pytest.approx(stats["lower_bound"])
    # the interval's lower end is the gate's own one-sided bound (same bootstrap draws)
    assert data.gains.lo == pytest.approx(stats["lower_bound"])
    assert data.gains.lo <= data.gains.mean <= data.gains.hi
    fam = data.gains.families
    assert [f.family for f in fam] == ["multiturn"] and len(fam[0].rows) == 3
    for row in fam[0].rows:
        assert [row.subject, row.baseline] == pytest.approx(stats["capacities"][row.label])
        assert row.gain == pytest.approx(stats["gains"][row.label])
    # every reference policy, tuned (least_outstanding by the campaign, the rest here)
    refs = {r.key.removeprefix("ref:"): r for r in data.references if r.key != "subject"}
    assert set(refs) == REFERENCES
    assert "campaign" in refs["least_outstanding"].note
    assert "this report" in refs["prefix_aware"].note
    assert all(r.subject_gain is not None for r in refs.values())
    # the curve passes through both capacities; the CDFs are real distributions
    curve = data.curve
    assert len(curve.rates) >= len(curve.results["baseline"]) >= 9
    att = [r.attainment for r in curve.results["baseline"]]
    assert att[0] >= 0.9 > att[-1]
    for key in ("baseline", "subject"):
        d = data.distributions[key]
        assert d.error is None and 0 < d.ttft_p50 <= d.ttft_p90 <= d.ttft_p99
    # all plots present, and the spend and failures from the archive
    assert set(PLOTS) <= {m for m in re.findall(r'<svg id="([^"]+)"', html_path.read_text())}
    assert data.failures.counts == {"check": 1}
    assert data.spend.proposals == 2 and data.spend.trials >= 2
    md = md_path.read_text()
    assert f"**Promoted {promoted}**" in md and "optuna-dashboard " in md
    assert "| least_outstanding |" in md
    # fairness beside capacity, for the baseline and the promoted policy, at their own capacity
    rows = {r.key: r for r in data.fairness}
    assert set(rows) == {"baseline", "subject"}
    for key, r in rows.items():
        assert r.family == "multiturn"
        assert r.capacity == pytest.approx(np.mean(list(data.policies[key].caps.values())))
        assert r.goodput_tok_s > 0 and r.saturation_tok_s > 0
        assert r.longest_wait_s > 0 and 0 <= r.late_finish_share <= 1
        assert 0 < r.jain_slowdown <= 1
    assert rows["subject"].starved == 0 and rows["subject"].priority_inversions == 0
    assert "Beside capacity, at each policy's own capacity" in md
    assert 'id="table-fairness"' in html_path.read_text()
    # why it wins: the explanation the campaign stored from its measured diagnostics
    assert data.subject.why and data.subject.why[0].startswith("changes route against")
    assert all(f"- {line.strip()}" in md for line in data.subject.why)
    assert 'id="why"' in html_path.read_text()


def test_every_measured_capacity_stays_under_the_roofline_bound(campaign, reported):
    _, _, data = reported
    cfg = load_config(campaign / "config.toml")
    spec = cfg.cluster.spec()
    bounds = {}
    for policy in data.policies.values():
        for label, cap in policy.caps.items():
            if label not in bounds:
                inst = Instance("multiturn", int(label.split("@")[1]), 150)
                bounds[label] = capacity_bound(spec, build_workload(inst), cfg.slo.slo(),
                                               cfg.slo.share).rate
            assert 0 < cap < bounds[label], (policy.label, label)
    h = data.headroom
    assert 0 < h.baseline_share < h.subject_share < 1


def test_capacity_bound_scales_and_is_an_upper_bound_on_chat():
    from autotuner.policy import load_policy, read_policy_file
    from autotuner.sim.engine import ClusterSpec
    from autotuner.sim.metrics import SLO, capacity

    wl = build_workload(Instance("chat", 3, 300))
    two = capacity_bound(ClusterSpec(replicas=2), wl)
    four = capacity_bound(ClusterSpec(replicas=4), wl)
    assert four.steady_rate == pytest.approx(2 * two.steady_rate)
    assert two.steady_rate < two.rate < four.rate  # 4: inf, even one burst fits
    assert four.iteration_tokens == 16384 and 0 < four.decode_share < 1
    # a stricter share drops fewer costly requests: a lower bound on the rate
    strict, loose = (capacity_bound(ClusterSpec(replicas=2), wl, share=x) for x in (0.99, 0.5))
    assert strict.rate < loose.rate and strict.steady_rate < loose.steady_rate
    source = read_policy_file(baseline_path("fixed_chunk"))
    for chunk in (512, 4096):
        cap = capacity(ClusterSpec(replicas=2), wl, lambda c=chunk: load_policy(
            source, {"chunk_size": c}), SLO())
        assert 0 < cap.rate < two.rate


def test_the_bootstrap_interval_is_the_gates_bound_and_its_mirror():
    from autotuner.gate import bootstrap_bound, bootstrap_interval

    gains = [0.1, 0.3, 0.25, -0.05, 0.2]
    mean, lo, hi = bootstrap_interval(gains, confidence=0.95, samples=2000, seed=7)
    assert (mean, lo) == bootstrap_bound(gains, confidence=0.95, samples=2000, seed=7)
    assert mean == pytest.approx(np.mean(gains)) and lo < mean < hi
    # the upper end is the lower end's mirror: the same draws of the negated gains bound them
    # from below at minus the upper end
    assert bootstrap_interval([-g for g in gains], confidence=0.95, samples=2000,
                              seed=7)[1] == pytest.approx(-hi)
    assert bootstrap_interval([0.2], confidence=0.95, samples=100, seed=0)[1:] == (
        -np.inf, np.inf)


def test_gain_interval_is_the_gates_geometric_statistic():
    from autotuner.config import GateConfig
    from autotuner.gate import compare

    cand, base = {"a": 12.0, "b": 9.0, "c": 30.0, "d": 11.0}, {k: 10.0 for k in "abcd"}
    gate = GateConfig(bootstrap=2000)
    comp = compare(cand, base, "baseline", gate, 7)
    mean, lo, hi = gain_interval(list(comp.gains.values()), 0.95, 2000, 7)
    assert (mean, lo) == pytest.approx((comp.mean_gain, comp.lower_bound))
    assert mean == pytest.approx((1.2 * 0.9 * 3.0 * 1.1) ** 0.25 - 1)
    assert lo < mean < hi


# ------------------------------------------------------------------------------- cache, CLI
def test_second_report_runs_nothing_and_the_cli_writes_elsewhere(campaign, reported, tmp_path,
                                                                 capsys):
    first = reported[0].read_text()
    out = tmp_path / "out"
    # the real sandbox would run here if anything were missing from the cache
    rc = main(["report", str(campaign), "--out", str(out), "--parallelism", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "0 simulations run" in text
    # the command's headline is the summary's, rendered from the same record
    assert text.splitlines()[0] == reported[1].read_text().split("\n\n")[1]
    second = (out / "report.html").read_text()

    def strip(html: str) -> str:
        return re.sub(r"generated [^<]*|Computed in .*?sandbox\)\.", "", html, flags=re.S)

    assert strip(second) == strip(first)
    assert (out / "report.md").read_text() == reported[1].read_text()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no campaign" in capsys.readouterr().err


def test_no_promotion_shows_the_best_candidate_and_the_search(campaign, reported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(campaign, copy, ignore=shutil.ignore_patterns("report*"))
    with Archive(copy / "archive.sqlite") as archive:
        pid = archive.get_meta("promoted")
        archive.set_meta_many({"promoted": None, "promotions": []})
        archive.update(pid, status=A.GATE_FAILED, failure="gate: pretend")
    shutil.copy(campaign / "report_cache.json", copy / "report_cache.json")
    _, md, data = write_report(copy, opts=ReportOptions(
        parallelism=1, simulator=in_process, reference_seeds=0, stream=io.StringIO()))
    assert data.state == "candidate" and data.subject.id == pid
    assert data.gains.mean == pytest.approx(reported[2].gains.mean)
    assert data.references is None
    assert data.failures.counts["refused by the gate"] == 1
    assert "Nothing was promoted." in md.read_text()


def test_a_campaign_with_nothing_scored_still_reports_its_search(tmp_path):
    cfg = _config(tmp_path, "empty", **{"budget.proposals": 1, "search.seeds": []})
    rc = Campaign(cfg, proposer=Scripted(["garbage("]), simulator=in_process,
                  stream=io.StringIO(), tty=False).run()
    assert rc == 0
    html, md, data = write_report(cfg.campaign_dir, opts=ReportOptions(
        parallelism=1, simulator=in_process, reference_seeds=0, stream=io.StringIO()))
    assert data.state == "nothing" and data.gains is None
    text = html.read_text()
    assert 'id="plot-progress"' in text and 'id="plot-failures"' in text
    assert 'id="plot-headroom"' in text and "Nothing was promoted" in text
    assert "no candidate has a score" in md.read_text()


def test_trusted_result_through_the_sandbox_equals_the_in_process_run():
    from autotuner.policy import read_policy_source
    from autotuner.scoring import horizon_for
    from autotuner.simulation import run_policy

    cfg = load_config(**{"sandbox.backend": "process", "cluster.replicas": 2})
    wl = build_workload(Instance("chat", 5, 80)).with_rate(20.0)
    result, error = trusted_result(LEAST, {"chunk_size": 256}, cfg, wl, "least.py", None)
    assert error is None and result is not None
    direct = run_policy(read_policy_source(LEAST, "least.py"), cfg.cluster.spec(), wl,
                        params={"chunk_size": 256}, horizon=horizon_for(wl, cfg.slo.slo()))
    np.testing.assert_array_equal(result.first_token, direct.first_token)
    np.testing.assert_array_equal(result.finish, direct.finish)
    bad, error = trusted_result("def partition(:\n", {}, cfg, wl, "bad.py", None)
    assert bad is None and error


# ------------------------------------------------------------------------------- plots
def test_plots_are_valid_svg_with_ids_ticks_and_series():
    svg = P.line_plot("p1", [P.Series("a", [1, 2, 3], [1, 4, float("nan")], step=True),
                             P.Series("b <&>", [1, 3], [2, 2], points=True)],
                      title="t & u", rules=[P.Rule(2.5, "cap", "x"), P.Rule(3, "y3", "y")])
    root = ET.fromstring(svg)
    assert root.get("id") == "p1"
    assert root.find("{http://www.w3.org/2000/svg}title").text == "t & u"
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2
    bars = P.bar_plot("p2", [P.Bar("x", 0.2, 0.1, 0.3, points=[0.15, 0.25]),
                             P.Bar("a_long_policy_name_here", -0.1)], title="b",
                      y_fmt=P.fmt_percent, rules=[P.Rule(0.05, "margin", "y")])
    root = ET.fromstring(bars)
    assert len(root.findall(".//*[@class='errorbar']")) == 1
    assert len(root.findall(".//*[@class='bar']")) == 2
    ET.fromstring(P.hbar_plot("p3", [("check", 3), ("timeout", 1)], title="f"))
    ET.fromstring(P.hbar_plot("p4", [], title="none"))
    assert P.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert P.log_ticks(0.01, 1) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


def test_cdf_counts_starved_requests_as_misses():
    xs, ys = P.cdf_points([0.1, 0.2, np.inf, np.nan, 0.3])
    assert xs == [0.1, 0.2, 0.3] and ys == pytest.approx([0.2, 0.4, 0.6])
    xs, ys = P.cdf_points(np.arange(5000.0), points=100)
    assert len(xs) <= 100 and ys[-1] == 1.0 and all(np.diff(ys) > 0)
    xs, ys = P.cdf_points([1.0, 2.0], weights=[3, 1])
    assert ys == pytest.approx([0.75, 1.0])


def test_the_page_is_self_contained(reported):
    html = reported[0].read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "url(http" not in html and "@import" not in html and "<script" not in html
    assert "Content-Security-Policy" in html
    data = dataclasses.replace(reported[2], campaign="<script>alert(1)</script>")
    assert "<script>alert" not in render_html(data)


# ------------------------------------------------------------------------------- browser
def _png_pixels_vary(png: bytes) -> bool:
    """Whether a PNG is more than one flat colour (decoded just enough to tell)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kind = png[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return len(set(raw[:2_000_000])) > 16


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="/usr/bin/chromium is absent (Debian: apt-get install chromium; "
                           "CI: .ci/report_deps.sh)")
def test_the_report_renders_in_headless_chromium(reported, tmp_path):
    html = reported[0]
    common = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND",
              "--window-size=1280,4000"]
    png = tmp_path / "report.png"
    shot = subprocess.run(common + [f"--user-data-dir={tmp_path / 'u1'}",
                                    f"--screenshot={png}", html.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert png.is_file(), shot.stderr[-2000:]
    data = png.read_bytes()
    assert len(data) > 50_000 and _png_pixels_vary(data)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 4000)
    dom = subprocess.run(common + [f"--user-data-dir={tmp_path / 'u2'}", "--dump-dom",
                                   html.resolve().as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for plot in PLOTS:
        assert re.search(rf'<svg id="{plot}"[^>]*class="plot"', dom.stdout), plot
    # the plots carry drawn data, not just axes
    assert dom.stdout.count("<polyline") >= 8 and dom.stdout.count("<rect") >= 10
    assert "Promoted c0" in dom.stdout


# ------------------------------------------------------------------------------- dashboard
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_serves_the_campaign_journal(campaign, reported):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed "
                        "(pip install optuna-dashboard; CI: .ci/report_deps.sh)")
    command = reported[2].dashboard.split()
    assert command[0] == "optuna-dashboard" and command[1].endswith("optuna.journal")
    port = _free_port()
    exe = Path(sys.executable).with_name("optuna-dashboard")
    argv = [str(exe) if exe.exists() else "optuna-dashboard", str(campaign / "optuna.journal"),
            "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        body = None
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
        assert body is not None, proc.stdout.read().decode() if proc.poll() is not None else ""
        names = {s["study_name"] for s in body["study_summaries"]}
        assert {"baseline", "seed-least_outstanding"} <= names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
