# A fork bomb: every child forks again. The process limit must stop it, and nothing may survive.
# expect: rejected import
# sandbox: failed
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import os

TUNABLES = {}


def route(request, cluster, params):
    while True:
        os.fork()
