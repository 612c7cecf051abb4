"""The report's order of work: read the search from the archive, pick the policy the report is
about, measure it and the tuned baseline on the held-out instances, restate the gate, then the
fairness table, one instance in detail, the tuned references and the headroom; and the plots.
The result is one frozen ``Report``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autotuner.archive import Archive
from autotuner.config import CampaignConfig, load_config
from autotuner.diagnose import Explanation
from autotuner.report import figures, statistics
from autotuner.report.cache import ReportCache
from autotuner.report.measure import Measurer, ReportOptions
from autotuner.report.records import BaselineInfo, Policy, PolicySummary, Report, SubjectInfo
from autotuner.report.search import (
    DASHBOARD_PACKAGE,
    Subject,
    archive_path,
    dashboard_command,
    pick_subject,
    read_search,
    reference_stems,
)
from autotuner.report.text import params_text, pct
from autotuner.resources import baseline_path
from autotuner.review import SATURATION_FACTOR, candidate_diff
from autotuner.scoring import Instance, split_instances


def collect(folder: Path, opts: ReportOptions | None = None) -> Report:
    """Everything the report shows, measured (or read from the caches) now."""
    opts = opts or ReportOptions()
    db = archive_path(folder)
    cfg = load_config(folder / "config.toml", name=folder.name, results_dir=str(folder.parent))
    if opts.sandbox:
        cfg = replace(cfg, sandbox=replace(cfg.sandbox, backend=opts.sandbox))
    archive = Archive(db)
    m = Measurer(cfg, archive, opts, ReportCache(folder / "report_cache.json"))
    try:
        return _collect(m, folder)
    finally:
        m.close()
        archive.close()


def _header(cfg: CampaignConfig, folder: Path, archive: Archive) -> dict[str, Any]:
    """The report's fields that come from the config and the folder alone."""
    c = cfg.cluster
    return {
        "campaign": cfg.name, "folder": str(folder),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "phase": archive.get_meta("phase", "?"),
        "cluster": f"{c.replicas} x {c.model} on {c.gpu} (tp={c.tp}), max "
                   f"{c.max_batch_tokens} tokens per iteration",
        "slo": cfg.slo, "share": cfg.slo.share, "gate": cfg.gate,
        "workloads": ", ".join(cfg.workloads.scenarios + tuple(
            Path(t).name for t in cfg.workloads.traces)),
        "dashboard": dashboard_command(folder), "dashboard_package": DASHBOARD_PACKAGE,
    }


@dataclass(frozen=True)
class _Measured:
    """The tuned baseline and the subject as measured on the held-out instances."""

    insts: list[Instance]
    baseline: Policy
    subject: Policy | None
    subject_info: SubjectInfo | None
    diff: str | None


def _heldout(cfg: CampaignConfig, pick: Subject) -> list[Instance]:
    """The gate's own instances where it judged the subject, else the configured split."""
    if pick.record is not None:
        return [Instance.from_dict(d) for d in pick.record["instances"]]
    if pick.candidate is not None and pick.candidate.gate:
        return [Instance.from_dict(d) for d in pick.candidate.gate["instances"]]
    return split_instances(cfg)["heldout"]


def _measure_subject(m: Measurer, pick: Subject, base_meta: dict[str, Any]) -> _Measured:
    insts = _heldout(m.cfg, pick)
    m.log(f"held-out capacity of the tuned baseline on {len(insts)} instances")
    baseline = m.capacities(Policy("baseline", f"tuned {base_meta['name']}", base_meta["code"],
                                   dict(base_meta["params"])), insts, None)
    cand = pick.candidate
    if cand is None:
        return _Measured(insts, baseline, None, None, None)
    label = (f"promoted {cand.id}" if pick.how == "promoted" else f"best candidate {cand.id}")
    subject = Policy("subject", label, cand.code or "", dict(cand.params))
    why = Explanation.from_dict(cand.explanation).lines() if cand.explanation else []
    info = SubjectInfo(cand.id, label, params_text(subject.params), cand.train_score,
                       cand.validation_score, tuple(x.id for x in m.archive.lineage(cand.id)),
                       cand.status, tuple(why))
    try:
        diff = candidate_diff(m.archive, cand, "baseline")
    except Exception as exc:  # noqa: BLE001 - a missing diff must not sink the report
        diff = f"(no diff: {exc})"
    m.log(f"held-out capacity of {label}")
    subject = m.capacities(subject, insts, baseline.caps, baseline.lengths)
    return _Measured(insts, baseline, subject, info, diff)


def _references(m: Measurer, base_meta: dict[str, Any], baseline: Policy,
                insts: Sequence[Instance]) -> tuple[list[Policy], list[Instance]]:
    """Every shipped reference policy, tuned like the baseline, measured on the held-out
    instances of the first ``reference_seeds`` seeds (traces always)."""
    nseeds = m.opts.reference_seeds
    heldout_seeds = list(dict.fromkeys(i.seed for i in insts if not i.trace))
    use_seeds = heldout_seeds if nseeds is None else heldout_seeds[:max(0, nseeds)]
    ref_insts = [i for i in insts if (i.trace and nseeds != 0) or i.seed in use_seeds]
    if nseeds == 0 or not ref_insts:
        return [], ref_insts
    train = split_instances(m.cfg)["train"]
    refs = []
    for stem in reference_stems(m.cfg):
        code = baseline_path(stem).read_text(encoding="utf-8")
        tuned = m.tune_reference(stem, code, base_meta, train)
        refs.append(Policy(f"ref:{stem}", stem, code, dict(tuned["params"]),
                           note=f"tuned by {tuned['by']}; training objective "
                                f"{pct(tuned.get('value'))}"))
    m.log(f"held-out capacity of {len(refs)} reference policies on {len(ref_insts)} instances")
    return [m.capacities(r, ref_insts, baseline.caps, baseline.lengths) for r in refs], ref_insts


def _recorded(pick: Subject) -> dict[str, Any] | None:
    """The gate's recorded comparison with the baseline, if the subject was gated."""
    if pick.record is not None:
        return pick.record["statistics"]["comparisons"][0]
    if pick.candidate is not None and pick.candidate.gate:
        return pick.candidate.gate["comparisons"][0]
    return None


OVER_STEADY_NOTE = (
    "Measured capacity exceeds the sustained roofline rate on {families}: these instances are "
    "short next to the SLO's slack (TTFT target + TPOT target x output tokens), so part of what "
    "capacity measures there is work finished after the last arrival. Longer instances measure "
    "a sustained rate.")


def _collect(m: Measurer, folder: Path) -> Report:
    cfg, archive = m.cfg, m.archive
    head = _header(cfg, folder, archive)
    search = read_search(archive, folder)
    plots = figures.search_plots(search)
    base_meta = archive.get_meta("baseline")
    if not base_meta:
        note = ("The tuned baseline is not in the archive yet (the campaign is still in its "
                "baseline phase), so there is nothing to compare.")
        return Report(**head, search=search, state="no-baseline", notes=(note,), plots=plots,
                      compute=m.compute())
    pick = pick_subject(archive, folder)
    state = "promoted" if pick.how == "promoted" else ("candidate" if pick.candidate else
                                                       "nothing")
    got = _measure_subject(m, pick, base_meta)
    baseline, subject, insts = got.baseline, got.subject, got.insts
    notes: list[str] = []
    gains = reproduced = None
    if subject is not None:
        gains, comp = statistics.gains(subject, baseline, insts, cfg)
        plots["gains"] = figures.gains_plot(gains, cfg)
        if (recorded := _recorded(pick)) is not None:
            reproduced = statistics.same_capacities(comp, recorded)
            if not reproduced:
                notes.append("The re-measured held-out capacities differ from the gate's "
                             "record (see `autotuner replay` of the record).")
    policies = [baseline] + ([subject] if subject is not None else [])
    fairness = statistics.fairness_rows(
        insts, policies, m.saturation(policies, insts, SATURATION_FACTOR))
    detail = m.focus(policies, insts)
    refs, ref_insts = _references(m, base_meta, baseline, insts)
    color = figures.colors(refs)
    if detail is not None:
        dists = detail.distributions
        notes += [f"{p.label} failed on {detail.focus.label}: {dists[p.key].error}"
                  for p in policies if dists[p.key].error]
        plots |= figures.curve_plots(detail.focus, detail.curve, policies, cfg, color)
        plots |= figures.cdf_plots(detail.focus, dists, policies, cfg, color)
    references = statistics.reference_rows(subject, refs, baseline, ref_insts, cfg)
    if refs:
        plots["references"] = figures.references_plot(references, state, len(ref_insts), color)
    m.log("headroom: roofline upper bound per instance")
    headroom = statistics.headroom(insts, ref_insts, {i.label: m.bound(i) for i in insts},
                                   baseline, refs, subject, cfg.cluster.max_batch_tokens)
    if headroom.over_steady:
        notes.append(OVER_STEADY_NOTE.format(families=", ".join(headroom.over_steady)))
    plots["headroom"] = figures.headroom_plot(headroom, color)
    record = pick.record
    return Report(
        **head, search=search, state=state, notes=tuple(notes), plots=plots,
        compute=m.compute(), how=pick.how,
        baseline=BaselineInfo(base_meta["name"], baseline.params, params_text(baseline.params)),
        subject=got.subject_info, diff=got.diff, reproduced=reproduced, gains=gains,
        claim=record.get("claim") if record else None,
        record=str(folder / "promotions" / f"{record['candidate']}.json") if record else None,
        fairness=fairness, focus=detail.focus if detail else None,
        curve=detail.curve if detail else None,
        distributions=detail.distributions if detail else {},
        references=references if refs else None,
        reference_instances=tuple(i.label for i in ref_insts) if refs else (),
        headroom=headroom,
        policies={p.key: PolicySummary(p.label, p.caps, p.error)
                  for p in [baseline, *refs] + ([subject] if subject else [])})
