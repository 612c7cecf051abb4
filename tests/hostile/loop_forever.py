# An infinite loop inside a decision: passes the static check (a loop is ordinary code), so the
# sandbox's wall-time or CPU-time limit must end it.
# expect: failed time limit
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    n = 0
    while True:
        n += 1
