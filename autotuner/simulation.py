"""Running a policy file on a workload in this process: the reference path.

``autotuner simulate``, ``bench`` and the trusted scorer all come through here, so a policy scores
the same wherever it is scored. Untrusted proposals run in the sandbox instead; the trusted side
then replays their decisions through this same simulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotuner.policy import LoadedPolicy, PolicySource, load_policy
from autotuner.sim.engine import ClusterSpec, SimResult, simulate
from autotuner.sim.hardware import get_gpu
from autotuner.sim.metrics import SLO, summarize
from autotuner.sim.traces import load_trace
from autotuner.sim.workload import Workload, make_workload


@dataclass(frozen=True)
class WorkloadSpec:
    """How to build a workload: a named scenario, or a trace file with a window and rate scale.

    scenario: built-in scenario name (ignored when ``trace`` is set); trace: path of an Azure CSV
    or Mooncake JSONL trace; requests: how many requests (scenario) or at most (trace); rate: mean
    arrival rate in requests/s (scenario: None = its default; trace: rescaled to it if set);
    seed: randomness of a scenario; rate_scale: trace arrival-rate multiplier; start/end: trace
    time window in seconds.
    """

    scenario: str = "chat"
    trace: str | None = None
    requests: int = 2000
    rate: float | None = None
    seed: int = 0
    rate_scale: float = 1.0
    start: float | None = None
    end: float | None = None

    def build(self) -> Workload:
        if self.requests < 1:
            raise ValueError("the number of requests must be at least 1")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("the rate must be positive")
        if self.trace:
            wl = load_trace(
                Path(self.trace), rate_scale=self.rate_scale, start=self.start, end=self.end,
                limit=self.requests,
            )
            return wl.with_rate(self.rate) if self.rate else wl
        return make_workload(self.scenario, self.requests, rate=self.rate, seed=self.seed)

    def label(self) -> str:
        return Path(self.trace).name if self.trace else self.scenario


def run_policy(
    source: PolicySource,
    cluster: ClusterSpec,
    workload: Workload,
    *,
    params: Mapping[str, Any] | None = None,
    horizon: float | None = None,
) -> SimResult:
    policy: LoadedPolicy = load_policy(source, params)
    return simulate(cluster, workload, policy, horizon=horizon)


def metrics_of(
    cluster: ClusterSpec, workload: Workload, result: SimResult, slo: SLO
) -> dict[str, object]:
    gpu = get_gpu(cluster.gpu)
    return summarize(
        workload, result, slo, num_gpus=cluster.num_gpus, gpu_hour_usd=gpu.price_per_hour
    )
