# Schedules more chunk tokens than its own budget allows.
# expect: failed exceed the budget
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    chunks = tuple((r.id, min(r.remaining, 64)) for r in replica.waiting[:4])
    return (replica.decodes + 1, chunks) if chunks else (512, ())
