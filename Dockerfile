# certbound container image: a static-ish Rust binary on a distroless, non-root base.
#   docker build -t certbound:0.1.0 .
# (CI has no container engine, so this file is read, not built, there.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, for layer caching.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
RUN cargo build --release --locked --bin certbound \
 && strip target/release/certbound

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/certbound /usr/local/bin/certbound
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/certbound"]
CMD ["serve", "--config", "/etc/certbound/certbound.yaml"]
