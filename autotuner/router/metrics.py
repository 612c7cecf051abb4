"""The router's Prometheus metrics, written as the text exposition format by hand: a handful of
counters and two histograms do not justify a dependency."""

from __future__ import annotations

import bisect
from collections import Counter

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.n}"]
        return out


class RouterMetrics:
    def __init__(self, backends: list[str]):
        self.backends = backends
        self.decisions: Counter = Counter()  # (backend index, "policy"|"fallback")
        self.fallbacks: Counter = Counter()  # reason kind
        self.responses: Counter = Counter()  # (backend index, outcome)
        self.retries = 0
        self.decision_seconds = Histogram()
        self.first_byte_seconds = Histogram()
        self.request_seconds = Histogram()

    def render(self, policy_restarts: int) -> str:
        lines = ["# HELP autotuner_router_decisions_total Routing decisions per backend, by "
                 "who decided (the policy, or the least-outstanding fallback).",
                 "# TYPE autotuner_router_decisions_total counter"]
        for (index, by), count in sorted(self.decisions.items()):
            lines.append(f'autotuner_router_decisions_total{{backend="{self.backends[index]}",'
                         f'by="{by}"}} {count}')
        lines += ["# HELP autotuner_router_policy_fallbacks_total Requests routed by the "
                  "fallback, by why the policy gave no usable decision.",
                  "# TYPE autotuner_router_policy_fallbacks_total counter"]
        for reason, count in sorted(self.fallbacks.items()):
            lines.append(f'autotuner_router_policy_fallbacks_total{{reason="{reason}"}} {count}')
        lines += ["# TYPE autotuner_router_responses_total counter"]
        for (index, outcome), count in sorted(self.responses.items()):
            lines.append(f'autotuner_router_responses_total{{backend="{self.backends[index]}",'
                         f'outcome="{outcome}"}} {count}')
        lines += ["# TYPE autotuner_router_retries_total counter",
                  f"autotuner_router_retries_total {self.retries}",
                  "# TYPE autotuner_router_policy_restarts_total counter",
                  f"autotuner_router_policy_restarts_total {policy_restarts}",
                  "# HELP autotuner_router_decision_seconds Time to decide a request's backend.",
                  "# TYPE autotuner_router_decision_seconds histogram"]
        lines += self.decision_seconds.lines("autotuner_router_decision_seconds")
        lines += ["# HELP autotuner_router_first_byte_seconds Request in to first response "
                  "byte out (time to first token for a stream).",
                  "# TYPE autotuner_router_first_byte_seconds histogram"]
        lines += self.first_byte_seconds.lines("autotuner_router_first_byte_seconds")
        lines += ["# TYPE autotuner_router_request_seconds histogram"]
        lines += self.request_seconds.lines("autotuner_router_request_seconds")
        return "\n".join(lines) + "\n"
