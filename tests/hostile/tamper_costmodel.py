# Makes every iteration in the worker's own simulator free, so that its timeline looks great.
# The trusted replay runs the real cost model: the log no longer fits (failed) or scores as what
# it is.
# expect: rejected import
# sandbox: honest
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

def _honest(replica):
    room = min(512, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in replica.waiting:
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (512, tuple(chunks))

import sys

TUNABLES = {}

_cm = sys.modules["autotuner.sim.costmodel"]
_cm.CostModel.iteration_time = lambda self, *a, **k: 1e-9


def partition(replica, params):
    return _honest(replica)
