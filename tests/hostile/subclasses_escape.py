# The classic escape: object.__subclasses__() -> a class whose __init__.__globals__ has os.
# expect: rejected dunder
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "_wrap_close":
            cls.__init__.__globals__["system"]("id > /tmp/autotuner_pwned")
    return 0
