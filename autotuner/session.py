"""Sessions: many runs of one policy file on one warm sandbox worker, each run with its own params.

A small run's cost was mostly the worker's start (an interpreter and its imports, ~0.15 s of CPU)
rather than its simulation; a session pays it once per policy file (a candidate's ladder rungs,
capacity probes and every Optuna trial's runs: on a busy 2-core machine a worker per trial and
pool process cost about a fifth of a trial's CPU). The judging is ``autotuner.evaluate``'s,
unchanged: this module only feeds it runs over a kept worker (the worker's session mode in
``sandbox/worker.py``) and falls back to a lone ``evaluate`` whenever the worker itself fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from autotuner.evaluate import (
    FAILED,
    OK,
    TIMINGS,
    Evaluation,
    _clip,
    _rejected,
    _replay_class,
    _timed_replay,
    _workload_data,
    evaluate,
    untrusted_text,
    workload_fingerprint,
)
from autotuner.isolation import Backend, Limits, WorkerFault, get_backend

SESSION_RUNS = 64  # runs per session worker; its CPU-time limit is this many runs' worth


class _SessionLost(Exception):
    """The session's worker failed in a way a lone worker might not have (it died, wrote garbage,
    timed out, or stopped before a run's end): the run is judged again by a lone worker."""


class Session:
    """Many runs of one policy file on one warm sandbox worker (``params`` by default, or the
    params a run names: each run loads a fresh module with its own).

    The trust boundary is ``evaluate``'s: the trusted side replays every run's decisions in its
    own simulator and computes the metrics itself; the worker's word is believed for nothing
    else. A run the session settles (ok, a policy error, an illegal decision, a log too long)
    gets the verdict a lone worker would give, field for field; any failure of the worker itself
    (a crash, a kill from outside, a timeout, garbage) ends the session and that run is run
    again alone through ``evaluate``, whose verdict is the one returned, so the session can
    neither lose a run nor blame a policy for another run's fault. Per run, the worker gets a
    fresh policy module and the full wall-time limit; its CPU-time limit covers the session.
    Backends that cannot keep a worker (docker) run every run alone.
    """

    def __init__(self, code: str, *, name: str = "<policy>",
                 params: Mapping[str, Any] | None = None, cluster: Any = None,
                 sandbox: str | Backend | None = None, limits: Limits | None = None,
                 skip_check: bool = False, batch: int = 2048, with_metrics: bool = True):
        from autotuner.sim.engine import ClusterSpec

        self.code, self.name, self.batch = code, name, batch
        self.params_in = dict(params or {})
        self.cluster = cluster or ClusterSpec()
        self.backend = sandbox if isinstance(sandbox, Backend) else get_backend(sandbox)
        self.limits = limits or Limits()
        self.skip_check = skip_check
        self.with_metrics = with_metrics
        self.handle: Any = None
        self.runs = 0  # runs on the current worker
        self.rejected: Evaluation | None = None  # the file refused, or the default params
        self.params: dict[str, Any] = {}
        self.source: Any = None
        self._resolved: dict[str, dict[str, Any] | Evaluation] = {}
        self._expected: tuple[Any, float | None, Mapping[str, Any] | None] | None = None
        self._ahead: tuple[str, float | None, str] | None = None  # the run the worker has queued
        self._check()

    def _check(self) -> None:
        """The static check once for the session, and the default params (``evaluate``'s step
        1); a run with other params has them resolved on their own (``_params_for``)."""
        from autotuner.policy import PolicyFileError, read_policy_source

        t0 = time.perf_counter()
        if self.skip_check:
            try:
                source = read_policy_source(self.code, self.name)
            except PolicyFileError as exc:
                self.rejected = _rejected([str(exc)], self.name, t0, ["file"])
                return
        else:
            from autotuner.check import check_policy

            checked = check_policy(self.code, self.name)
            if not checked.ok or checked.source is None:
                self.rejected = _rejected(
                    checked.reasons() or ["the static check refused the file"], self.name, t0,
                    [i.construct for i in checked.issues])
                return
            source = checked.source
        self.source = source
        params = self._params_for(self.params_in)
        if isinstance(params, Evaluation):
            self.rejected = params
        else:
            self.params = params

    def _params_for(self, params_in: Mapping[str, Any]) -> dict[str, Any] | Evaluation:
        """``params_in`` resolved against the file's TUNABLES as ``evaluate`` resolves them
        (cached), or the rejection a lone run with them would get."""
        from autotuner.policy import PolicyFileError

        key = json.dumps(dict(params_in), sort_keys=True, default=repr)
        if key not in self._resolved:
            t0 = time.perf_counter()
            try:
                self._resolved[key] = dict(self.source.resolve_params(dict(params_in)))
            except PolicyFileError as exc:
                self._resolved[key] = _rejected([str(exc)], self.name, t0, ["params"],
                                                dict(params_in))
        return self._resolved[key]

    def expect(self, workload: Any, *, horizon: float | None = None,
               params: Mapping[str, Any] | None = None) -> None:
        """Name the run that the next ``run`` call will ask for: that call sends it to the
        worker right after its own, so the worker starts it the moment the current run ends
        instead of idling while the trusted side replays the current run's last decisions and
        scores it (a tenth of a small run's wall time). Only the very next call uses it; if
        that call asks for another run, the worker, busy with this one, is replaced."""
        self._expected = (workload, horizon, params)

    def run(self, workload: Any, *, slo: Any = None, horizon: float | None = None,
            params: Mapping[str, Any] | None = None) -> Evaluation:
        """One run on ``workload`` (a built ``Workload``) with ``params`` (None: the session's),
        as ``evaluate`` would judge it."""
        from autotuner.sim.metrics import SLO

        t0 = time.perf_counter()
        expected, self._expected = self._expected, None
        slo = slo or SLO()
        params_in = self.params_in if params is None else dict(params)
        if self.source is None and self.rejected is not None:  # the file itself is refused
            return replace(self.rejected, wall_s=0.0)
        resolved = self._params_for(params_in)
        if isinstance(resolved, Evaluation):
            return replace(resolved, wall_s=0.0)
        if getattr(self.backend, "sessions", True):
            try:
                return self._in_session(workload, slo, horizon, t0, resolved, expected)
            except (_SessionLost, WorkerFault):
                self.close()
        TIMINGS["alone"] += 1
        return evaluate(self.code, name=self.name, params=params_in, cluster=self.cluster,
                        workload=workload, slo=slo, horizon=horizon, sandbox=self.backend,
                        limits=self.limits, skip_check=self.skip_check, batch=self.batch)

    def _worker(self) -> Any:
        if self.handle is not None and self.runs >= SESSION_RUNS and self._ahead is None:
            self.close()
        if self.handle is None:
            request = {"session": True, "code": self.code, "name": self.name,
                       "params": self.params, "cluster": asdict(self.cluster),
                       "limits": self.limits.as_dict(), "batch": self.batch,
                       "unfenced": bool(self.skip_check)}
            limits = replace(self.limits, cpu_s=self.limits.cpu_s * SESSION_RUNS)
            t0 = time.perf_counter()
            try:
                # warm: the next session (the next trial's params) finds its worker started
                handle = self.backend.start((json.dumps(request, allow_nan=False) + "\n")
                                            .encode(), limits, warm=True)
            except Exception as exc:  # noqa: BLE001 - judged again alone, which retries
                raise _SessionLost(str(exc)) from None
            TIMINGS["start_s"] += time.perf_counter() - t0
            if not handle.supports_sessions:
                handle.close()
                self.backend.sessions = False  # type: ignore[attr-defined]
                raise _SessionLost("this backend keeps no worker between runs")
            self.handle, self.runs = handle, 0
        return self.handle

    def _in_session(self, wl: Any, slo: Any, horizon: float | None, t0: float,
                    params: dict[str, Any], expected: tuple[Any, ...] | None) -> Evaluation:
        from autotuner.simulation import metrics_of

        fingerprint = workload_fingerprint(wl)
        key = _run_key(fingerprint, horizon, params)
        if self._ahead is not None and self._ahead != key:
            self.close()  # its worker is running a run nobody will ask for
        handle = self._worker()
        if self._ahead == key:  # sent ahead by the previous run: the worker has it already
            self._ahead = None
            handle.begin_run()
        else:
            self.runs += 1
            handle.send_more(_run_line(wl, horizon, params))
        if expected is not None:
            self._send_ahead(handle, *expected)
        replay = _replay_class()(handle, fingerprint, session=True)
        result = _timed_replay(self.cluster, wl, replay, horizon)

        def failed(reason: str, phase: str, decisions: int, keep: bool) -> Evaluation:
            if not keep:  # the worker is mid-run: its rest is of no use
                self.close()
            return Evaluation(FAILED, [_clip(reason)], None, decisions,
                              time.perf_counter() - t0, self.backend.name, self.name,
                              dict(params), [], phase)

        if replay.fault or not replay.greeted:
            raise _SessionLost(replay.fault or "no hello")
        if result.error:
            if not replay.ran_out:
                return failed(f"illegal decision: {result.error}", "replay", replay.pos - 1,
                              False)
            if replay.end is not None and replay.end.get("error"):
                return failed(f"policy error: {untrusted_text(replay.end['error'])}",
                              "sandbox", replay.pos, True)
            raise _SessionLost("the log ended before the simulation did")
        replay.drain()
        if replay.end is None:
            raise _SessionLost("the worker stopped without sending its result")
        if replay.unused:
            return failed(f"the worker's decision log has {replay.unused} more entries than "
                          "the simulation asked for", "replay", replay.pos, True)
        if replay.end.get("error"):
            return failed(f"policy error: {untrusted_text(replay.end['error'])}", "sandbox",
                          replay.pos, True)
        metrics = metrics_of(self.cluster, wl, result, slo) if self.with_metrics else None
        return Evaluation(OK, [], metrics, replay.pos, time.perf_counter() - t0,
                          self.backend.name, self.name, dict(params), [], "done", result)

    def _send_ahead(self, handle: Any, wl: Any, horizon: float | None,
                    params_in: Mapping[str, Any] | None) -> None:
        """Queue the expected run on the worker behind the current one (not when its params
        are refused, or the worker is due to be replaced)."""
        params = self._params_for(self.params_in if params_in is None else dict(params_in))
        if isinstance(params, Evaluation) or self.runs >= SESSION_RUNS:
            return
        handle.send_more(_run_line(wl, horizon, params), ahead=True)
        self.runs += 1
        self._ahead = _run_key(workload_fingerprint(wl), horizon, params)

    def close(self) -> None:
        self._ahead = None
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _run_line(wl: Any, horizon: float | None, params: Mapping[str, Any]) -> bytes:
    """One run's request line to a session worker."""
    line = {"workload": {"data": _workload_data(wl)}, "horizon": horizon, "params": dict(params)}
    return (json.dumps(line, allow_nan=False) + "\n").encode()


def _run_key(fingerprint: str, horizon: float | None, params: Mapping[str, Any]
             ) -> tuple[str, float | None, str]:
    """What makes two run requests the same run."""
    return fingerprint, horizon, json.dumps(dict(params), sort_keys=True, default=repr)
