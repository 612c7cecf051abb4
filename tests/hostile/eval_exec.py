# eval/exec of a built string.
# expect: rejected builtin
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}


def route(request, cluster, params):
    exec("import os; os.system('id')")
    return eval("0")
