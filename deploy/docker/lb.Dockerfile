# nginx from Debian as the WebSocket load balancer in front of the edges. From the repository
# root:  docker build -f deploy/docker/lb.Dockerfile -t tether/lb .
# Arguments as for deploy/nginx/render.sh: LISTEN EDGE..., e.g.
#   0.0.0.0:8080 edge-1:18789 edge-2:18789
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tether
COPY deploy/nginx/nginx.conf.template deploy/nginx/render.sh deploy/nginx/lb-entrypoint.sh \
     /opt/tether-lb/
# Debian's own nginx.conf, default site and www-data user are not used: the rendered config
# runs as this unprivileged user with everything under a prefix in /tmp.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /lb-healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/opt/tether-lb/lb-entrypoint.sh"]
