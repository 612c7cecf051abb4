# Reads the simulator's future arrivals through sys._getframe.
# expect: rejected import
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import sys

TUNABLES = {}


def route(request, cluster, params):
    sim = sys._getframe(2).f_locals["self"]
    upcoming = sim.arrival[request.id + 1: request.id + 50]
    return len(upcoming) % len(cluster.replicas)
