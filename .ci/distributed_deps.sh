#!/usr/bin/env bash
# What tests/test_distributed.py needs: Ray and a PostgreSQL driver (the project's [ray] extra,
# into the active venv) and a PostgreSQL server (Debian's postgresql package; the test starts
# its own throwaway cluster). Each skipped when already installed; never fails CI: without them
# the matching tests skip and say why.
set -uo pipefail
cd "$(dirname "$0")/.."

log() { echo "ci/distributed_deps: $*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        log "not root and no sudo: using whatever is installed"; fi
fi

if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    log "postgresql present"
elif [ -n "$SUDO" ] || [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if $SUDO apt-get install -y -qq postgresql >/dev/null 2>&1 || {
        $SUDO apt-get update -qq >/dev/null 2>&1 &&
        $SUDO apt-get install -y -qq postgresql >/dev/null 2>&1; }; then
        log "postgresql installed"
    else
        log "could not install postgresql (the PostgreSQL storage test will skip)"
    fi
fi

if python -c "import ray, psycopg2" 2>/dev/null; then
    log "ray and psycopg2 present"
else
    python -m pip install --quiet 'ray>=2.9' 'psycopg2-binary>=2.9' \
        && log "ray and psycopg2 installed" \
        || log "could not install ray/psycopg2 (the Ray and PostgreSQL tests will skip)"
fi
