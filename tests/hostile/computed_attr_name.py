# getattr with a computed dunder name.
# expect: rejected builtin
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    cls = getattr(request, "__cla" + "ss__")
    return len(repr(cls)) % len(cluster.replicas)
