# A NaN budget.
# expect: failed whole number
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    return (float("nan"), ())
