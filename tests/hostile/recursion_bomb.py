# Unbounded recursion: Python's recursion limit turns it into a RecursionError.
# expect: failed RecursionError
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def _down(n):
    return _down(n + 1) + 1


def route(request, cluster, params):
    return _down(0)
