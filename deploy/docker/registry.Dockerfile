# registry_service image (plus tetherctl and the health probe). From the repository root:
#   docker build -f deploy/docker/registry.Dockerfile -t tether/registry .
# Needs BuildKit (Docker's default builder since 23.0) for the cache mount and for
# registry.Dockerfile.dockerignore.

# Build stage: the repository's own offline build (Debian packages, Bazel from Debian).
FROM debian:12 AS build
WORKDIR /src
# Dependencies alone first, so this layer is reused until install_deps.sh changes.
COPY scripts/install_deps.sh scripts/
RUN scripts/install_deps.sh run
COPY . .
# linux-sandbox needs namespaces a container build usually lacks; the build is isolated anyway.
# The cache mount keeps Bazel's disk cache (see .bazelrc) between image builds.
RUN --mount=type=cache,target=/root/.cache/tether-bazel-disk \
    bazel build --jobs=2 -c opt --spawn_strategy=local \
      //registry_service/server:registry_service //tools:tetherctl \
      //deploy/health:grpc_health_probe \
 && mkdir /out \
 && cp bazel-bin/registry_service/server/registry_service bazel-bin/tools/tetherctl \
      bazel-bin/deploy/health/grpc_health_probe /out/ \
 && bazel shutdown

# Runtime stage: only the shared libraries the binaries link (`ldd` them to check;
# tests/deploy/validate_deploy.sh does).
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libgrpc++1.51 libgrpc29 libhiredis0.14 libprotobuf32 libre2-9 \
      libssl3 libstdc++6 zlib1g \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tether
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# Flags come from TETHER_<FLAG> variables (a command-line flag wins). The health check reads
# the port from TETHER_LISTEN, so set the address there rather than with --listen. Secrets
# (TETHER_API_TOKENS_FILE, TETHER_EDGE_SECRET_FILE or TETHER_EDGE_SECRET) come at run time.
# Metrics, /healthz and /readyz on 9090.
ENV TETHER_LISTEN=0.0.0.0:7000 TETHER_METRICS_HOST=0.0.0.0 TETHER_METRICS_PORT=9090
EXPOSE 7000 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD grpc_health_probe --addr="127.0.0.1:${TETHER_LISTEN##*:}" --timeout_ms=2000 || exit 1
ENTRYPOINT ["/usr/local/bin/registry_service"]
