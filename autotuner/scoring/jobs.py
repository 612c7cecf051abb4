"""What is evaluated: workload instances (a scenario with a seed, or a trace window) and jobs
(one policy with its parameter values on one instance, at one rate or searched for capacity).

Both are frozen, picklable data, so a process pool runs jobs and the archive caches their results
by ``Job.key()``: everything that changes a result is in the key, and nothing that does not.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from autotuner.config import CampaignConfig, ClusterConfig, SandboxConfig, SLOConfig
from autotuner.identity import evaluation_key, sha256
from autotuner.sim.metrics import probe_horizon
from autotuner.sim.traces import load_trace, window_seconds
from autotuner.sim.workload import MAX_REQUESTS, Workload, make_workload


# ------------------------------------------------------------------------------- instances
@dataclass(frozen=True)
class Instance:
    """One workload instance: a scenario with a seed, or a time window of a trace.

    ``window`` is a [start, end) pair of fractions of the trace's duration (how the campaign
    splits a trace); ``window_s`` one in seconds of the trace's clock (``replay --window``). A
    trace instance's ``seed`` is unused (kept 0). ``requests`` caps the instance's size.
    """

    scenario: str | None
    seed: int
    requests: int
    trace: str | None = None
    window: tuple[float, float] | None = None
    window_s: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        if self.trace:
            if self.window_s:
                return f"{Path(self.trace).name}[{self.window_s[0]:g}s:{self.window_s[1]:g}s]"
            if self.window:
                return f"{Path(self.trace).name}[{self.window[0]:g}:{self.window[1]:g}]"
            return Path(self.trace).name
        return f"{self.scenario}@{self.seed}"

    @property
    def family(self) -> str:
        """What the instance is a sample of: the scenario or trace name (for per-workload
        summaries across seeds)."""
        return Path(self.trace).name if self.trace else str(self.scenario)

    def key(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scenario": self.scenario, "seed": self.seed,
                             "requests": self.requests}
        if self.trace:
            d["trace"] = os.path.abspath(self.trace)
            d["window"] = list(self.window or (0.0, 1.0))
            if self.window_s:
                d["window_s"] = list(self.window_s)
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "seed": self.seed, "requests": self.requests,
                "trace": self.trace, "window": list(self.window) if self.window else None,
                "window_s": list(self.window_s) if self.window_s else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Instance:
        window, window_s = d.get("window"), d.get("window_s")
        return cls(d.get("scenario"), int(d.get("seed", 0)), int(d["requests"]), d.get("trace"),
                   tuple(window) if window else None,  # type: ignore[arg-type]
                   tuple(window_s) if window_s else None)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=8)
def _trace_duration(path: str) -> float:
    wl = load_trace(path)
    return float(wl.arrival[-1]) if len(wl) else 0.0


@functools.lru_cache(maxsize=64)
def _build_cached(inst: Instance) -> Workload:
    if inst.trace and inst.window_s:
        lo_s, hi_s = inst.window_s
        wl = load_trace(inst.trace, start=lo_s, end=None if math.isinf(hi_s) else hi_s,
                        limit=inst.requests)
        if len(wl) < 2:
            raise ValueError(f"{inst.label}: the window holds fewer than 2 requests")
        return wl
    if inst.trace:
        start, end = window_seconds(_trace_duration(inst.trace), inst.window or (0.0, 1.0))
        wl = load_trace(inst.trace, start=start, end=end, limit=inst.requests)
        if len(wl) < 2:
            raise ValueError(f"{inst.label}: the window holds fewer than 2 requests")
        return wl
    return make_workload(str(inst.scenario), inst.requests, seed=inst.seed)


def extended(inst: Instance, multiple: int) -> Instance | None:
    """The instance with ``multiple`` times its requests (same scenario and seed), or None
    where it cannot grow: a trace window holds what it holds, and no workload is longer than
    ``MAX_REQUESTS``."""
    if multiple == 1:
        return inst
    if inst.trace or inst.requests * multiple > MAX_REQUESTS:
        return None
    return replace(inst, requests=inst.requests * multiple)


def build_workload(inst: Instance) -> Workload:
    """The instance's requests at their own (generated or recorded) rate. Cached per process."""
    return _build_cached(inst)


def split_instances(cfg: CampaignConfig) -> dict[str, list[Instance]]:
    """Training, validation and held-out instances, plus the cascade's screening ones."""
    w = cfg.workloads
    out: dict[str, list[Instance]] = {}
    for split, seeds, window in (
        ("train", w.train_seeds, w.train_window),
        ("validation", w.validation_seeds, w.validation_window),
        ("heldout", w.heldout_seeds, w.heldout_window),
    ):
        insts = [Instance(s, seed, w.requests_for(s, split)) for seed in seeds
                 for s in w.scenarios]
        insts += [Instance(None, 0, w.requests, trace, tuple(window))  # type: ignore[arg-type]
                  for trace in w.traces]
        out[split] = insts
    out["screen"] = [Instance(s, w.train_seeds[0], w.requests_for(s)) for s in w.screen]
    return out


# ------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One unit of evaluation. ``kind`` is ``"run"`` (at ``rate``; None = the instance's own)
    or ``"capacity"`` (bisection; ``rate`` is a hint for the first bracket)."""

    code: str
    params: Mapping[str, Any]
    instance: Instance
    kind: str = "run"
    rate: float | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    rel_tol: float = 0.02
    name: str = "<policy>"
    max_multiple: int = 1  # capacity: the longest run, as a multiple of the instance's requests
    first_multiple: int = 1  # capacity: the run length the search starts on (same unit)

    def key(self) -> str:
        """Identity for the evaluation cache: everything that changes the result, and nothing
        that does not (the sandbox backend and the display name do not, nor a capacity search's
        hint: the bisection's fixed grid makes the rate found independent of where it starts,
        so the baseline's held-out search hinted by its training capacity and the gate's
        unhinted one are one job, run once)."""
        context = {"kind": self.kind, "cluster": asdict(self.cluster),
                   "slo": asdict(self.slo)}
        if self.kind == "capacity":
            context["rel_tol"] = self.rel_tol
            if self.max_multiple > 1:
                context["max_multiple"] = self.max_multiple
            if self.first_multiple > 1:
                context["first_multiple"] = self.first_multiple
        return evaluation_key(sha256(self.code), dict(self.params), self.instance.key(),
                              self.rate if self.kind == "run" else None, context)


# Probes and evaluations stop an overloaded run after the same generous drain.
horizon_for = probe_horizon
