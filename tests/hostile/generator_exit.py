# Another BaseException subclass, raised at import time.
# expect: rejected top-level
# sandbox: failed GeneratorExit
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}

raise GeneratorExit("bye")


def route(request, cluster, params):
    return 0
