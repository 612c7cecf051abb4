#!/usr/bin/env bash
# What the report's browser test needs: Debian's chromium (headless screenshot and DOM dump of
# report.html), and optuna-dashboard for the dashboard check. Never fails CI: without them the
# matching tests in tests/test_report.py skip and say why.
set -uo pipefail
cd "$(dirname "$0")/.."

log() { echo "ci/report_deps: $*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        log "not root and no sudo: using whatever is installed"; fi
fi

if [ -x /usr/bin/chromium ]; then
    log "chromium present"
elif [ -n "$SUDO" ] || [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || {
        $SUDO apt-get update -qq >/dev/null 2>&1 &&
        $SUDO apt-get install -y -qq chromium >/dev/null 2>&1; }; then
        log "chromium installed"
    else
        log "could not install chromium (the browser test will skip)"
    fi
fi

if python -c "import optuna_dashboard" 2>/dev/null; then
    log "optuna-dashboard present"
else
    python -m pip install --quiet optuna-dashboard >/dev/null 2>&1 && log "optuna-dashboard installed" \
        || log "could not install optuna-dashboard (the dashboard test will skip)"
fi
exit 0
