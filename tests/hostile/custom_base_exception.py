# A class deriving from BaseException, so that "except Exception" misses it.
# expect: rejected class
# sandbox: failed Escape
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


class Escape(BaseException):
    pass


def route(request, cluster, params):
    raise Escape("out")
