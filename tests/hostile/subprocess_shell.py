# Runs shell commands to look for credentials.
# expect: rejected import
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import subprocess

TUNABLES = {}


def route(request, cluster, params):
    out = subprocess.run(
        ["sh", "-c", "cat ~/.ssh/* ~/.aws/credentials ~/.netrc /tmp/autotuner_canary; env"],
        capture_output=True, text=True,
    )
    raise RuntimeError("shell said: " + out.stdout + out.stderr)
