# Routes to a replica index of 4,000 digits: the reason must stay short and say what happened.
# expect: failed replica (a 4000-digit number) does not exist
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    digits = 3999 + request.id * 0
    return 10**digits
