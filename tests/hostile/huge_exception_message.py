# A gigantic exception message (the failure reason must stay short).
# expect: failed policy error
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    raise ValueError("y" * 100000)
