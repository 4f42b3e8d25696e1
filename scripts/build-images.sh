#!/bin/sh
# Builds the local team images `kanban/team-api:latest` and `kanban/team-web:latest` with
# `docker import` from a busybox rootfs (package busybox-static): no registry is needed.
#
# Both images hold busybox and nothing else; the container's command (from templates/*.yml) writes
# the team page from TEAM_SLUG at start and runs `busybox httpd`. The api image answers
# `/api/health`, the web image `/`. Healthchecks use `busybox wget`.
#
# Idempotent and fast: an image that exists with the same build hash is left alone.
# Usage: scripts/build-images.sh [--force]
set -eu

BUSYBOX=${BUSYBOX:-$(command -v busybox || true)}
[ -n "$BUSYBOX" ] || BUSYBOX=/bin/busybox
if [ ! -x "$BUSYBOX" ]; then
    echo "busybox not found: install busybox-static" >&2
    exit 1
fi
if ! "$BUSYBOX" --list | grep -qx httpd; then
    echo "$BUSYBOX has no httpd applet: install busybox-static" >&2
    exit 1
fi
FORCE=${1:-}
# The build hash changes when this script or busybox changes, so a stale image is rebuilt.
HASH=$(cat "$0" "$BUSYBOX" | sha256sum | cut -c1-16)

build() {
    image=$1
    existing=$(docker image inspect --format '{{ index .Config.Labels "kanban.build-hash" }}' "$image" 2>/dev/null || true)
    if [ "$FORCE" != "--force" ] && [ "$existing" = "$HASH" ]; then
        echo "$image is up to date ($HASH)"
        return 0
    fi
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/bin" "$root/www" "$root/tmp" "$root/data" "$root/etc"
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in sh httpd wget cat echo mkdir sleep ls ps kill timeout nslookup; do
        ln -s busybox "$root/bin/$applet"
    done
    echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
    echo "root:x:0:" > "$root/etc/group"
    chmod 1777 "$root/tmp"
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/bin' \
        --change "LABEL kanban.build-hash=$HASH" \
        --change 'WORKDIR /www' \
        --change 'CMD ["/bin/busybox", "httpd", "-f", "-h", "/www"]' \
        - "$image" >/dev/null
    rm -rf "$root"
    trap - EXIT
    echo "built $image ($HASH)"
}

build kanban/team-api:latest
build kanban/team-web:latest
