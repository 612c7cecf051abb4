# Exits the worker from inside a decision with status 0.
# expect: rejected builtin
# sandbox: failed SystemExit
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    raise SystemExit(0)
