# Routes to replica -1 (which Python indexing would silently accept).
# expect: failed does not exist
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    return -1
