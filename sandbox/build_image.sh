#!/usr/bin/env bash
# Build the docker backend's image locally: nothing is pulled from a registry.
#
# 1. debootstrap a minimal Debian (variant minbase) with python3 and python3-numpy from the
#    Debian mirror that this machine's apt already uses (or $DEBIAN_MIRROR);
# 2. `docker import` that root filesystem as $BASE_IMAGE;
# 3. `docker build` sandbox/Dockerfile on top of it as $IMAGE.
#
# The autotuner package itself is NOT copied into the image: the docker backend bind-mounts the
# installed package (checkout or wheel) read-only at run time, so the image never goes stale when
# the simulator changes. Idempotent: an existing base image is reused unless REBUILD_BASE=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE="${DEBIAN_SUITE:-bookworm}"
BASE_IMAGE="${BASE_IMAGE:-autotuner-sandbox-base:${SUITE}}"
IMAGE="${IMAGE:-autotuner-sandbox:latest}"

mirror_from_apt() {
    # First Debian "URIs:" (deb822) or "deb URL" line of the machine's own apt configuration.
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri="$(awk '/^URIs:/ {print $2; exit}' "$f")"
        if [ -n "$uri" ] && [[ "$uri" != *security* ]]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' "$f")"
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
}

if ! docker info >/dev/null 2>&1; then
    echo "build_image.sh: no docker engine answers (docker info failed)" >&2
    exit 1
fi

if [ "${REBUILD_BASE:-0}" = 1 ] || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "build_image.sh: debootstrap is not installed" >&2; exit 1; }
    MIRROR="${DEBIAN_MIRROR:-$(mirror_from_apt)}"
    [ -n "$MIRROR" ] || { echo "build_image.sh: no Debian mirror found; set DEBIAN_MIRROR" >&2; exit 1; }
    ROOTFS="$(mktemp -d /tmp/autotuner-rootfs.XXXXXX)"
    trap 'rm -rf "$ROOTFS"' EXIT
    echo "build_image.sh: debootstrap $SUITE (minbase + python3-numpy) into $ROOTFS" >&2
    debootstrap --variant=minbase --include=python3-minimal,python3,python3-numpy \
        "$SUITE" "$ROOTFS" "$MIRROR" >&2
    # Nothing the worker needs: package caches, docs, apt lists.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
    tar -C "$ROOTFS" --numeric-owner -c . | docker import - "$BASE_IMAGE" >&2
    rm -rf "$ROOTFS"
    trap - EXIT
fi

docker build --network none --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$HERE" >&2
echo "$IMAGE"
