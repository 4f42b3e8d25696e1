#!/usr/bin/env bash
# Runs the orchestrator locally with everything it needs: installs and starts Redis, the Docker engine
# and the local team images if missing, then starts a worker with the embedded DNS server, provisions
# the demo team and shows its progress. The worker keeps serving afterwards; Ctrl-C stops it.
# Extra arguments go to `orchestrator demo` (e.g. --slug acme, --exit).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

if [ -z "${REDIS_URL:-}" ]; then
  if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    mkdir -p run/redis
    redis-server --port 6379 --bind 127.0.0.1 --appendonly yes --dir "$PWD/run/redis" \
      --daemonize yes --logfile "$PWD/run/redis/redis.log"
    for _ in $(seq 1 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  export REDIS_URL=redis://127.0.0.1:6379
fi

cargo build --release --locked --quiet
# Local development: names under localhost, served by the embedded DNS server on 127.0.0.1:5353;
# no Traefik container runs here, so no ingress is connected to the team networks.
export DOMAIN="${DOMAIN:-localhost}"
export EMBEDDED_DNS="${EMBEDDED_DNS:-true}"
export INGRESS_CONTAINER="${INGRESS_CONTAINER:-}"
export ZONES_DIR="${ZONES_DIR:-run/zones}"
export CERTS_DIR="${CERTS_DIR:-run/certs}"
export ACME_ACCOUNT_FILE="${ACME_ACCOUNT_FILE:-run/certs/account.json}"
mkdir -p "$ZONES_DIR" "$CERTS_DIR"
exec target/release/orchestrator demo "$@"
