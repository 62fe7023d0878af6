# ws_edge image. From the repository root:
#   docker build -f deploy/docker/edge.Dockerfile -t tether/edge .
# Needs BuildKit (Docker's default builder since 23.0) for the cache mount and for
# edge.Dockerfile.dockerignore.

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
    bazel build --jobs=2 -c opt --spawn_strategy=local //ws_edge:ws_edge \
 && mkdir /out \
 && cp bazel-bin/ws_edge/ws_edge /out/ \
 && bazel shutdown

# Runtime stage: only the shared libraries the binary links (`ldd` it to check;
# tests/deploy/validate_deploy.sh does).
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libgrpc++1.51 libgrpc29 libprotobuf32 libre2-9 libssl3 \
      libstdc++6 zlib1g \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tether
COPY --from=build /out/ws_edge /usr/local/bin/ws_edge
USER 10001:10001
# Flags come from TETHER_<FLAG> variables (a command-line flag wins). Secrets (the nodes'
# shared token, the edge secret) come at run time: TETHER_SHARED_TOKEN or
# TETHER_SHARED_TOKEN_FILE, TETHER_EDGE_SECRET or TETHER_EDGE_SECRET_FILE.
# Metrics, /healthz and /readyz on 9090; the health check reads the port from the variable.
ENV TETHER_LISTEN=0.0.0.0:18789 TETHER_METRICS_HOST=0.0.0.0 TETHER_METRICS_PORT=9090
EXPOSE 18789 9090
# bash's /dev/tcp: the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${TETHER_METRICS_PORT} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# Exec form: the edge is PID 1 and gets SIGTERM itself, which starts its drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ws_edge"]
