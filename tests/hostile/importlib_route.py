# importlib.import_module with a computed module name.
# expect: rejected import
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import importlib

TUNABLES = {}


def route(request, cluster, params):
    mod = importlib.import_module("o" + "s")
    mod.system("id")
    return 0
