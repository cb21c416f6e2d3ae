# certbound container image: a static-ish Rust binary on a distroless, non-root base.
#   docker build -t certbound:0.1.0 .
# No container engine runs in CI: scripts/docker-build-replay.sh (run by scripts/test.sh) replays
# the build stage below outside a container, so a missing COPY fails the tests.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The workspace manifest names every member (the Envoy module too, though only the service is
# built here), and the root package declares the `decision` bench: cargo reads them all before
# building anything.
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches/decision.rs ./benches/
COPY proto ./proto
COPY core ./core
COPY envoy-module ./envoy-module
COPY redis-store ./redis-store
COPY src ./src
RUN cargo build --release --locked --bin certbound \
 && strip target/release/certbound

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/certbound /usr/local/bin/certbound
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/certbound"]
CMD ["serve", "--config", "/etc/certbound/certbound.yaml"]
