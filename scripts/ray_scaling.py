"""Evaluations per second on a Ray cluster of 1 and of 2 worker CPUs, against the local process
pool at parallelism 1 and 2, on the same batch of jobs in the same process.

The batch is what tuning asks of the default campaign: the baseline (``fixed_chunk``) at a few
chunk sizes on every training instance at the ladder's rates, each job in the real sandbox with
nothing cached (the ``NoCache`` archive). For each Ray size this script starts its own one-node
cluster (``ray start --head --num-cpus N`` in a temp dir) and stops it after; ``--address``
measures an existing cluster instead. Prints one line per setup, the ratio to the local pool at
parallelism 1, and the load average around each pass (this machine is shared).

    python scripts/ray_scaling.py                  # local 1, 2; Ray 1, 2 CPUs
    python scripts/ray_scaling.py --address HOST:6379
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autotuner.config import load_config  # noqa: E402
from autotuner.resources import baseline_path  # noqa: E402
from autotuner.scoring import Evaluator, Job, NoCache, build_workload, split_instances  # noqa: E402
from autotuner.scoring.ray_executor import RayTasks, connect_ray  # noqa: E402


def batch(chunks: list[int]) -> list[Job]:
    cfg = load_config()
    code = baseline_path("fixed_chunk").read_text()
    return [Job(code, {"chunk_size": chunk}, inst, rate=build_workload(inst).rate * mult,
                cluster=cfg.cluster, slo=cfg.slo, sandbox=cfg.sandbox)
            for chunk in chunks for inst in split_instances(cfg)["train"]
            for mult in cfg.objective.ladder]


def timed(evaluator: Evaluator, jobs: list[Job]) -> float:
    evaluator.evaluate(jobs[:2])  # warm: workers started, first imports done
    t0 = time.perf_counter()
    evaluator.evaluate(jobs[2:])
    return (len(jobs) - 2) / (time.perf_counter() - t0)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def start_cluster(cpus: int, temp: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
         f"--port={port}", f"--num-cpus={cpus}", f"--temp-dir={temp}",
         "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=100000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    raise SystemExit("ray start did not come up")


def ray_pass(address: str, jobs: list[Job]) -> tuple[float, str]:
    import ray

    os.environ["RAY_ADDRESS"] = address
    cluster, _ = connect_ray("auto")
    try:
        return timed(Evaluator(NoCache(), executor=RayTasks(sessions=True)), jobs), cluster
    finally:
        ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", help="an existing Ray cluster (else one started per size)")
    ap.add_argument("--chunks", default="256,512,1024", help="baseline chunk sizes in the batch")
    args = ap.parse_args()
    jobs = batch([int(c) for c in args.chunks.split(",")])
    print(f"batch: {len(jobs)} sandboxed runs of fixed_chunk (training instances x ladder rates "
          f"x chunk sizes {args.chunks}); {os.cpu_count()} cores here")
    rows: list[tuple[str, float, str]] = []
    for parallelism in (1, 2):
        before = load()
        ev = Evaluator(NoCache(), parallelism=parallelism)
        try:
            rate = timed(ev, jobs)
        finally:
            ev.close()
        rows.append((f"local pool, parallelism {parallelism}", rate, f"{before} -> {load()}"))
    sizes = [None] if args.address else [1, 2]
    for cpus in sizes:
        before = load()
        if args.address:
            rate, cluster = ray_pass(args.address, jobs)
        else:
            temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
            proc, address = start_cluster(int(cpus or 1), temp)
            try:
                rate, cluster = ray_pass(address, jobs)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)  # the cluster's own process group
                proc.wait()
                shutil.rmtree(temp, ignore_errors=True)
        rows.append((cluster, rate, f"{before} -> {load()}"))
    reference = rows[0][1]
    for name, rate, load_line in rows:
        print(f"{name:<70} {rate:6.2f} evaluations/s  {rate / reference:4.2f}x  "
              f"(load average {load_line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
