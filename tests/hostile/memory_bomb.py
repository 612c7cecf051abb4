# Grows memory without bound, in steps small enough to pass the static check.
# expect: failed memory
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    hoard = []
    while True:
        hoard.append([request.id] * 100000)
