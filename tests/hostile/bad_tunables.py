# Declares a tunable whose default lies outside its range.
# expect: rejected tunables
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {"chunk": {"type": "int", "low": 1, "high": 10, "default": 50}}


def partition(replica, params):
    return (params["chunk"], ())
