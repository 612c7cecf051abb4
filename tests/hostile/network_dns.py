# Looks up a host name (DNS exfiltration is a classic).
# expect: rejected import
# sandbox: failed no dns
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import socket

TUNABLES = {}


def route(request, cluster, params):
    try:
        socket.getaddrinfo("example.com", 80)
    except OSError:
        raise RuntimeError("no dns") from None
    raise RuntimeError("DNS RESOLVED")
