# Tries to write files outside its scratch directory: /tmp, the home, the package itself.
# expect: rejected builtin
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

TUNABLES = {}

TARGETS = ["/tmp/autotuner_pwned", "/root/autotuner_pwned", "/autotuner_pwned",
           "/sandbox/lib/autotuner/pwned.py", "/usr/autotuner_pwned"]


def route(request, cluster, params):
    for path in TARGETS:
        try:
            with open(path, "w") as f:
                f.write("pwned")
        except Exception:
            pass
    return request.id % len(cluster.replicas)
