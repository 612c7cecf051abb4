# Forks children that leave the process group (setsid) and sleep, hoping to outlive the worker.
# expect: rejected import
# sandbox: contained
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import os
import time

TUNABLES = {}


def route(request, cluster, params):
    for _ in range(8):
        try:
            if os.fork() == 0:
                os.setsid()
                time.sleep(600)
                os._exit(0)
        except OSError:
            break
    return request.id % len(cluster.replicas)
