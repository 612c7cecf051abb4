# Routes to a replica index far past the end of the cluster.
# expect: failed does not exist
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    return 10**40
