# A function's __globals__ to reach and replace the decision functions' module state.
# expect: rejected dunder
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    g = route.__globals__
    g["TUNABLES"] = {"x": 1}
    return 0
