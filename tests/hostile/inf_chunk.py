# An infinite chunk size for the first waiting request.
# expect: failed whole number
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    chunks = tuple((r.id, float("inf")) for r in replica.waiting[:1])
    return (512, chunks)
