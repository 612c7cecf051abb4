# Replaces the worker's metrics and result functions with flattering fakes, then decides honestly:
# the trusted side computes metrics itself, so the score is the honest one.
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

for _name, _mod in list(sys.modules.items()):
    if _name.startswith("autotuner"):
        for _attr in ("summarize", "metrics_of", "slo_met", "capacity"):
            if hasattr(_mod, _attr):
                setattr(_mod, _attr, lambda *a, **k: {"goodput_tok_s": 1e12, "slo_attainment": 1.0})


def partition(replica, params):
    return _honest(replica)
