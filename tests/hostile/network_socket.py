# Opens a TCP connection to the outside (and to the host's loopback).
# expect: rejected import
# sandbox: failed no network
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import socket

TUNABLES = {}


def route(request, cluster, params):
    for host, port in (("1.1.1.1", 53), ("8.8.8.8", 443), ("127.0.0.1", 22), ("172.17.0.1", 2375)):
        try:
            s = socket.create_connection((host, port), timeout=2)
        except OSError:
            continue
        s.close()
        raise RuntimeError(f"NETWORK REACHABLE: {host}:{port}")
    raise RuntimeError("no network")
