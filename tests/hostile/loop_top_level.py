# An infinite loop at import time.
# expect: rejected top-level
# sandbox: failed time limit
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}

while True:
    pass


def route(request, cluster, params):
    return 0
