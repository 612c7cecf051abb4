# Floods its output (print goes to stderr in the worker): the output cap must stop it.
# expect: rejected builtin
# sandbox: failed output limit
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    while True:
        print("x" * 65536)
