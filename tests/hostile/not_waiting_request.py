# Prefills a request that is not waiting here (a future arrival's id).
# expect: failed is not waiting
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    return (512, ((10**6, 1),))
