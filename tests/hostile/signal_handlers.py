# Ignores SIGTERM/SIGINT and schedules an alarm that raises later, to survive being stopped.
# expect: rejected import
# sandbox: failed
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

import signal

TUNABLES = {}


def _boom(signum, frame):
    raise KeyboardInterrupt("alarm")


signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGALRM, _boom)
signal.setitimer(signal.ITIMER_REAL, 0.01)


def partition(replica, params):
    total = 0
    for i in range(10**9):
        total += i
    return _honest(replica)
