"""The sandbox worker: runs one untrusted policy against its own simulator, in-process.

Started by an isolation backend as ``python -S -s -P -B worker.py LIBDIR...`` in an environment
of the backend's choosing only (no site-packages, no cwd on the path, PYTHONHASHSEED=0 so that
str hashes do not change between runs): the LIBDIRs hold ``autotuner`` and ``numpy`` and nothing
else. It reads ONE JSON request, one line on stdin, then:

0. watches stdin: the trusted side keeps it open until it is done with the worker, so its end
   of file means the parent is gone (even by ``kill -9``) and the worker exits at once;
1. tightens its own limits (RLIMIT_NPROC here, inside the backend's user namespace, where it
   counts only the worker's own tasks) before any policy code exists;
2. moves the result channel off fd 1, so anything the policy prints lands on stderr (noise);
3. builds the workload itself (from a scenario spec) or takes it as data, and the cluster;
4. loads the policy and simulates with every decision recorded (``DecisionLog``), streaming
   the log as JSON lines ``{"f": [...]}`` (``autotuner.sim.replay``'s flat wire form) while it
   runs, so the trusted side can replay them on another core at the same time; then one
   ``{"end": {...}}`` line and ``os._exit``.

A session request (``"session": true``, no workload) keeps the worker for many runs of the same
policy file: each further stdin line ``{"workload": ..., "horizon": ..., "params": ...}`` is one
run (with the request's params when the line names none), answered by its own hello, decision log
and end line, with a fresh policy module each time. It
saves the interpreter start and imports per run (most of a small run's cost); the trusted side
still replays and scores every run's decisions on its own.

The trusted side believes none of it but the decisions, which it replays and validates in its own
simulator. Everything else here (the error text, the workload fingerprint) only helps explain a
failure. Request keys: ``code``, ``name``, ``params``, ``cluster`` (ClusterSpec fields),
``workload`` (``{"spec": {...}}`` or ``{"data": {...}}``), ``horizon``, ``limits``, ``batch``;
or ``{"selftest": true}``.
"""

import json
import os
import sys

MAX_REQUEST = 256 << 20
MAX_ERROR_CHARS = 2000  # the trusted side shows 400; never send it a huge message
FLUSH_ITEMS = 400_000  # integers per log line: keeps lines far below the cap
MAX_DECISIONS = 5_000_000  # in one run: past it the run is refused


def _emit(fd, obj):
    data = (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _limit_self(limits):
    import resource

    nproc = int(limits.get("processes", 16))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    except (ValueError, OSError):
        pass


def _die_with_parent(fd):
    """Exit when ``fd`` (stdin's pipe from the parent) reaches end of file or fails.

    A thread, blocked in read() without the GIL: it costs nothing while the parent lives. It
    covers what a parent-death signal cannot: a variant that changes uid (which clears it) and
    a parent that died before the signal was armed.
    """
    import threading

    def watch():
        try:
            while os.read(fd, 4096):
                pass
        except BaseException:  # noqa: BLE001 - a closed or replaced fd means the same
            pass
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _describe(exc):
    try:
        text = str(exc)[:2000]
        kind = type(exc).__name__
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return "an exception that cannot be described"
    return f"{kind}: {text}" if text else kind


def _workload(spec_or_data):
    import numpy as np

    from autotuner.sim.workload import Workload

    if "data" in spec_or_data:
        d = spec_or_data["data"]
        prefix = d.get("prefix")
        return Workload(
            d["name"], np.asarray(d["arrival"], dtype=np.float64),
            np.asarray(d["prompt"], dtype=np.int64), np.asarray(d["output"], dtype=np.int64),
            None if prefix is None else tuple(tuple(p) for p in prefix),
            int(d.get("prefix_block_tokens", 512)),
        )
    from autotuner.simulation import WorkloadSpec

    return WorkloadSpec(**spec_or_data["spec"]).build()


def fingerprint(wl):
    """A digest of the workload's content, so a mismatch is named rather than mis-replayed."""
    import hashlib

    h = hashlib.sha256()
    for arr in (wl.arrival, wl.prompt, wl.output):
        h.update(arr.tobytes())
    h.update(repr(wl.prefix).encode())
    h.update(str(wl.prefix_block_tokens).encode())
    return h.hexdigest()[:32]


class _Lines:
    """Line reader on a raw fd: no read-ahead buffer hides a session's next request from us."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""

    def readline(self, limit):
        while b"\n" not in self.buf:
            if len(self.buf) > limit:
                return b""
            # 64 KiB first, then as much as is held: a 1 MiB read costs ~35 us (the buffer is
            # mapped and unmapped), on the live router's every decision.
            chunk = os.read(self.fd, max(1 << 16, len(self.buf)))
            if not chunk:
                return b""
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"


def _session_reader(lines, fd):
    """A session's requests, one line each, read by a thread that also watches for the parent's
    death: end of file (or a broken pipe) exits at once, as ``_die_with_parent`` does."""
    import queue
    import threading

    requests = queue.Queue()

    def read():
        try:
            while True:
                line = lines.readline(MAX_REQUEST)
                if not line:
                    break
                requests.put(line)
        except BaseException:  # noqa: BLE001 - a closed or replaced fd means the same
            pass
        os._exit(70)

    threading.Thread(target=read, name="session-reader", daemon=True).start()
    return requests


def _log_class(out, batch):
    """The decision log a run's simulator writes (``autotuner.sim.engine.DecisionLog``), sent
    as a line of about ``batch`` decisions whenever it holds that many."""
    from autotuner.sim.api import PolicyError

    class StreamingLog:
        def __init__(self):
            self.ints = []
            self.flush_at = min(4 * batch, FLUSH_ITEMS)  # a partition is about four ints

        def flush(self, decisions):
            if decisions > MAX_DECISIONS:
                raise PolicyError("run", f"more than {MAX_DECISIONS} decisions")
            _emit(out, {"f": self.ints})
            self.ints = []

    return StreamingLog


_CPU_REPORTED = [0.0]


def _cpu_since_last():
    """This process's CPU seconds since its previous end line (or its start): benchmarks only."""
    times = os.times()
    now = times.user + times.system
    spent, _CPU_REPORTED[0] = now - _CPU_REPORTED[0], now
    return spent


def _run_one(out, log_class, request, cluster, wl, horizon):
    """One simulation of the request's policy on ``wl``: hello, the decision log, then the end
    message (also the only place timing is reported; the trusted side uses it for benchmarks
    only). Returns False when the log could not be sent (the result is then missing)."""
    import time

    from autotuner.policy import load_policy, read_policy_source
    from autotuner.sim.engine import simulate

    _emit(out, {"hello": {"workload": fingerprint(wl), "requests": len(wl)}})
    end = {"error": None, "phase": "load", "decisions": 0}
    log = None
    t0 = time.process_time()
    try:
        # A fresh module per run: a session's runs share no policy state, as separate workers.
        source = read_policy_source(request["code"], request.get("name") or "<policy>")
        policy = load_policy(source, request.get("params") or {})
        log = log_class()
        end["phase"] = "simulate"
        result = simulate(cluster, wl, policy, horizon=horizon, log=log)
        end["decisions"] = result.policy_calls
        if result.error:
            end["error"] = result.error[:MAX_ERROR_CHARS]
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends are results too
        where = "while loading" if end["phase"] == "load" else "during the simulation"
        end["error"] = f"the policy raised {_describe(exc)} {where}"[:MAX_ERROR_CHARS]
    try:
        if log is not None and log.ints:
            _emit(out, {"f": log.ints})
        end["sim_s"] = time.process_time() - t0  # CPU: wall would count a loaded machine
        end["cpu_s"] = _cpu_since_last()
        _emit(out, {"end": end})
    except BaseException:  # noqa: BLE001 - a log we cannot send is a missing result
        return False
    return True


def _serve_routes(out, lines, request):
    """The live router's long-lived mode (autotuner/router/policy_worker.py): load the policy
    once, answer ``{"ready": ...}``, then one route() per stdin line until end of file.

    A query is ``[n, [RequestView fields], now, [[ReplicaLoad fields], ...]]``; the answer
    ``{"i": n, "k": raw}`` or ``{"i": n, "e": reason}``. The trusted side checks every answer
    (coerce_route) and falls back when it is late, wrong or missing, so nothing here is
    believed. End of file (the router closed the pipe or died) ends the worker.
    """
    from autotuner.policy import load_policy, read_policy_source
    from autotuner.sim.api import ClusterView, ReplicaLoad, RequestView

    try:
        source = read_policy_source(request["code"], request.get("name") or "<policy>")
        route = load_policy(source, request.get("params") or {}).route
    except BaseException as exc:  # noqa: BLE001 - a policy that fails to load is a result
        _emit(out, {"end": {"error": f"the policy raised {_describe(exc)} while loading"}})
        os._exit(0)
    _emit(out, {"ready": True})
    while True:
        line = lines.readline(1 << 20)
        if not line.endswith(b"\n"):
            os._exit(0)
        query_id, fields, now, loads = json.loads(line)
        cluster = ClusterView(now, tuple(ReplicaLoad(*load) for load in loads))
        try:
            raw = route(RequestView(*fields), cluster)
            answer = {"i": query_id, "k": raw if isinstance(raw, (int, float)) else repr(raw)}
        except BaseException as exc:  # noqa: BLE001 - a raising policy is an answer too
            answer = {"i": query_id, "e": _describe(exc)[:MAX_ERROR_CHARS]}
        try:
            _emit(out, answer)
        except ValueError:  # NaN or an int too large for JSON: refused on the trusted side
            _emit(out, {"i": query_id, "e": "route() returned a non-finite number"})


def main():
    out = os.dup(1)  # the result channel; fd 1 and sys.stdout become stderr from here on
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Import everything before the request arrives: a warm spare worker waits right here.
    import numpy

    from autotuner.policy import load_policy, read_policy_source  # noqa: F401
    from autotuner.sim.api import PolicyError  # noqa: F401
    from autotuner.sim.engine import ClusterSpec, simulate  # noqa: F401
    from autotuner.simulation import WorkloadSpec  # noqa: F401 - warm the workload code too

    lines = _Lines(0)
    raw = lines.readline(MAX_REQUEST)
    if not raw.endswith(b"\n"):
        raise SystemExit("no complete request on stdin")  # the parent went away, or too big
    watched = os.dup(0)  # the policy gets /dev/null as stdin; the watch keeps the pipe
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    lines.fd = watched
    request = json.loads(raw)
    if request.get("serve_routes"):
        _limit_self(request.get("limits") or {})
        _serve_routes(out, lines, request)  # never returns
    session = None
    if request.get("session"):
        session = _session_reader(lines, watched)
    else:
        _die_with_parent(watched)

    if request.get("selftest"):
        _emit(out, {"selftest": "ok", "python": sys.version.split()[0],
                    "numpy": numpy.__version__})
        sys.stderr.flush()
        os._exit(0)

    _limit_self(request.get("limits") or {})
    if request.get("unfenced"):
        # Tests of the sandbox itself: drop the loader's restricted built-ins and imports too,
        # so that the isolation is the only defence left.
        import builtins

        import autotuner.policy as loader

        loader._policy_builtins = lambda: dict(vars(builtins))
    log_class = _log_class(out, max(1, int(request.get("batch", 2048))))
    cluster = ClusterSpec(**request["cluster"])
    if session is None:
        ok = _run_one(out, log_class, request, cluster, _workload(request["workload"]),
                      request.get("horizon"))
        os._exit(0 if ok else 3)
    # A session: one run per further line ({"workload": ..., "horizon": ..., "params": ...}),
    # same policy file, until the parent closes stdin (the reader thread then exits the process).
    while True:
        run = json.loads(session.get())
        this = request if run.get("params") is None else {**request, "params": run["params"]}
        if not _run_one(out, log_class, this, cluster, _workload(run["workload"]),
                        run.get("horizon")):
            os._exit(3)


if __name__ == "__main__":
    sys.path[0:0] = [lib for lib in sys.argv[1:] if lib not in sys.path]
    try:
        main()
    except BaseException as exc:  # noqa: BLE001 - anything here is the worker's own failure
        try:
            sys.stderr.write(f"worker: {_describe(exc)}\n")
            sys.stderr.flush()
        finally:
            os._exit(2)
