# syntax=docker/dockerfile:1
#
# service-auth: multi-stage build.
#   builder: the Rust toolchain compiles a release binary (dependency and
#            target caches are BuildKit cache mounts, so rebuilds are fast).
#   runtime: distroless cc (glibc + libgcc, no shell, no package manager),
#            running as the image's unprivileged `nonroot` user (65532).
#
#   docker build -t service-auth .
#   docker run --rm service-auth --help
#
# The image holds only the binary. Mount the config, registry and secrets
# (e.g. at /etc/service-auth) and pass `serve --config ...`.

FROM rust:1-bookworm AS builder
WORKDIR /build
# Only what cargo needs to read the manifest and build the binary: every
# `[[bench]]` target it declares must exist (cargo reads them all before
# building anything), so benches/ comes too. Tests, docs and deployment files
# stay out of the build context (see .dockerignore, which lets through exactly
# these) and out of the cache key. tests/deploy.rs rebuilds this stage's
# context from these lines and has cargo read it.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin service-auth \
    && cp target/release/service-auth /service-auth

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /service-auth /usr/local/bin/service-auth
USER nonroot:nonroot
# 9191: gRPC (Authorization/Check and grpc.health.v1.Health). Bind it to
# loopback in the shared network namespace; nothing else should call Check.
EXPOSE 9191
ENV SERVICE_AUTH_CONFIG=/etc/service-auth/service-auth.yaml
# No shell or grpc_health_probe in distroless: the binary probes its own
# health service and exits 0 only when it answers SERVING (a registry is loaded).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/service-auth", "health", "--timeout", "2s"]
ENTRYPOINT ["/usr/local/bin/service-auth"]
CMD ["serve"]
