# Finds the Workload through gc and routes by the (secret) output length: a cheat that only the
# static check can stop, since its decisions are legal.
# expect: rejected import
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import gc

TUNABLES = {}


def route(request, cluster, params):
    for obj in gc.get_objects():
        if type(obj).__name__ == "Workload":
            return int(obj.output[request.id]) % len(cluster.replicas)
    return 0
