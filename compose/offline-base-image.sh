#!/usr/bin/env bash
# A stand-in for `python:3.11-slim` where no image registry can be reached (CI here, an
# air-gapped build host): Debian bookworm's own Python 3.11 in a minimal root filesystem, made
# with debootstrap from Debian's package mirror and imported under the tag the Dockerfile's
# FROM line names, so that compose/Dockerfile builds unchanged.
#
#   sudo compose/offline-base-image.sh [TAG]        # default TAG: python:3.11-slim
#
# Differences from the real image: Python lives in /usr (not /usr/local) and `python` comes
# from python-is-python3. The host's extra CA certificates are added (a TLS-intercepting proxy
# between the build and PyPI would otherwise fail every pip install) and PIP_CERT & co. point
# at the bundle; that belongs to this stand-in only, never to the Dockerfile.
# Needs root, debootstrap and a running Docker engine. Does nothing when TAG already exists
# (CONVEYOR_REBUILD_BASE=1 rebuilds it).
set -euo pipefail

tag="${1:-python:3.11-slim}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$tag" >/dev/null 2>&1 && [ "${CONVEYOR_REBUILD_BASE:-0}" != 1 ]; then
    echo "base image $tag exists"
    exit 0
fi
if docker pull --quiet "$tag" >/dev/null 2>&1; then
    echo "base image $tag pulled from the registry"
    exit 0
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
echo "building $tag from Debian packages (debootstrap, about a minute)"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# The host's own CA certificates (see the header), then the bundle rebuilt inside.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
fi
# What python:3.11-slim leaves out too: documentation, manuals, translations, apt's caches.
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
# Debian's marker that stops pip outside a venv; the real image has none.
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED

bundle=/etc/ssl/certs/ca-certificates.crt
tar -C "$rootfs" -c . | docker import \
    --change "ENV PIP_CERT=$bundle SSL_CERT_FILE=$bundle REQUESTS_CA_BUNDLE=$bundle" \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
docker image ls "$tag" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
