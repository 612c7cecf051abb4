# Raises a BaseException subclass the simulator does not catch.
# expect: rejected builtin
# sandbox: failed KeyboardInterrupt
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def partition(replica, params):
    raise KeyboardInterrupt("stop the scorer")
