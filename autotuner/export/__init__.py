"""Out of the simulator: a policy compiled to what each serving engine can express.

For a campaign's candidate (or a policy file with a campaign config), and for each target:

1. observe the policy's decisions on one held-out instance of each workload family, at the tuned
   baseline's capacity there (``probe``);
2. project them onto the target's knobs (one module per target: ``vllm``, ``sglang``, ``llm_d``,
   ``dynamo``, ``production_stack``; shared rules and fitting in ``projection``), writing the
   target's files and one line per decision of the policy the target cannot express;
3. re-simulate the projection, a policy file of our own format, with the campaign's yardstick
   (``resimulate``), and say how much of the policy's own simulated gain survives.

Everything is written into a temporary folder beside ``out`` and moved into place only once every
target succeeded, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotuner.export import dynamo, llm_d, production_stack, sglang, vllm
from autotuner.export.probe import Observations, ProbeError, observe_policy
from autotuner.export.projection import Projection, Subject
from autotuner.export.resimulate import Gain, Yardstick, per_instance_rows, survival_line

TARGETS: dict[str, Callable[[Observations, Subject, Any], Projection]] = {
    "vllm": vllm.project, "sglang": sglang.project, "llm-d": llm_d.project,
    "dynamo": dynamo.project, "production-stack": production_stack.project,
}

Log = Callable[[str], None]


class ExportError(RuntimeError):
    """Bad input for an export (unknown target, candidate not evaluated, ...): one line."""


@dataclass(frozen=True)
class TargetResult:
    projection: Projection
    gain: Gain
    line: str  # the survival line
    folder: Path
    alternatives: tuple[tuple[str, Gain, str], ...] = ()  # (label, gain, survival line)


@dataclass(frozen=True)
class ExportResult:
    subject: Subject
    baseline: str
    where: str  # how the baseline was tuned
    policy_gain: Gain
    base_caps: dict[str, float]
    probe: str  # the instances and rates the decisions were observed at
    targets: list[TargetResult]
    out: Path

    def table(self) -> list[str]:
        gains = {"policy": self.policy_gain} | {t.projection.target: t.gain for t in self.targets}
        for t in self.targets:
            gains |= {f"{t.projection.target}-{n + 1}": g
                      for n, (_, g, _) in enumerate(t.alternatives)}
        return per_instance_rows(self.base_caps, gains)


def parse_targets(names: Sequence[str]) -> list[str]:
    """``--target`` values (repeatable, comma-separated, or ``all``), checked, in order."""
    wanted: list[str] = []
    for item in names:
        for name in filter(None, (n.strip() for n in item.split(","))):
            expanded = list(TARGETS) if name == "all" else [name]
            for n in expanded:
                if n not in TARGETS:
                    raise ExportError(f"unknown target {n!r} (known: {', '.join(TARGETS)}, all)")
                if n not in wanted:
                    wanted.append(n)
    if not wanted:
        raise ExportError(f"no target given (known: {', '.join(TARGETS)}, all)")
    return wanted


def campaign_subject(spec: str) -> tuple[str, Subject]:
    """(the campaign as named, a name or a folder; the candidate) from CAMPAIGN:CANDIDATE;
    refuses a candidate never evaluated."""
    from autotuner.review import ReviewError
    from autotuner.review.common import open_campaign, resolve

    name, sep, ref = spec.rpartition(":")
    if not sep or not name or not ref:
        raise ExportError(f"{spec!r}: expected CAMPAIGN:CANDIDATE (or --policy FILE)")
    try:
        _, cfg, archive = open_campaign(name)
    except ReviewError as exc:
        raise ExportError(str(exc)) from None
    with archive:
        try:
            cand = resolve(archive, ref)
        except ReviewError as exc:
            raise ExportError(str(exc)) from None
    if cand.code is None or cand.train_score is None:
        raise ExportError(f"{cand.id} has not been evaluated ({cand.status}"
                          f"{': ' + cand.failure if cand.failure else ''}): nothing to export")
    return name, Subject(cand.id, cand.code, dict(cand.params),
                             f"campaign {cfg.name}, candidate {cand.id}")


def file_subject(path: str) -> Subject:
    from autotuner.gate_file import read_candidate

    source = read_candidate(path)
    return Subject(Path(path).stem, source.code, source.defaults(), path)


def write_atomically(out: Path, build: Callable[[Path], None]) -> None:
    """``build(tmp)`` fills a temporary folder beside ``out``; it then replaces ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _target_files(folder: Path, subject: Subject, result: TargetResult) -> None:
    from autotuner.gate import bake_params

    proj = result.projection
    folder.mkdir()
    for name, text in proj.files.items():
        (folder / name).write_text(text, encoding="utf-8")
        if name.endswith(".sh"):
            (folder / name).chmod(0o755)
    (folder / "policy.py").write_text(bake_params(subject.code, subject.params),
                                      encoding="utf-8")
    (folder / "projection.py").write_text(proj.policy_code, encoding="utf-8")
    for n, alt in enumerate(proj.alternatives):
        (folder / f"projection-{n + 1}.py").write_text(alt.policy_code, encoding="utf-8")
    notes = [result.line, *(line for _, _, line in result.alternatives), "", "knobs chosen:",
             *(f"  {f}" for f in proj.fit), "",
             "decisions of the policy this target cannot express:",
             *(f"  {x}" for x in proj.lost or ("(none observed)",)), ""]
    (folder / "NOTES.txt").write_text("\n".join(notes), encoding="utf-8")


def export(subject: Subject, targets: Sequence[str], out: Path, *, config: str | None = None,
           campaign: str | None = None, sandbox: str | None = None,
           parallelism: int | None = None, simulator: Any = None,
           log: Log = lambda _: None) -> ExportResult:
    """Project ``subject`` onto each target, re-simulate, and write ``out/<target>/``.

    ``campaign``: the yardstick is that campaign's (tuned baseline, held-out instances, cache);
    otherwise the config's, with the baseline tuned here. ``simulator``: tests only (trusted
    files in process; the probe then runs in process too)."""
    from autotuner.check import check_policy
    from autotuner.gate import PolicyRef
    from autotuner.gate_file import GateSetup
    from autotuner.scoring import in_process, split_instances

    setup = GateSetup(config, campaign, sandbox, parallelism, simulator, log)
    try:
        cfg = setup.cfg
        baseline, _, _, where = setup.baseline()
        instances = split_instances(cfg)["heldout"]
        log(f"tuned baseline's held-out capacities on {len(instances)} instances")
        stick = Yardstick(setup.evaluator, cfg, baseline.ref(), instances)
        first_of_family = {i.family: i for i in reversed(instances)}
        runs = [(i, stick.base_caps[i.label]) for i in instances
                if first_of_family[i.family] is i]
        log(f"observing {subject.name}'s decisions on {len(runs)} instance(s)")
        try:
            obs = observe_policy(subject.code, subject.params, cfg, runs, f"{subject.name}.py",
                                 trusted=simulator is in_process)
        except ProbeError as exc:
            raise ExportError(str(exc)) from None
        log(f"capacity of {subject.name} on the held-out instances")
        policy_gain = stick.gain(PolicyRef(f"{subject.name}.py", subject.code,
                                           dict(subject.params)), f"export-{subject.name}")
        results: list[TargetResult] = []
        for k, target in enumerate(targets):
            proj = TARGETS[target](obs, subject, cfg)
            for code in (proj.policy_code, *(a.policy_code for a in proj.alternatives)):
                checked = check_policy(code, f"projection-{target}.py")
                if not checked.ok:  # our own text (and the policy's): a bug in the export
                    raise RuntimeError(f"the {target} projection is not a valid policy file: "
                                       f"{checked.reasons()[0]}")
            log(f"re-simulating the {target} projection")
            gain = stick.gain(PolicyRef(f"projection-{target}.py", proj.policy_code,
                                        dict(proj.policy_params)),
                              f"export-{subject.name}-{target}", seed_offset=k + 1)
            alternatives = []
            for n, alt in enumerate(proj.alternatives):
                log(f"re-simulating the {target} projection's alternative: {alt.label}")
                alt_gain = stick.gain(PolicyRef(f"projection-{target}-{n + 1}.py",
                                                alt.policy_code, dict(alt.policy_params)),
                                      f"export-{subject.name}-{target}-{n + 1}",
                                      seed_offset=k + 1)
                alternatives.append((alt.label, alt_gain,
                                     survival_line(alt.label, alt_gain, policy_gain)))
            results.append(TargetResult(proj, gain, survival_line(proj.label, gain, policy_gain),
                                        out / target, tuple(alternatives)))
    finally:
        setup.close()

    def build(tmp: Path) -> None:
        for r in results:
            _target_files(tmp / r.projection.target, subject, r)

    write_atomically(out, build)
    return ExportResult(subject, f"{baseline.name} ({baseline.params})", where, policy_gain,
                        dict(stick.base_caps), obs.where, results, out)
