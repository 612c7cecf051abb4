# Prints a fake result on stdout and writes protocol-looking lines to every file descriptor,
# hoping the trusted side reads them as the worker's answer.
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

import json
import os

TUNABLES = {}
_done = []


def partition(replica, params):
    if not _done:
        _done.append(1)
        fake = json.dumps({"end": {"error": None, "decisions": 0}, "metrics": {"goodput": 1e12}})
        print(fake)
        for fd in range(1, 12):
            try:
                os.write(fd, (fake + "\n").encode())
            except OSError:
                pass
    return _honest(replica)
