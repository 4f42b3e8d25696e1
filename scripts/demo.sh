#!/usr/bin/env bash
# Runs the platform locally and serves a team over HTTPS through a real Traefik:
#   - Redis, the Docker engine and the local team images (scripts/setup.sh, which also installs Traefik),
#   - Pebble as the local ACME CA (listener certificate generated here with openssl, like
#     tests/common/pebble.rs does with rcgen), validating DNS-01 against the worker's embedded DNS server,
#   - Traefik as a host process on the project's traefik/traefik.yml with ports adapted
#     (`orchestrator traefik-config`: HTTPS on $DEMO_HTTPS_PORT, default 8443), its file provider on the
#     worker's certificate folder,
#   - a worker (`orchestrator demo`) that provisions team "demo" with a certificate and reports `active`
#     only once the team answers through Traefik; then it prints a curl command that answers with the page.
# The worker keeps serving afterwards; Ctrl-C stops it, Traefik and Pebble. Extra arguments go to
# `orchestrator demo` (e.g. --slug acme, --exit to stop after the demo task: non-interactive).
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

# DEMO_PROFILE=debug skips the release build (quicker on a machine that already has a debug build).
if [ "${DEMO_PROFILE:-release}" = debug ]; then
  cargo build --locked --quiet
  BIN=${CARGO_TARGET_DIR:-target}/debug/orchestrator
else
  cargo build --release --locked --quiet
  BIN=${CARGO_TARGET_DIR:-target}/release/orchestrator
fi
HTTPS_PORT=${DEMO_HTTPS_PORT:-8443}
HTTP_PORT=${DEMO_HTTP_PORT:-8000}
TRAEFIK_API_PORT=${DEMO_TRAEFIK_PORT:-8088}
PEBBLE_PORT=${DEMO_PEBBLE_PORT:-14000}
PEBBLE_MGMT_PORT=${DEMO_PEBBLE_MGMT_PORT:-15000}
SLUG=demo
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--slug" ] && SLUG=${args[$((i + 1))]:-demo}
done

export DOMAIN="${DOMAIN:-localhost}"
export RUST_LOG="${RUST_LOG:-info,hickory_server=warn}"
export EMBEDDED_DNS="${EMBEDDED_DNS:-true}"
export DNS_LISTEN="${DNS_LISTEN:-127.0.0.1:5353}"
# Traefik runs on the host and reaches team containers at their bridge addresses: no ingress
# container to attach.
export INGRESS_CONTAINER="${INGRESS_CONTAINER:-}"
export ZONES_DIR="${ZONES_DIR:-run/zones}"
export CERTS_DIR="${CERTS_DIR:-run/certs}"
export ACME_ACCOUNT_FILE="${ACME_ACCOUNT_FILE:-run/acme/account.json}"
mkdir -p "$ZONES_DIR" "$CERTS_DIR" run/pebble run/traefik run/acme

children=()
cleanup() {
  for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${children[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
wait_port() { # host port what logfile
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: $3 did not listen on $1:$2; see $4" >&2
  tail -20 "$4" >&2
  exit 1
}
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$HTTPS_PORT" "$HTTP_PORT" "$TRAEFIK_API_PORT" "$PEBBLE_PORT" "$PEBBLE_MGMT_PORT"; do
  if busy "$port"; then
    echo "demo: port $port is in use (another demo?); set DEMO_*_PORT to free ports" >&2
    exit 1
  fi
done

# Pebble: a listener CA and a certificate for localhost/127.0.0.1, then its config.
P=run/pebble
if [ ! -f "$P/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=orchestrator demo listener CA" -keyout "$P/ca-key.pem" -out "$P/listener-ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$P/key.pem" -out "$P/cert.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$P/san.ext"
  openssl x509 -req -in "$P/cert.csr" -CA "$P/listener-ca.pem" -CAkey "$P/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$P/san.ext" -out "$P/cert.pem" 2>/dev/null
fi
cat > "$P/pebble-config.json" <<EOF
{"pebble": {"listenAddress": "127.0.0.1:$PEBBLE_PORT", "managementListenAddress": "127.0.0.1:$PEBBLE_MGMT_PORT",
 "certificate": "$PWD/$P/cert.pem", "privateKey": "$PWD/$P/key.pem", "httpPort": 5002, "tlsPort": 5001,
 "ocspResponderURL": "", "externalAccountBindingRequired": false}}
EOF
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
  pebble -config "$P/pebble-config.json" -strict=false -dnsserver "$DNS_LISTEN" >"$P/pebble.log" 2>&1 &
children+=($!)
wait_port 127.0.0.1 "$PEBBLE_MGMT_PORT" Pebble "$P/pebble.log"
wait_port 127.0.0.1 "$PEBBLE_PORT" Pebble "$P/pebble.log"
# Pebble makes a new issuing root at every start: what clients trust for the team's certificate.
curl -sS --fail --cacert "$P/listener-ca.pem" "https://127.0.0.1:$PEBBLE_MGMT_PORT/roots/0" > "$P/root.pem"
export ACME_DIRECTORY="https://127.0.0.1:$PEBBLE_PORT/dir"
export ACME_CA_ROOT="$P/listener-ca.pem"
# Pebble forgets everything when it stops: drop the ACME account of an earlier run, and its
# certificate for the demo team (signed by an earlier root), so this run's root verifies the new one.
rm -f "$ACME_ACCOUNT_FILE"
redis-cli -u "$REDIS_URL" DEL "cert:team-$SLUG" >/dev/null
redis-cli -u "$REDIS_URL" SREM certs "team-$SLUG" >/dev/null

# Traefik: the project's static configuration, ports and folders adapted for a host process.
"$BIN" traefik-config --web-port "$HTTP_PORT" --websecure-port "$HTTPS_PORT" \
  --traefik-port "$TRAEFIK_API_PORT" --dynamic-dir "$CERTS_DIR" \
  --acme-storage run/traefik/acme.json > run/traefik/traefik.yml
.venv/bin/traefik --configFile=run/traefik/traefik.yml >run/traefik/traefik.log 2>&1 &
children+=($!)
wait_port 127.0.0.1 "$TRAEFIK_API_PORT" Traefik run/traefik/traefik.log
export INGRESS_PROBE_URL="${INGRESS_PROBE_URL:-https://127.0.0.1:$HTTPS_PORT}"

"$BIN" demo --certificate --https-port "$HTTPS_PORT" --ca-file "$P/root.pem" "$@"
