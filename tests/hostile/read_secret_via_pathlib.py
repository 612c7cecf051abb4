# Same, through pathlib and a directory listing of the home directories.
# expect: rejected import
# sandbox: contained
# weaker: process it runs as your user, so it reads and writes what you can
# ruff: noqa  (hostile on purpose: the code style is part of the attack)

import pathlib

TUNABLES = {}


def route(request, cluster, params):
    found = []
    for home in [pathlib.Path("/root"), *pathlib.Path("/home").glob("*"), pathlib.Path("/tmp")]:
        try:
            for p in home.iterdir():
                if p.is_file():
                    found.append(p.name + "=" + p.read_text()[:200])
        except Exception as exc:
            found.append(str(home) + ":" + type(exc).__name__)
    raise ValueError(" ".join(found))
