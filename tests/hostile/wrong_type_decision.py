# Returns a string where a partition is expected.
# expect: failed must return Partition
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    return "all of them"
