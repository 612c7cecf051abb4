"""Tuning a policy's declared parameters with Optuna (TPE, seeded), durably.

One study per candidate (the baseline included, with the same trial budget), all in one journal
file (``results/<campaign>/optuna.journal``) or, when the campaign names one, an RDB
(``--storage postgresql://...``) that several drivers and a dashboard share, its study names then
prefixed by the campaign (``Studies``). Either way ``optuna-dashboard`` can show a campaign's
searches and a killed campaign resumes each study where it stopped:

- trials that finished (complete or failed) count against the budget and are never re-run;
- a trial that was running when the process died is marked failed ("interrupted") and its
  parameters are enqueued again, so its re-run finds its finished simulations in the archive's
  evaluation cache instead of paying for them twice.

The search space comes from the policy file's ``TUNABLES`` literal (read without executing the
file). The first trials are the parent's tuned values (when the child still declares them) and
the file's own defaults, so tuning never ends worse than the starting point.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from autotuner.policy import Tunable

optuna.logging.set_verbosity(logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# objective(params) -> (value, None) or (None, failure reason)
Objective = Callable[[dict[str, Any]], tuple[float | None, str | None]]


@dataclass
class TuneResult:
    params: dict[str, Any]  # best parameter values (all declared tunables)
    value: float | None  # best objective, None when every trial failed
    trials: int  # finished trials (complete + failed), interrupted ones excluded
    failures: list[str] = field(default_factory=list)  # reasons of failed trials, in order
    history: list[tuple[int, float | None]] = field(default_factory=list)  # (trial, value)
    pruned: int = 0  # trials stopped part-way (``optuna.TrialPruned``), counted in ``trials``


def repair_journal(path: str | Path) -> None:
    """Make a journal that a kill interrupted usable again: drop a torn last line and a stale
    lock file. Call only while holding the campaign's own lock (nobody else writes it)."""
    path = Path(path)
    for lock in (Path(str(path) + ".lock"),):
        if lock.is_symlink() or lock.exists():
            lock.unlink()
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            f.seek(cut)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())


def open_storage(path: str | Path) -> JournalStorage:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


class StorageUnavailable(RuntimeError):
    """An RDB storage that cannot be used (bad URL, no driver, unreachable). One line."""


RDB_CONNECT_TIMEOUT_S = 10


def open_rdb_storage(url: str) -> RDBStorage:
    """Optuna's RDB storage at ``url`` (its tables created when new), connected once now so that
    a wrong URL fails here, in one line, before anything else is written."""
    shown = shown_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": RDB_CONNECT_TIMEOUT_S}
    try:
        return RDBStorage(_with_installed_driver(url), engine_kwargs=engine_kwargs)
    except ImportError:
        raise StorageUnavailable(f"{shown}: its database driver is not installed (for "
                                 "PostgreSQL: pip install 'autotuner[ray]', which brings "
                                 "psycopg2)") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors vary by dialect and cause
        detail = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise StorageUnavailable(f"{shown}: {type(exc).__name__}: {detail}") from None


def _with_installed_driver(url: str) -> str:
    """A bare ``postgresql://`` URL names SQLAlchemy's default driver, psycopg 3 since
    SQLAlchemy 2.1 and psycopg2 before: name psycopg2 (the extra's) when only it is here."""
    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is None:
        return url
    return "postgresql+psycopg2://" + url[len("postgresql://"):]


def shown_url(url: str) -> str:
    """The URL for logs and errors: its password, if any, masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: show only the scheme
        return url.split("://", 1)[0] + "://..."


@dataclass(frozen=True)
class Studies:
    """A campaign's Optuna storage and the prefix its study names carry there: a journal file
    belongs to one campaign (no prefix), an RDB is shared by campaigns, so there each campaign's
    studies are named ``<prefix><study>`` (the prefix made once, kept in the archive)."""

    storage: BaseStorage
    prefix: str = ""

    def name(self, study: str) -> str:
        return self.prefix + study


def as_studies(storage: Studies | BaseStorage) -> Studies:
    return storage if isinstance(storage, Studies) else Studies(storage)


def distributions(tunables: Sequence[Tunable]) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for t in tunables:
        if t.type == "int":
            out[t.name] = IntDistribution(int(t.low), int(t.high), log=t.log)
        else:
            out[t.name] = FloatDistribution(float(t.low), float(t.high), log=t.log)
    return out


def starting_points(tunables: Sequence[Tunable], *sources: Mapping[str, Any] | None
                    ) -> list[dict[str, Any]]:
    """Distinct full parameter sets to try first: each source overlaid on the defaults (names
    the file does not declare are dropped, values clipped into range)."""
    defaults = {t.name: t.clip(t.default) for t in tunables}
    by_name = {t.name: t for t in tunables}
    out: list[dict[str, Any]] = []
    for src in (*sources, None):
        params = dict(defaults)
        for key, value in (src or {}).items():
            if key in by_name and isinstance(value, (int, float)) and not isinstance(value, bool):
                params[key] = by_name[key].clip(value)
        if params not in out:
            out.append(params)
    return out


def study_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def tune(
    *,
    storage: Studies | BaseStorage,
    study_name: str,
    tunables: Sequence[Tunable],
    n_trials: int,
    objective: Objective,
    seed: int = 0,
    start: Sequence[Mapping[str, Any] | None] = (),
    on_trial: Callable[[int, float | None, str | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TuneResult:
    """Run (or resume) study ``study_name`` until it holds ``n_trials`` finished trials.

    Without tunables there is nothing to search: one evaluation of the empty parameter set.
    ``should_stop`` is polled between trials (the campaign's wall-clock budget). An objective
    may raise ``optuna.TrialPruned`` to stop a trial part-way: it counts against the budget and
    is never the result.
    """
    studies = as_studies(storage)
    storage, study_name = studies.storage, studies.name(study_name)
    n_trials = max(1, n_trials)
    if not tunables:
        n_trials = 1
    sampler = optuna.samplers.TPESampler(
        seed=study_seed(seed, study_name),
        n_startup_trials=max(2, min(10, n_trials // 3)),
        multivariate=True,
    )
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                sampler=sampler, load_if_exists=True)
    dists = distributions(tunables)
    trials = study.get_trials(deepcopy=False)
    if not study.user_attrs.get("enqueued"):
        for params in starting_points(tunables, *start)[:n_trials]:
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("enqueued", True)
    # trials that a kill interrupted: fail them, and try their parameters again
    for t in trials:
        if t.state == TrialState.RUNNING:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(dict(t.params))

    def finished() -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))]

    done = len(finished())
    while done < n_trials:
        if should_stop is not None and should_stop():
            break
        trial = study.ask(dists)
        params = dict(trial.params)
        try:
            value, error = objective(params)
        except optuna.TrialPruned as stopped:  # stopped part-way: never the study's best
            trial.set_user_attr("pruned", str(stopped)[:2000])
            study.tell(trial, state=TrialState.PRUNED)
            value, error = None, f"pruned: {stopped}"
        else:
            if error is None and value is not None:
                study.tell(trial, value)
            else:
                trial.set_user_attr("error", (error or "no value")[:2000])
                study.tell(trial, state=TrialState.FAIL)
        done += 1
        if on_trial is not None:
            on_trial(done, value, error)
    return result_of(study, tunables)


def result_of(study: optuna.Study, tunables: Sequence[Tunable]) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL
              and not t.user_attrs.get("interrupted")]
    defaults = {t.name: t.clip(t.default) for t in tunables}
    history = [(t.number, t.value if t.state == TrialState.COMPLETE else None)
               for t in sorted(complete + failed, key=lambda t: t.number)]
    failures = [str(t.user_attrs.get("error", "failed")) for t in failed]
    pruned = sum(1 for t in trials if t.state == TrialState.PRUNED)
    if not complete:
        return TuneResult(defaults, None, len(complete) + len(failed) + pruned, failures,
                          history, pruned)
    # best value; ties go to the earliest trial (the starting points come first)
    best = max(complete, key=lambda t: (t.value, -t.number))
    params = {**defaults, **best.params}
    params = {t.name: t.clip(params[t.name]) for t in tunables}
    return TuneResult(params, float(best.value), len(complete) + len(failed) + pruned, failures,
                      history, pruned)


def load_result(storage: Studies | BaseStorage, study_name: str, tunables: Sequence[Tunable]
                ) -> TuneResult | None:
    studies = as_studies(storage)
    try:
        study = optuna.load_study(study_name=studies.name(study_name), storage=studies.storage)
    except KeyError:
        return None
    return result_of(study, tunables)
