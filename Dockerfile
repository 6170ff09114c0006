# syntax=docker/dockerfile:1
# Build: dependencies first (cached while only our sources change), then attache.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY entity/Cargo.toml entity/Cargo.toml
COPY migration/Cargo.toml migration/Cargo.toml
RUN mkdir -p src entity/src migration/src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs entity/src/lib.rs migration/src/lib.rs \
 && echo 'fn main() {}' > benches/upload_download.rs && cp benches/upload_download.rs benches/load.rs \
 && cargo build --release --locked \
 && rm -rf src entity/src migration/src benches
COPY . .
RUN touch src/main.rs src/lib.rs entity/src/lib.rs migration/src/lib.rs \
 && cargo build --release --locked --bin attache

# Run: a slim image, a non-root user (uid 10001), data under /data. pg_dump and
# pg_restore (Debian's PostgreSQL 15 client) are there for `attache backup`.
# Versions are not pinned: Debian's security updates replace them in the archive.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 attache \
 && useradd --system --uid 10001 --gid attache --home-dir /data attache \
 && mkdir -p /data/uploads && chown -R attache:0 /data && chmod -R g=u /data
COPY --from=build /src/target/release/attache /usr/local/bin/attache
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/docker-healthcheck.sh
COPY LICENSE assets/playground/LICENSE.graphiql /usr/share/doc/attache/
USER 10001:10001
WORKDIR /data
ENV LISTEN_ADDR=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///data/attache.db?mode=rwc \
    STORAGE_ROOT=/data/uploads
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["docker-healthcheck.sh"]
# Migrations, then `exec attache serve` (docker/entrypoint.sh); other commands run as given.
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["serve"]
