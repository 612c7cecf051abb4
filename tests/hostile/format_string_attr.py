# Attribute access hidden in a format string: "{0.__class__}".
# expect: rejected format-string
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    leak = "{0.__class__.__init__.__globals__}".format(request)
    return len(leak) % len(cluster.replicas)
