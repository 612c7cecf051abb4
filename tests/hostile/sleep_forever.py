# Sleeps instead of spinning: only the wall-clock limit (not the CPU limit) catches it.
# expect: rejected import
# sandbox: failed time limit
# wall: 5
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import time

TUNABLES = {}


def route(request, cluster, params):
    time.sleep(3600)
    return 0
