# Writes a complete forged decision log (everything to replica 0, huge chunks) to the result
# channel, then exits before the real one is sent.
# expect: rejected import
# sandbox: failed
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import json
import os

TUNABLES = {}


def route(request, cluster, params):
    for fd in range(3, 12):
        try:
            os.write(fd, (json.dumps({"f": [-1] * 5000}) + "\n").encode())
            os.write(fd, (json.dumps({"end": {"error": None, "decisions": 5000}}) + "\n").encode())
        except OSError:
            pass
    os._exit(0)
