# syntax=docker/dockerfile:1
#
# scout-exporter container image: one static binary and CA certificates.
#   docker build -t scout-exporter .
#   docker run --rm -p 9464:9464 scout-exporter --demo
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# Alpine's Rust targets musl and links statically, so the binary needs no
# libc at run time (TLS is rustls with ring; there is no OpenSSL).
FROM rust:1-alpine AS builder
RUN apk add --no-cache musl-dev ca-certificates
WORKDIR /src
COPY . .
# The cargo registry and the target directory live in BuildKit cache mounts:
# dependencies are downloaded and compiled once and reused by later builds.
# Cache mounts are not part of the image, so the binary is copied out.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin scout-exporter \
 && install -D -m 0755 target/release/scout-exporter /out/scout-exporter

FROM scratch
LABEL org.opencontainers.image.title="scout-exporter" \
      org.opencontainers.image.description="Docker Scout metrics re-exported through OpenTelemetry (OTLP) and a Prometheus endpoint" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /out/scout-exporter /scout-exporter
# uid/gid 65532, the same user the Kubernetes manifests run as.
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/scout-exporter"]
