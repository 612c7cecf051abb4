"""Docker, through the docker SDK, with an image built locally by ``sandbox/build_image.sh``.

Each evaluation is one fresh container: no network (``network_mode=none``), read-only root, tmpfs
``/scratch`` and ``/tmp``, cgroup limits on memory (swap included), pids and CPU, rlimits on CPU
seconds, file size and open files, every capability dropped, ``no-new-privileges``, uid/gid
65534, no log driver (output goes only through the attach stream, which is read with a byte
cap), and gVisor's ``runsc`` runtime when the engine has it registered and it passes the
self-test. The autotuner package, the baselines and ``worker.py`` are bind-mounted read-only from
this installation, so the image (Debian's python3 and numpy only) never goes stale. The container
is removed, whatever happened, before ``close()`` returns; containers carry the label
``org.autotuner.sandbox=1`` so that anything left by a killed parent can be found.

The image's Python and numpy are Debian's, not this process's, so the trusted side sends the
workload as data rather than letting the worker regenerate it.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from typing import Any

from .base import Backend
from .handle import ExitInfo, WorkerHandle, describe_exit
from .host import owner_alive, owner_tag, sweep_orphans
from .limits import PYTHON_FLAGS, WORKER_ENV, HostLayout, Limits

IMAGE = os.environ.get("AUTOTUNER_SANDBOX_IMAGE", "autotuner-sandbox:latest")
LABEL = "org.autotuner.sandbox"
# The engine may serve other machines or containers: the owner label says whose container it is
# (owner_tag: pid, start time, pid namespace), and only this host's may be judged from here.
OWNER = f"{owner_tag()}@{socket.gethostname()}"
_DIST = "/usr/lib/python3/dist-packages"  # Debian's numpy in the image


def _client(timeout: int = 30) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


class DockerWorker(WorkerHandle):
    def __init__(self, client: Any, container_id: str, sock: Any, limits: Limits):
        super().__init__(limits)
        self.client = client
        self.cid = container_id
        self._resp = sock  # keep the HTTP response alive while its socket is in use
        self.sock = sock._sock if hasattr(sock, "_sock") else sock
        self._frame = bytearray()
        self._todo: memoryview | None = None  # request bytes not yet written
        self.sock.setblocking(False)
        self._eof = False
        self._oom = False

    def _send(self, request: bytes) -> None:
        self._todo = memoryview(request)
        self._send_some()

    def alive(self) -> bool:
        try:
            return bool(self.client.api.inspect_container(self.cid)["State"]["Running"])
        except Exception:  # noqa: BLE001
            return False

    def _send_some(self) -> None:
        """Write what the socket takes now. No half-close: the worker reads one line, and takes
        the end of its stdin as this process's death (the container has ``stdin_once``, so the
        engine closes it when this attach connection goes, kill -9 included)."""
        while self._todo is not None and len(self._todo):
            try:
                n = self.sock.send(self._todo[: 1 << 16])
            except BlockingIOError:
                return
            except OSError:
                break
            self._todo = self._todo[n:]
        self._todo = None

    def _poll(self, timeout: float) -> list[tuple[str, bytes]]:
        if self._eof:
            return [("out", b""), ("err", b"")]
        want_write = self._todo is not None
        if want_write:
            self._send_some()
            want_write = self._todo is not None
        r, _, _ = select.select([self.sock], [self.sock] if want_write else [], [], timeout)
        chunks: list[tuple[str, bytes]] = []
        if not r:
            return chunks
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return chunks
        except OSError:
            data = b""
        if not data:
            self._eof = True
            return [("out", b""), ("err", b"")]
        self._frame += data
        if len(self._frame) > self.limits.output_bytes + self.limits.stderr_bytes + 1024:
            raise self._fault(f"output limit: the worker wrote more than "
                              f"{self.limits.output_bytes >> 20} MiB")
        # Multiplexed attach stream: 8-byte header (stream, 0, 0, 0, big-endian length), payload.
        while len(self._frame) >= 8:
            kind, size = self._frame[0], struct.unpack(">I", self._frame[4:8])[0]
            if len(self._frame) < 8 + size:
                break
            payload = bytes(self._frame[8: 8 + size])
            del self._frame[: 8 + size]
            chunks.append(("out" if kind == 1 else "err", payload))
        return chunks

    def _kill(self) -> None:
        try:
            self.client.api.kill(self.cid)
        except Exception:  # noqa: BLE001 - it may have exited already
            pass

    def _exit_info(self, timeout: float) -> ExitInfo:
        try:
            status = self.client.api.wait(self.cid, timeout=max(1, int(timeout)))["StatusCode"]
        except Exception:  # noqa: BLE001 - a wait that times out
            return ExitInfo(None, "", False)
        try:
            self._oom = bool(self.client.api.inspect_container(self.cid)["State"]["OOMKilled"])
        except Exception:  # noqa: BLE001
            self._oom = False
        if status == 0 and not self._oom:
            return ExitInfo(0, "", True)
        return ExitInfo(status, describe_exit(status, signal_offset=True, limits=self.limits,
                                              oom_killed=self._oom), False)

    def _cleanup(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self._resp.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.client.api.remove_container(self.cid, force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


class DockerBackend(Backend):
    def __init__(self) -> None:
        super().__init__(
            name="docker",
            strength="docker: no network, read-only root, cgroup limits, no capabilities, "
                     "non-root",
            weaker=False,
            same_runtime=False,
        )
        self._layout: HostLayout | None = None
        self.runtime: str | None = None
        self._client: Any = None

    def probe(self) -> tuple[bool, str]:
        try:
            import docker  # noqa: F401
        except ImportError:
            return False, "the docker SDK is not installed (pip install docker)"
        try:
            client = _client(10)
            info = client.info()
        except Exception as exc:  # noqa: BLE001 - no engine, no socket, no permission
            return False, f"no docker engine answers ({type(exc).__name__})"
        try:
            client.images.get(IMAGE)
        except Exception:  # noqa: BLE001
            return False, f"image {IMAGE} is not built here (run sandbox/build_image.sh)"
        self._client = client
        runtimes = list((info.get("Runtimes") or {}).keys())
        tried = []
        for runtime in (["runsc"] if "runsc" in runtimes else []) + [None]:
            self.runtime = runtime
            self.detail = f"runtime {runtime or info.get('DefaultRuntime') or 'runc'}"
            try:
                ok, why = self._selftest()
            except Exception as exc:  # noqa: BLE001 - e.g. a runtime that cannot start here
                ok, why = False, f"{type(exc).__name__}: {str(exc)[:300]}"
            if ok:
                if tried:
                    self.detail += f"; runsc failed its self-test: {tried[0][:120]}"
                return True, ""
            tried.append(why)
        return False, "; ".join(tried)

    def sweep_orphans(self) -> list[str]:
        """Also remove containers whose owner on this host is dead (a kill -9 skips close())."""
        removed = sweep_orphans()
        host = "@" + socket.gethostname()
        try:
            client = self._client or _client(10)
            found = client.api.containers(all=True, filters={"label": f"{LABEL}.owner"})
        except Exception:  # noqa: BLE001 - no engine: nothing of ours can be there
            return removed
        for container in found:
            owner = (container.get("Labels") or {}).get(f"{LABEL}.owner", "")
            tag, _, where = owner.rpartition("@")
            if "@" + where != host or owner_alive(tag) is not False:
                continue
            try:
                client.api.remove_container(container["Id"], force=True)
                removed.append(f"container {container['Id'][:12]}")
            except Exception:  # noqa: BLE001 - someone else removed it first
                pass
        return removed

    def spawn(self, limits: Limits) -> WorkerHandle:
        from docker.types import LogConfig, Mount, Ulimit

        if self._layout is None:
            self._layout = HostLayout.of_this_process()
        client = self._client or _client()
        self._client = client
        mounts = [Mount(f"/sandbox/lib/{name}", host, type="bind", read_only=True)
                  for host, name in self._layout.lib_binds if not name.startswith("numpy")]
        mounts.append(Mount("/sandbox/worker.py", self._layout.worker, type="bind",
                            read_only=True))
        cpu = max(1, int(limits.cpu_s))
        host_config = client.api.create_host_config(
            network_mode="none", read_only=True,
            tmpfs={"/scratch": f"size={limits.scratch_bytes},mode=1777",
                   "/tmp": "size=1048576,mode=1777"},
            mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes,
            pids_limit=limits.processes, nano_cpus=1_000_000_000,
            cap_drop=["ALL"], security_opt=["no-new-privileges"], ipc_mode="none",
            # docker's init as pid 1, so the worker is not pid 1: a pid 1 ignores signals it has
            # no handler for, SIGXCPU included, and the CPU limit then ends as a bare SIGKILL.
            init=True,
            ulimits=[Ulimit(name="cpu", soft=cpu, hard=cpu + 1),
                     Ulimit(name="fsize", soft=limits.file_bytes, hard=limits.file_bytes),
                     Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                     Ulimit(name="core", soft=0, hard=0)],
            log_config=LogConfig(type="none"), mounts=mounts, runtime=self.runtime,
        )
        container = client.api.create_container(
            IMAGE,
            command=["python3", *PYTHON_FLAGS, "/sandbox/worker.py", "/sandbox/lib", _DIST],
            user="65534:65534", environment=dict(WORKER_ENV), working_dir="/scratch",
            # stdin_open without detach also sets StdinOnce (see _send_some)
            hostname="sandbox", stdin_open=True, detach=False, tty=False,
            network_disabled=True,
            labels={LABEL: "1", f"{LABEL}.parent": str(os.getpid()), f"{LABEL}.owner": OWNER},
            host_config=host_config,
        )
        cid = container["Id"]
        try:
            sock = client.api.attach_socket(
                cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            client.api.start(cid)
        except BaseException:
            try:
                client.api.remove_container(cid, force=True)
            except Exception:  # noqa: BLE001
                pass
            raise
        return DockerWorker(client, cid, sock, limits)


def leftover_containers(parent: int | None = None) -> list[str]:
    """Ids of sandbox containers that still exist, all or those of one parent process."""
    label = LABEL if parent is None else f"{LABEL}.parent={parent}"
    try:
        client = _client(10)
        return [c["Id"] for c in client.api.containers(all=True, filters={"label": label})]
    except Exception:  # noqa: BLE001
        return []
