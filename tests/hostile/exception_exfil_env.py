# Puts whatever it can learn into an exception message, which flows back as the failure reason.
# expect: rejected import
# sandbox: failed policy error
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import os
import sys

TUNABLES = {}


def route(request, cluster, params):
    raise RuntimeError(f"argv={sys.argv} cwd={os.getcwd()} uid={os.getuid()} env={dict(os.environ)}")
