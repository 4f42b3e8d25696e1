# The orchestrator worker image: built with cargo on the Rust image, run on Debian slim as a non-root user.
#   docker build -t orchestrator:local .     (docker-compose.yml builds it as `orchestrator:local`)

ARG RUST_VERSION=1.88

# ---- build ------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer, so that editing src/ does not recompile them: build the
# manifest with stub targets (a stub per declared [[bench]], which cargo insists on finding).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in $(awk '/^\[\[bench\]\]/{b=1;next} /^\[/{b=0} b && /^name *=/{gsub(/^name *= *"|".*$/,""); print}' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$b.rs"; done \
 && cargo build --release --locked --bin orchestrator \
 && rm -rf src benches

COPY . .
# touch: the real sources must look newer than the stubs' build outputs.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin orchestrator \
 && install -m 0755 target/release/orchestrator /usr/local/bin/orchestrator

# ---- run --------------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: TLS to the ACME directory and rediss://; curl: the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid. The Docker socket is NOT reached through a group baked in here: the
# socket's group id differs from host to host (docker group 999, 998, 133 ...; 0 on some), so a `docker`
# group created at build time would match by luck only. The run time adds the socket's real group
# instead (`group_add: [${DOCKER_GID}]` in docker-compose.yml, `docker run --group-add $(stat -c %g
# /var/run/docker.sock)`). Be clear about what this buys: whoever holds the socket can start privileged
# containers, so the socket is root-equivalent on the host. Running as non-root still keeps a
# compromised worker from writing the image's files and from anything root-only *inside* this container.
ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} orchestrator \
 && useradd --system --uid ${APP_UID} --gid orchestrator --home-dir /app --shell /usr/sbin/nologin orchestrator

WORKDIR /app
COPY --from=build /usr/local/bin/orchestrator /usr/local/bin/orchestrator
# The portal's contract (queues, schemas), the team/sandbox templates, the Corefile and seed zones.
COPY queues/ /app/queues/
COPY templates/ /app/templates/
COPY coredns/ /app/coredns/
COPY traefik/dynamic/ /app/traefik/dynamic/

# Folders the worker writes. Created here, owned by the worker's user, because an empty named volume
# mounted on them is initialised from the image (contents and ownership): that is how the `zones`,
# `certs` and `orchestrator-state` volumes of docker-compose.yml become writable by a non-root user, and
# how the worker (non-root) can write certificates.yml at the volume's root, which Traefik watches.
RUN mkdir -p /app/coredns/zones /certs/traefik/dynamic /var/lib/orchestrator/acme \
 && chown -R orchestrator:orchestrator /app/coredns/zones /certs /var/lib/orchestrator

# Container defaults (docker-compose.yml sets the same explicitly). METRICS_ADDR listens on every
# interface, or neither the HEALTHCHECK nor Prometheus on the network could reach it.
ENV QUEUES_DIR=/app/queues \
    TEMPLATES_DIR=/app/templates \
    ZONES_DIR=/app/coredns/zones \
    CERTS_DIR=/certs \
    ACME_ACCOUNT_FILE=/var/lib/orchestrator/acme/account.json \
    METRICS_ADDR=0.0.0.0:9184 \
    HTTP01_LISTEN=0.0.0.0:5002

USER orchestrator:orchestrator

# /metrics and /healthz; the built-in HTTP-01 responder.
EXPOSE 9184 5002

# The worker's /healthz on METRICS_ADDR's port (9184 unless overridden).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${METRICS_ADDR##*:}/healthz" >/dev/null || exit 1

ENTRYPOINT ["orchestrator"]
CMD ["worker"]
