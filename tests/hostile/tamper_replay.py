# Patches the simulator inside the worker so that it checks no decision; only the trusted
# copy's checks count.
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

_engine = sys.modules["autotuner.sim.engine"]


def _unchecked(self, rep, chunks):
    total, pairs = 0, 0.0
    for rid, tokens in chunks:
        total += tokens
        pairs += tokens * (self.prefilled[rid] + (tokens + 1) * 0.5)
    return total, pairs


_engine._Simulation._validate_chunks = _unchecked


def partition(replica, params):
    return _honest(replica)
