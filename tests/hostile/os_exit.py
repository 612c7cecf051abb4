# Hard exit with status 0, skipping every handler, so no result is ever sent.
# expect: rejected import
# sandbox: failed without sending its result
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import os

TUNABLES = {}


def route(request, cluster, params):
    os._exit(0)
