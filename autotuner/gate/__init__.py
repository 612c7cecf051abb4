"""The promotion gate: a candidate is judged at its own claimed capacity, then compared with the
tuned baseline, the best tuned reference policy and the promoted policy; and what a promotion
writes so that anyone can check the claim with one command.

Why these conditions: a search loop optimises whatever the yardstick rewards, and the cheapest way
to raise a share-of-requests capacity is to starve the requests that cost most (defer long
prompts, never start them, serve newest first). Such a policy claims a rate at which some of its
requests wait without bound. So the claim itself is checked, at the rate claimed, on every
held-out instance:

- ``share``: the share of window requests meeting the SLO reaches ``slo.share``;
- ``sustainable``: the backlog does not grow over the window;
- ``max_wait``: no request waits longer than ``gate.max_wait_multiple`` times its TTFT deadline;
- ``finished``: every request finishes before the drain cut-off;
- ``inversions``: no more requests are overtaken while overdue (a later arrival on the same
  replica gets its first token after this request's deadline passed and before this request
  does) than under the tuned baseline at its capacity (``gate.inversion_tolerance``). FCFS and
  earliest-deadline-first make none; every reordering cheat in ``tests/gaming`` makes some;
- ``tail``: the p99 of TTFT over deadline is no worse than the tuned baseline's at the baseline's
  own capacity (``gate.tail_tolerance``).

Across instances (paired on the same requests):

- ``capacity``: the geometric mean of the capacity ratios over the tuned baseline; its one-sided
  bootstrap lower bound (resampling instances, seeded) must reach ``gate.margin``. A geometric
  mean, so one workload with a tiny baseline cannot carry the rest;
- ``regression``: no workload family's geometric-mean ratio falls below
  ``1 - gate.regression_tolerance``;
- ``reference``: the same bound against the best tuned reference policy of ``gate.references``
  (tuned on the same budget as the baseline) must reach ``gate.reference_margin``;
- ``promoted``: against the policy promoted before, if any, by ``gate.margin``.

A held-out instance on which the tuned baseline's capacity is (near) zero has no ratio: the gate
refuses to judge on it (``GateInputError``), as the campaign refuses such a workload at its start.

The package, in the order a verdict is reached: ``statistics`` (the geometric-mean statistic and
its bootstrap), ``conditions`` (each condition, pure), ``run`` (the measurement and the verdict,
``run_gate``), ``promotion`` (the files a promotion writes).
"""

from autotuner.gate.conditions import (
    CLAIM_CONDITIONS,
    Condition,
    capacity_condition,
    claim_conditions,
    regression_condition,
)
from autotuner.gate.promotion import (
    bake_params,
    claim_line,
    claims_by_workload,
    versions,
    write_promotion,
)
from autotuner.gate.run import (
    AT_CLAIM_FIELDS,
    GateInputError,
    GateResult,
    PolicyRef,
    measure_capacities,
    measure_references,
    refusal_line,
    run_gate,
    zero_capacity,
)
from autotuner.gate.statistics import (
    MIN_RATIO,
    Comparison,
    bootstrap_bound,
    bootstrap_interval,
    compare,
    family_gains,
    geometric_gain,
    geometric_interval,
)

__all__ = [
    "AT_CLAIM_FIELDS", "CLAIM_CONDITIONS", "MIN_RATIO", "Comparison", "Condition",
    "GateInputError", "GateResult", "PolicyRef", "bake_params", "bootstrap_bound",
    "bootstrap_interval", "capacity_condition", "claim_conditions", "claim_line",
    "claims_by_workload", "compare", "family_gains", "geometric_gain", "geometric_interval",
    "measure_capacities", "measure_references", "refusal_line", "regression_condition",
    "run_gate", "versions", "write_promotion", "zero_capacity",
]
