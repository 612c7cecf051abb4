"""The hostile corpus (tests/hostile/*.py), through the whole evaluate stage, on every backend.

Each file's header says what must happen:

    # expect: rejected CONSTRUCT     the static check refuses it, naming that construct
    # expect: failed TEXT            it passes the check and fails at run time, reason has TEXT
    # sandbox: failed [TEXT]         with the check (and the loader's fence) bypassed, the
                                     sandbox alone makes it fail (reason has TEXT)
    # sandbox: honest                bypassed: it either fails or scores exactly the honest
                                     fixed-chunk metrics (tampering gains nothing)
    # sandbox: contained             bypassed: any verdict, as long as nothing leaks or is left

Always: the canaries (an environment variable and two 0600 files) appear in no output; no file
is written outside the sandbox; no process, scratch directory, cgroup or container is left.
Cases that defeat only the filesystem view say ``# weaker: process``: the process backend runs as
the user and can read what the user can (it is documented as weaker), so they skip there.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from sandbox_support import (
    Canaries,
    assert_no_leftovers,
    backend_params,
    make_subreaper,
    no_pwned_files,
)

from autotuner.evaluate import evaluate
from autotuner.isolation import Limits
from autotuner.policy import read_policy_file
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO
from autotuner.simulation import WorkloadSpec, metrics_of, run_policy

HOSTILE = Path(__file__).parent / "hostile"
SPEC = WorkloadSpec(scenario="chat", requests=200, seed=0)
CLUSTER = ClusterSpec()
# The CPU limit ends runaway policies: CPU seconds do not stretch on a loaded machine, wall
# seconds do (at a load of 2 per core a memory bomb needs three times its unloaded wall time).
# So the wall limit is generous, except for the cases that only the wall limit can end
# (``# wall: SECONDS`` in their header: they sleep, which takes no CPU at any load).
LIMITS = Limits(wall_s=60.0, cpu_s=4, memory_bytes=1 << 30, processes=16,
                output_bytes=32 << 20, stderr_bytes=256 << 10)


def _header(path: Path) -> dict[str, tuple[str, str]]:
    text = path.read_text()
    out = {}
    for key in ("expect", "sandbox", "weaker", "wall"):
        m = re.search(rf"^# {key}: (\S+) ?(.*)$", text, re.M)
        if m:
            out[key] = (m.group(1), m.group(2).strip())
    return out


CASES = sorted(HOSTILE.glob("*.py"))
HEADERS = {p.name: _header(p) for p in CASES}
def _limits(path: Path) -> Limits:
    wall = HEADERS[path.name].get("wall")
    return LIMITS.with_(wall_s=float(wall[0])) if wall else LIMITS


REJECTED = [p for p in CASES if HEADERS[p.name]["expect"][0] == "rejected"]
RUNTIME = [p for p in CASES if HEADERS[p.name]["expect"][0] == "failed"]
SANDBOXED = [p for p in CASES if "sandbox" in HEADERS[p.name]]


def test_corpus_is_complete():
    assert len(CASES) >= 30
    for name, header in HEADERS.items():
        assert "expect" in header, f"{name} has no '# expect:' header"
        assert header["expect"][0] in ("rejected", "failed"), name
    # Both halves of the defence are exercised, and the sandbox on many kinds of attack.
    assert len(RUNTIME) >= 8 and len(SANDBOXED) >= 20


@pytest.fixture(scope="module")
def canaries():
    c = Canaries()
    c.plant()
    yield c
    c.remove()


@pytest.fixture(scope="module")
def honest_metrics():
    wl = SPEC.build()
    source = read_policy_file(baseline_path("fixed_chunk"))
    return metrics_of(CLUSTER, wl, run_policy(source, CLUSTER, wl), SLO())


@pytest.fixture()
def scratch_root(tmp_path, monkeypatch):
    """The process backend's scratch directories go here, so leftovers are countable."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    make_subreaper()
    return tmp_path


def _outputs(ev, capfd) -> list[str]:
    captured = capfd.readouterr()
    return [json.dumps(ev.to_dict(), default=str), captured.out, captured.err]


@pytest.mark.parametrize("path", REJECTED, ids=lambda p: p.stem)
def test_rejected_by_check(path, canaries, capfd):
    construct = HEADERS[path.name]["expect"][1]
    ev = evaluate(path.read_text(), name=path.name, workload=SPEC, cluster=CLUSTER,
                  limits=LIMITS)
    assert ev.verdict == "rejected", ev
    assert construct in ev.constructs, (construct, ev.constructs, ev.reasons)
    assert ev.reasons and all(isinstance(r, str) and r for r in ev.reasons)
    canaries.assert_absent(*_outputs(ev, capfd))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.stem)
def test_fails_at_run_time(path, backend, canaries, scratch_root, capfd):
    text = HEADERS[path.name]["expect"][1]
    ev = evaluate(path.read_text(), name=path.name, workload=SPEC, cluster=CLUSTER,
                  sandbox=backend, limits=_limits(path), warm=True)
    assert ev.verdict == "failed", ev
    assert text.lower() in " ".join(ev.reasons).lower(), ev.reasons
    assert all(len(r) <= 400 for r in ev.reasons), "a failure reason must stay short"
    canaries.assert_absent(*_outputs(ev, capfd))
    assert_no_leftovers(scratch_root, backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("path", SANDBOXED, ids=lambda p: p.stem)
def test_sandbox_contains_it(path, backend, canaries, honest_metrics, scratch_root, capfd):
    header = HEADERS[path.name]
    weaker = header.get("weaker", ("", ""))
    if backend in weaker[0].split(","):
        pytest.skip(f"the {backend} backend is documented as weaker here: {weaker[1]}")
    kind, text = header["sandbox"]
    ev = evaluate(path.read_text(), name=path.name, workload=SPEC, cluster=CLUSTER,
                  sandbox=backend, limits=_limits(path), skip_check=True, warm=True)
    if kind == "failed":
        assert ev.verdict == "failed", ev
        assert text.lower() in " ".join(ev.reasons).lower(), ev.reasons
    elif kind == "honest":
        assert ev.verdict in ("ok", "failed"), ev
        if ev.verdict == "ok":
            assert ev.metrics == honest_metrics, "tampering inside the worker changed the score"
    else:
        assert kind == "contained", kind
        assert ev.verdict in ("ok", "failed", "rejected")
    canaries.assert_absent(*_outputs(ev, capfd))
    assert not no_pwned_files(), f"the policy wrote outside its sandbox: {no_pwned_files()}"
    package = Path(__file__).resolve().parents[1] / "autotuner"
    assert not (package / "pwned.py").exists()
    assert_no_leftovers(scratch_root, backend)
