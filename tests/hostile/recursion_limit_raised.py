# Raises the recursion limit first, to overflow the C stack and crash the interpreter.
# expect: rejected import
# sandbox: failed
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import sys

TUNABLES = {}


def _down(n):
    return _down(n + 1) + 1


def route(request, cluster, params):
    sys.setrecursionlimit(10**6)
    return _down(0)
