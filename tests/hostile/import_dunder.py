# __import__ to get os without an import statement.
# expect: rejected dunder
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    __import__("os").system("id > /tmp/autotuner_pwned")
    return 0
