# One huge allocation built by doubling a string.
# expect: failed memory
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    s = "x"
    while True:
        s = s + s
