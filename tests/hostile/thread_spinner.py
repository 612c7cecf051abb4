# Starts background threads that keep running (and printing) after the decisions return.
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

import threading

TUNABLES = {}
_started = []


def _spin():
    while True:
        pass


def partition(replica, params):
    if not _started:
        for _ in range(4):
            try:
                threading.Thread(target=_spin, daemon=True).start()
            except RuntimeError:
                break
        _started.append(1)
    return _honest(replica)
