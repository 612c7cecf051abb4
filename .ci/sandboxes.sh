#!/usr/bin/env bash
# Sandbox backends for the isolation tests. Never fails CI: whatever cannot be set up here makes
# the matching tests skip with the backend's own reason (its self-test says why).
#
# 1. bubblewrap (the default backend);
# 2. a Docker engine: docker.io from Debian, dockerd started by hand in the background (there is
#    no init system to start it), and the sandbox image built locally by sandbox/build_image.sh
#    (debootstrap + docker import; nothing can be pulled).
set -uo pipefail
cd "$(dirname "$0")/.."

log() { echo "ci/sandboxes: $*"; }
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        log "not root and no sudo: using whatever is installed"; fi
fi
apt_install() {
    [ -n "$SUDO" ] || [ "$(id -u)" = 0 ] || return 1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1 && return 0
    $SUDO apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1
}

if ! command -v bwrap >/dev/null; then
    apt_install bubblewrap && log "bubblewrap installed" || log "could not install bubblewrap"
fi

if [ "${AUTOTUNER_CI_DOCKER:-1}" = 0 ]; then log "docker skipped (AUTOTUNER_CI_DOCKER=0)"; exit 0; fi
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    apt_install docker.io debootstrap || { log "could not install docker.io/debootstrap"; exit 0; }
fi
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd in the background"
    $SUDO sh -c 'nohup dockerd >/tmp/autotuner-ci-dockerd.log 2>&1 &'
    for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
if ! docker info >/dev/null 2>&1; then
    log "no docker engine could be started (see /tmp/autotuner-ci-dockerd.log); docker tests skip"
    exit 0
fi
if timeout 900 bash sandbox/build_image.sh >/tmp/autotuner-ci-image.log 2>&1; then
    log "sandbox image built"
else
    log "sandbox image build failed (see /tmp/autotuner-ci-image.log); docker tests skip"
fi
exit 0
