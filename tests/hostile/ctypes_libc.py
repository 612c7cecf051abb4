# Calls libc's system() through ctypes.
# expect: rejected import
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import ctypes

TUNABLES = {}


def route(request, cluster, params):
    libc = ctypes.CDLL(None)
    libc.system(b"cat /tmp/autotuner_canary /root/.autotuner_canary > /tmp/autotuner_pwned")
    return 0
