# Reaches eval through the __builtins__ mapping.
# expect: rejected dunder
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    b = __builtins__
    ev = b["eval"] if isinstance(b, dict) else b.eval
    return ev("0")
