# An exception whose message is 300 MB: reported as what it is, without the trusted side (or
# the worker's result channel) carrying it.
# expect: failed raised ValueError
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    size = 300_000_000 + request.id * 0
    raise ValueError("y" * size)
