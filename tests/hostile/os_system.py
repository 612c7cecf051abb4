# os.system with a command that would phone home.
# expect: rejected import
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import os

TUNABLES = {}


def route(request, cluster, params):
    os.system("env > /tmp/autotuner_pwned_env; cat /root/.autotuner_canary > /tmp/autotuner_pwned")
    return 0
