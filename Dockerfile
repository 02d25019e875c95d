# syntax=docker/dockerfile:1
#
# scout-exporter container image.
#   docker build -t scout-exporter .
#   docker run --rm -p 9464:9464 scout-exporter --demo
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cargo registry and the target directory live in BuildKit cache mounts:
# dependencies are downloaded and compiled once and reused by later builds,
# whatever files changed, without a separate dummy-project layer. Cache
# mounts are not part of the image, so the binary is copied out of target/.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin scout-exporter \
 && install -D -m 0755 target/release/scout-exporter /out/scout-exporter

# The binary links glibc dynamically (TLS is rustls, no OpenSSL). The
# distroless "cc" image has glibc, libgcc and CA certificates, and no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="scout-exporter" \
      org.opencontainers.image.description="Docker Scout metrics re-exported through OpenTelemetry (OTLP) and a Prometheus endpoint" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/scout-exporter /scout-exporter
# uid/gid 65532, the same user the Kubernetes manifests run as.
USER nonroot:nonroot
EXPOSE 9464
ENTRYPOINT ["/scout-exporter"]
