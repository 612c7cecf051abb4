# Dumps the environment into its error message (API keys live there).
# expect: rejected import
# sandbox: failed env:
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import os

TUNABLES = {}


def route(request, cluster, params):
    raise RuntimeError("env: " + repr(dict(os.environ)))
