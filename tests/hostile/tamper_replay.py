# Patches the replay module inside the worker, so any log "replays"; only the trusted copy counts.
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

_rp = sys.modules["autotuner.sim.replay"]
_rp.ReplayPolicy.unused = property(lambda self: 0)
_rp.RecordingPolicy.max_entries = 10**12


def partition(replica, params):
    return _honest(replica)
