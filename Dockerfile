# syntax=docker/dockerfile:1
#
# Beacon container image.
#
#   docker build -t beacon:local .
#   docker run --rm -p 8080:8080 -e BEACON_JWT_SECRET="$(openssl rand -base64 48)" beacon:local
#
# Stages:
#   web      builds the map page (web/dist) with npm + esbuild
#   chef     Rust toolchain plus cargo-chef, shared by the next two stages
#   planner  reduces the workspace to a dependency "recipe" (manifests + lock file)
#   builder  compiles the dependencies from the recipe (a layer that only changes
#            when Cargo.toml/Cargo.lock change), then the server itself
#   runtime  distroless glibc image holding one static-ish binary, running as nonroot
#
# Base images are pinned by tag (Rust 1.95.0, Node 24.11.1 LTS, Debian 12 everywhere). For
# reproducible releases also pin them by digest (`docker buildx imagetools inspect IMAGE:TAG`
# prints it) and let a dependency bot bump tag and digest together.
# BuildKit is required (the default builder since Docker 23) for the cache mounts.

# ---------------------------------------------------------------------------
FROM node:24.11.1-bookworm-slim AS web
WORKDIR /src/web
# Manifests first: the `npm ci` layer is reused until the lock file changes.
COPY web/package.json web/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# ---------------------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS chef
# cargo-chef is compiled once and kept in this layer; --locked uses its own lock file.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install --locked cargo-chef@0.1.78
WORKDIR /src

# ---------------------------------------------------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is rebuilt when the recipe (manifests, lock file) changes,
# not when the server's own sources do.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo chef cook --release --locked -p beacon --recipe-path recipe.json
COPY . .
# The map page built above, compiled into the binary by rust-embed. This stage has no npm:
# BEACON_SKIP_WEB_BUILD tells build.rs not to try (it keeps a real page as it is).
COPY --from=web /src/web/dist web/dist
ENV BEACON_SKIP_WEB_BUILD=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    test -s web/dist/index.html \
    && cargo build --release --locked -p beacon --bin beacon \
    && install -D -m 0755 target/release/beacon /out/usr/local/bin/beacon \
    && install -d -m 0750 /out/var/lib/beacon

# ---------------------------------------------------------------------------
# glibc 2.36 + libgcc_s, the same Debian 12 the builder links against. Distroless publishes
# no versioned tags: pin the digest of :nonroot for releases.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

ARG VERSION=0.0.0-dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="beacon" \
      org.opencontainers.image.description="Real-time location broadcast server: devices push GPS fixes over WebSocket and see each other move, live." \
      org.opencontainers.image.source="https://github.com/beacon-location/beacon" \
      org.opencontainers.image.url="https://github.com/beacon-location/beacon" \
      org.opencontainers.image.documentation="https://github.com/beacon-location/beacon/blob/main/infra/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Beacon contributors" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=builder /out/usr/local/bin/beacon /usr/local/bin/beacon
# Optional SQLite store (BEACON_DATA_DIR=/var/lib/beacon); mount a volume there to keep it.
COPY --from=builder --chown=65532:65532 /out/var/lib/beacon /var/lib/beacon

# Listening on all interfaces is only allowed with authentication on, hence BEACON_AUTH=jwt:
# the container refuses to start until BEACON_JWT_SECRET (or a JWKS) is provided.
ENV BEACON_LISTEN=0.0.0.0:8080 \
    BEACON_AUTH=jwt \
    BEACON_LOG_FORMAT=json

# 65532 is distroless's "nonroot"; numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080

# No shell or curl in the image: the binary checks its own /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/beacon", "healthcheck"]

# On SIGTERM the server stops accepting, closes every socket with 1001 and exits within
# BEACON_SHUTDOWN_GRACE_SECS; give `docker stop` a timeout longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/beacon"]
CMD ["serve"]
