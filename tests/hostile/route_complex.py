# Routes to complex(1, 0): not an integer, whatever int() of it would say.
# expect: failed replica must be an integer, got complex
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    return complex(1, 0)
