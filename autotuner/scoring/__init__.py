"""Scoring policies on workload instances: single runs, capacity, and the ladder objective.

Read in this order: ``jobs`` (what is evaluated: an ``Instance`` is a scenario with a seed or a
trace window, a ``Job`` one policy with its parameter values on one instance, at one rate or
searched for its capacity), ``evaluator`` (how a job runs: through ``autotuner.evaluate``, the
sandbox with trusted replay, for the baseline exactly as for a proposal; the ``Evaluator`` runs
many through the archive's evaluation cache on an ``executors.Executor``: a local process pool,
or Ray tasks on a cluster, ``ray_executor``), ``ladder`` (the search's objective,
a cheap stand-in for capacity, paired against the tuned baseline on each instance).
"""

from autotuner.scoring.evaluator import (
    Evaluator,
    LocalPool,
    NoCache,
    Simulator,
    execute_job,
    in_process,
    run_at,
    sandbox_backend,
    sandbox_description,
    sandboxed,
    sandboxed_evaluation,
    simulator_for,
)
from autotuner.scoring.executors import EXECUTORS, Executor, ExecutorUnavailable
from autotuner.scoring.jobs import (
    Instance,
    Job,
    build_workload,
    extended,
    horizon_for,
    split_instances,
)
from autotuner.scoring.ladder import (
    FADE_MULTIPLE,
    MIN_RATIO,
    LadderScore,
    capacity_jobs,
    goodput_of,
    ladder_jobs,
    ladder_scores,
    objective_on,
    run_lengths,
    stage_ends,
    staged_ladder,
    sustained_share,
)

# report.py's name for the backend lookup, until it uses ``sandboxed_evaluation``
_backend = sandbox_backend

__all__ = [
    "FADE_MULTIPLE",
    "MIN_RATIO",
    "EXECUTORS",
    "Evaluator",
    "Executor",
    "ExecutorUnavailable",
    "LocalPool",
    "Instance",
    "Job",
    "LadderScore",
    "NoCache",
    "Simulator",
    "build_workload",
    "extended",
    "capacity_jobs",
    "run_lengths",
    "execute_job",
    "goodput_of",
    "horizon_for",
    "in_process",
    "ladder_jobs",
    "ladder_scores",
    "objective_on",
    "run_at",
    "sandbox_backend",
    "sandbox_description",
    "sandboxed",
    "sandboxed_evaluation",
    "simulator_for",
    "split_instances",
    "stage_ends",
    "staged_ladder",
    "sustained_share",
]
