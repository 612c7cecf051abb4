"""The evaluate stage: static check, sandboxed run, trusted replay and metrics, one plain record.

    check ──► sandboxed worker (policy + its own simulator) ──► decision log ──► trusted replay
                                                                               (our simulator,
                                                                                our metrics)

The worker streams its decision log while it runs; the trusted side replays each decision in its
own simulator as it arrives (on the other core), validates it against its own state, and computes
every metric itself. Nothing else the worker says is believed: a forged log either fails
validation or scores as exactly the decisions it contains; a log with entries left over, or too
few, is a failure. The worker's own error text is used only to explain a failure, and only after
it is made printable, cut short and scrubbed of the parent's environment values.

``evaluate`` never raises for a bad proposal: every fault (crash, timeout, exception, garbage or
oversized output, a killed worker, an illegal decision) is a ``failed`` Evaluation with a reason.
It raises for the caller's own mistakes (an unknown sandbox, a bad workload spec), and
``SandboxBroken`` when the sandbox itself keeps failing before any policy code ran (the worker
is started, and speaks first, before it reads the policy): such a failure says nothing about the
policy, so it is retried and, if it persists, is never returned as a verdict to be recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from autotuner.isolation import Backend, Limits, SandboxBroken, WorkerFault, get_backend

OK, REJECTED, FAILED = "ok", "rejected", "failed"
INFRA_ATTEMPTS = 3  # runs of one evaluation while the sandbox fails before the policy ran
MAX_REASON_CHARS = 400

# Environment variables whose values are harmless to show (everything else is scrubbed from
# worker-provided text, in case a weaker backend let a policy see it).
_BENIGN_ENV = {
    "PATH", "HOME", "PWD", "OLDPWD", "SHELL", "TERM", "LANG", "LANGUAGE", "USER", "LOGNAME",
    "HOSTNAME", "SHLVL", "TMPDIR", "TZ", "COLUMNS", "LINES", "_", "VIRTUAL_ENV", "PYTHONPATH",
    "CI", "DISPLAY",
}


@dataclass
class Evaluation:
    """The outcome of one evaluation: what the campaign archives and the CLI prints.

    verdict: ``ok`` (metrics are the trusted replay's), ``rejected`` (by the static check; nothing
    ran) or ``failed`` (it ran and broke something). reasons: sentences for the user and the
    proposer. constructs: the check's tags for a rejection. decisions: decisions the trusted
    replay accepted. phase: where it ended (``check``, ``sandbox``, ``replay``, ``done``).
    """

    verdict: str
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    decisions: int = 0
    wall_s: float = 0.0
    backend: str | None = None
    policy: str = "<policy>"
    params: dict[str, Any] = field(default_factory=dict)
    constructs: list[str] = field(default_factory=list)
    phase: str = ""
    result: Any = field(default=None, repr=False)  # the trusted replay's SimResult (when ok)

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the archive and --json (the SimResult's arrays stay out)."""
        data = asdict(replace(self, result=None))
        data.pop("result")
        return data


# Where evaluation time goes, summed in this process (``autotuner bench --campaign`` reads it):
# starting or taking a worker, waiting for the worker's log (its start, simulation and the pipe),
# the trusted replay's own simulation (CPU), and the worker's simulation and total CPU time as it
# reports them (believed for the benchmark only).
TIMINGS: dict[str, float] = {"start_s": 0.0, "wait_s": 0.0, "replay_s": 0.0,
                             "worker_sim_s": 0.0, "worker_cpu_s": 0.0, "runs": 0.0,
                             "alone": 0.0}


def reset_timings() -> None:
    for key in TIMINGS:
        TIMINGS[key] = 0.0


# ------------------------------------------------------------------------------ helpers
def workload_fingerprint(wl: Any) -> str:
    """Same digest as ``sandbox/worker.py``'s ``fingerprint`` (tests keep the two in step)."""
    h = hashlib.sha256()
    for arr in (wl.arrival, wl.prompt, wl.output):
        h.update(arr.tobytes())
    h.update(repr(wl.prefix).encode())
    h.update(str(wl.prefix_block_tokens).encode())
    return h.hexdigest()[:32]


def _workload_data(wl: Any) -> dict[str, Any]:
    return {
        "name": wl.name, "arrival": wl.arrival.tolist(), "prompt": wl.prompt.tolist(),
        "output": wl.output.tolist(),
        "prefix": None if wl.prefix is None else [list(p) for p in wl.prefix],
        "prefix_block_tokens": int(wl.prefix_block_tokens),
    }


def _secret_values() -> list[str]:
    values = []
    for key, value in os.environ.items():
        if key in _BENIGN_ENV or key.startswith("LC_") or len(value) < 6:
            continue
        values.append(value)
    return sorted(set(values), key=len, reverse=True)


def untrusted_text(text: Any, limit: int = MAX_REASON_CHARS) -> str:
    """Worker-provided text made safe to show: printable, short, no parent env values in it."""
    if not isinstance(text, str) or not text.strip():
        return "(the worker gave no reason)"
    text = "".join(ch if ch.isprintable() else " " for ch in text[: limit * 4])
    for secret in _secret_values():
        if secret in text:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _replay_class() -> type:
    from autotuner.sim.api import PolicyError
    from autotuner.sim.replay import ReplayPolicy

    class StreamReplay(ReplayPolicy):
        """The replay fed from the worker's stdout while the worker is still running."""

        def __init__(self, handle: Any, fingerprint: str, session: bool = False):
            super().__init__()
            self.session = session  # a session's stream goes on after this run's end line
            self.handle = handle
            self.fingerprint = fingerprint
            self.state = "hello"  # -> "decisions" -> "end" -> "eof"
            self.greeted = False  # a valid hello came: from here on the policy may have run
            self.end: dict[str, Any] | None = None
            self.fault: str | None = None

        def pull(self) -> None:
            t0 = time.perf_counter()
            try:
                line = self.handle.next_line()
            finally:
                TIMINGS["wait_s"] += time.perf_counter() - t0
            if line is None:
                self.state = "eof"
                return
            try:
                msg = json.loads(line)
            except Exception:  # noqa: BLE001 - ValueError, RecursionError, anything
                raise WorkerFault("garbage output: the worker's result is not valid JSON "
                                  "(only its decision log is read)") from None
            if not isinstance(msg, dict) or len(msg) != 1:
                raise WorkerFault("garbage output: not a message of the worker protocol")
            kind, body = next(iter(msg.items()))
            if self.state == "hello" and kind == "hello" and isinstance(body, dict):
                if body.get("workload") != self.fingerprint:
                    raise WorkerFault("the worker built a different workload than the trusted "
                                      "side (fingerprints differ): results would not replay")
                self.state, self.greeted = "decisions", True
            elif self.state == "decisions" and kind == "f" and isinstance(body, list):
                try:
                    array("q", body)  # plain (or boolean) 64-bit ints, checked in C
                except (TypeError, OverflowError):
                    raise WorkerFault("garbage output: the worker's decision log holds "
                                      "something other than 64-bit integers") from None
                self.buf.extend(body)
            elif self.state == "decisions" and kind == "end" and isinstance(body, dict):
                self.end = body
                self.state = "end"
                sim_s = body.get("sim_s")
                if isinstance(sim_s, float) and 0.0 <= sim_s < 1e6:
                    TIMINGS["worker_sim_s"] += sim_s
                cpu_s = body.get("cpu_s")
                if isinstance(cpu_s, float) and 0.0 <= cpu_s < 1e6:
                    TIMINGS["worker_cpu_s"] += cpu_s
            elif self.state == "end":
                raise WorkerFault("garbage output: the worker wrote more after its result")
            else:
                raise WorkerFault(f"garbage output: unexpected {kind!r} message from the worker")

        def drain(self) -> None:
            """Read to the end of output (of this run's messages, in a session)."""
            while self.state != "eof" and not (self.session and self.state == "end"):
                self.pull()

        def more(self, decision: str) -> bool:
            had = len(self.buf)
            while len(self.buf) == had and self.state in ("hello", "decisions"):
                try:
                    self.pull()
                except WorkerFault as exc:
                    self.fault = str(exc)
                    raise PolicyError(decision, "the sandbox worker failed") from None
            return len(self.buf) > had

    return StreamReplay


def _rejected(reasons: list[str], name: str, t0: float, constructs: list[str] | None = None,
              params: Mapping[str, Any] | None = None) -> Evaluation:
    return Evaluation(REJECTED, reasons, policy=name, wall_s=time.perf_counter() - t0,
                      constructs=constructs or [], phase="check", params=dict(params or {}))


# ------------------------------------------------------------------------------ evaluate
def evaluate(
    code: str,
    *,
    name: str = "<policy>",
    params: Mapping[str, Any] | None = None,
    cluster: Any = None,
    workload: Any = None,
    slo: Any = None,
    horizon: float | None = None,
    sandbox: str | Backend | None = None,
    limits: Limits | None = None,
    skip_check: bool = False,
    batch: int = 2048,
    warm: bool = False,
    observe: Any = None,
) -> Evaluation:
    """Check, run in the sandbox, replay and score one policy file's text.

    workload: a ``WorkloadSpec`` (default: its defaults) or a built ``Workload``. sandbox: a
    backend name, a Backend, or None to detect. skip_check: run without the static check (tests
    of the sandbox's own defences only; never for real proposals). observe: wraps the trusted
    replay's policy (``observe(replay)``) to read each validated decision beside the view it
    answered (``autotuner export`` projects a policy from them); it must return each answer as is.
    """
    from autotuner.policy import PolicyFileError, read_policy_source
    from autotuner.sim.engine import ClusterSpec
    from autotuner.sim.metrics import SLO
    from autotuner.sim.workload import Workload
    from autotuner.simulation import WorkloadSpec

    t0 = time.perf_counter()
    cluster = cluster or ClusterSpec()
    slo = slo or SLO()
    limits = limits or Limits()
    if workload is None:
        workload = WorkloadSpec()
    backend = sandbox if isinstance(sandbox, Backend) else get_backend(sandbox)

    # 1. static check
    if not isinstance(code, str):
        return _rejected(["the policy file is not text"], name, t0)
    if skip_check:
        try:
            source = read_policy_source(code, name)
        except PolicyFileError as exc:
            return _rejected([str(exc)], name, t0, ["file"])
    else:
        from autotuner.check import check_policy

        checked = check_policy(code, name)
        if not checked.ok or checked.source is None:
            return _rejected(checked.reasons() or ["the static check refused the file"], name,
                             t0, [i.construct for i in checked.issues])
        source = checked.source
    try:
        resolved = source.resolve_params(params)
    except PolicyFileError as exc:
        return _rejected([str(exc)], name, t0, ["params"], params)

    # 2. the request; the worker rebuilds a scenario itself where it runs our Python and numpy
    wl = workload if isinstance(workload, Workload) else None
    if wl is None and backend.same_runtime and not workload.trace:
        send: dict[str, Any] = {"spec": asdict(workload)}  # we build ours while it starts
    else:
        wl = wl if wl is not None else workload.build()  # a bad spec raises: caller's error
        send = {"data": _workload_data(wl)}
    request = {
        "code": code, "name": name, "params": resolved, "cluster": asdict(cluster),
        "workload": send, "horizon": horizon, "limits": limits.as_dict(), "batch": batch,
        "unfenced": bool(skip_check),
    }
    payload = (json.dumps(request, allow_nan=False) + "\n").encode()

    # 3. the sandboxed run, replayed as it streams; retried while the sandbox fails on its own
    last = ""
    for attempt in range(INFRA_ATTEMPTS):
        try:
            return _run_and_replay(backend, payload, limits, wl, workload, cluster, slo,
                                   horizon, name, dict(resolved), t0,
                                   warm=warm and attempt == 0, observe=observe)
        except _BeforeThePolicy as exc:
            last = str(exc)
            if attempt + 1 < INFRA_ATTEMPTS:
                time.sleep(0.5 * (attempt + 1))
    raise SandboxBroken(
        f"the {backend.name} sandbox failed {INFRA_ATTEMPTS} times in a row before the policy "
        f"ran (last: {_clip(last)}); nothing was recorded for {name}, so running the same "
        "command again (or `autotuner resume`) evaluates it afresh")


class _BeforeThePolicy(Exception):
    """The worker failed before its hello, that is before any policy code existed in it: the
    sandbox's fault (a killed spare, a start-up failure, a loaded machine), never the policy's.
    Such a failure is retried and, if it persists, raised: it is never a verdict."""


def _clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_and_replay(backend: Backend, payload: bytes, limits: Limits, wl: Any, workload: Any,
                    cluster: Any, slo: Any, horizon: float | None, name: str,
                    params: dict[str, Any], t0: float, *, warm: bool,
                    observe: Any = None) -> Evaluation:
    """One sandboxed run with the trusted replay; raises _BeforeThePolicy for the sandbox's own
    failures."""
    from autotuner.simulation import metrics_of

    t_start = time.perf_counter()
    try:
        handle = backend.start(payload, limits, warm=warm)
        TIMINGS["start_s"] += time.perf_counter() - t_start
    except Exception as exc:  # noqa: BLE001 - the backend could not even start
        raise _BeforeThePolicy(f"the {backend.name} sandbox could not start the worker: "
                               f"{type(exc).__name__}: {exc}") from None
    replay = None

    def failed(reason: str, phase: str, decisions: int = 0) -> Evaluation:
        if replay is None or not replay.greeted:
            raise _BeforeThePolicy(reason)
        return Evaluation(FAILED, [_clip(reason)], None, decisions, time.perf_counter() - t0,
                          backend.name, name, params, [], phase)

    try:
        if wl is None:
            wl = workload.build()
        replay = _replay_class()(handle, workload_fingerprint(wl))
        result = _timed_replay(cluster, wl, observe(replay) if observe else replay, horizon)
        if replay.fault:
            return failed(replay.fault, "sandbox", replay.pos)
        if result.error:
            if not replay.ran_out:  # an illegal decision, judged by the trusted simulator
                return failed(f"illegal decision: {result.error}", "replay", replay.pos - 1)
            if replay.end is not None:
                if replay.end.get("error"):
                    return failed(f"policy error: {untrusted_text(replay.end['error'])}",
                                  "sandbox", replay.pos)
                return failed("the worker's decision log ended before the simulation did",
                              "replay", replay.pos)
            info = handle.finish()
            return failed(info.reason or "the worker stopped without sending its result",
                          "sandbox", replay.pos)
        replay.drain()
        if replay.end is None:
            info = handle.finish()
            return failed(info.reason or "the worker stopped without sending its result",
                          "sandbox", replay.pos)
        if replay.unused:
            return failed(f"the worker's decision log has {replay.unused} more entries than "
                          "the simulation asked for", "replay", replay.pos)
        if replay.end.get("error"):
            return failed(f"policy error: {untrusted_text(replay.end['error'])}", "sandbox",
                          replay.pos)
        info = handle.finish()
        if not info.ok:
            return failed(info.reason, "sandbox", replay.pos)
        metrics = metrics_of(cluster, wl, result, slo)
        return Evaluation(OK, [], metrics, replay.pos, time.perf_counter() - t0, backend.name,
                          name, params, [], "done", result)
    except WorkerFault as exc:
        return failed(str(exc), "sandbox")
    finally:
        handle.close()


def _timed_replay(cluster: Any, wl: Any, replay: Any, horizon: float | None) -> Any:
    from autotuner.sim.engine import simulate

    t0 = time.thread_time()  # this thread's CPU: not the waits for the worker, not others' load
    result = simulate(cluster, wl, replay, horizon=horizon)
    TIMINGS["replay_s"] += time.thread_time() - t0
    TIMINGS["runs"] += 1
    return result


def evaluate_file(path: str | Path, **kwargs: Any) -> Evaluation:
    """``evaluate`` on a file's text; an unreadable file is a rejection, not an exception."""
    path = Path(path)
    t0 = time.perf_counter()
    try:
        code = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return _rejected([f"{path}: the file is not UTF-8 text"], str(path), t0, ["file"])
    return evaluate(code, name=kwargs.pop("name", str(path)), **kwargs)
