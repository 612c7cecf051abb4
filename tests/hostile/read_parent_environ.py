# Reads the parent's environment through /proc (ppid, and every pid it can see).
# expect: rejected import
# sandbox: contained
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import os

TUNABLES = {}


def route(request, cluster, params):
    found = []
    for pid in ["1", str(os.getppid())] + os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                found.append(f.read().decode(errors="replace"))
        except Exception:
            pass
    raise RuntimeError("environ: " + " ".join(found))
