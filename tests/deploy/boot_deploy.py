#!/usr/bin/python3
"""Boots each deploy/ configuration on loopback, as far as it can run without Docker or
Kubernetes (run by validate_deploy.sh).

For the Kubernetes manifests and for the compose file: starts the registry and the edges with
exactly the environment their manifests give them (image ENV defaults, literal values, the
example Secret / example files as their secret files), changing only addresses (127.0.0.1,
port 0) and the registry's address. Then checks that the edges attach (authenticated with the
configured edge secret), that every Kubernetes probe and every Docker HEALTHCHECK passes against
the live processes, that WebSockets pass through the load balancer image's entry point
(deploy/nginx/lb-entrypoint.sh) to a real edge, and that SIGTERM drains an edge in time, its
sockets closed with 1012 through the balancer.

Before an edge is booted with its registry address moved to loopback, it is started once with
the configured TETHER_REGISTRY, which ws_edge must accept (it checks the value only after its
flags parsed). Kubernetes: one registry pod stands for the replicas; it starts on an empty Redis,
so it recovers (/readyz 503) and the edge must attach to it meanwhile. Compose: every registry
replica on one redis-server; each edge gets the replicas its TETHER_REGISTRY lists, in order,
and must attach to the first; a replica that recovers must end on its edges' resync
(TETHER_RECOVERY_EDGES); then the first replica is stopped and its edges must re-attach to the
next replica they list.

  boot_deploy.py SRC_ROOT BIN_ROOT WORK_DIR
"""
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import check_deploy as cd

FAILS = []


def fail(where, msg):
    FAILS.append(f"{where}: {msg}")
    print(f"FAIL {where}: {msg}", flush=True)


def ok(where, msg):
    print(f"ok   {where}: {msg}", flush=True)


def eventually(fn, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    return fn()


def http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


# As root (CI, Bazel's sandbox) nginx would hand its workers to `nobody` and chown its temp
# dirs to it, which a sandbox without that uid refuses. The images run nginx as a plain user,
# where `user` does not apply; here the workers stay root instead.
AS_ROOT = ["--user", "root"] if os.geteuid() == 0 else []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process logging to a file."""

    def __init__(self, name, argv, env, work):
        self.name, self.log = name, os.path.join(work, f"{name}.log")
        self.p = subprocess.Popen(argv, env=env, stdout=open(self.log, "w"),
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def text(self):
        return open(self.log).read()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals the process; returns (exit code, seconds it took), or (None, timeout)."""
        if self.p.poll() is not None:
            return self.p.returncode, 0.0
        start = time.time()
        self.p.send_signal(sig)
        try:
            return self.p.wait(timeout), time.time() - start
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None, timeout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(name, d, env, work):
    """Starts redis-server for a registry booted from a config; returns (Proc, store URL)."""
    port = free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", d,
            "--save", "", "--appendonly", "no"]
    password_file = env.get("TETHER_REDIS_PASSWORD_FILE")
    password = open(password_file).read().strip() if password_file else ""
    if password:
        argv += ["--requirepass", password]
    proc = Proc(f"{name}-redis", argv, {"PATH": "/usr/bin:/bin"}, work)

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                return c.recv(64) != b""
        except OSError:
            return False
    if not eventually(up):
        fail(name, f"redis-server did not start:\n{proc.text()}")
    return proc, f"redis://127.0.0.1:{port}"


ADDRESS_FLAGS = ("listen", "edge_listen", "metrics_host", "metrics_port", "registry", "port_file")


class Booted:
    """One registry or edge started from a deploy config.

    registry: for an edge, the booted registry replicas its TETHER_REGISTRY becomes (a Booted or
    a list of them, in order: the edge uses the first that answers). store: for a registry, a
    redis:// URL to use instead of starting a redis-server of its own (replicas share one)."""

    def __init__(self, cfg, bin_root, work, name, registry=None, store=None):
        self.cfg, self.name = cfg, name
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        env, args = dict(cfg["env"]), []
        # Address flags given as arguments move into the environment, so the rewrite below
        # covers them too; every other argument is passed as the manifest has it.
        for a in cfg["args"]:
            flag, eq, value = a[2:].partition("=")
            if a.startswith("--") and eq and flag in ADDRESS_FLAGS:
                env[f"TETHER_{flag.upper()}"] = value
            else:
                args.append(a)
        # Secret files as the Secret / bind mount would provide them.
        for k, v in list(env.items()):
            if k.endswith("_FILE") and v in cfg["files"]:
                path = os.path.join(d, os.path.basename(v))
                with open(path, "w") as f:
                    f.write(cfg["files"][v])
                os.chmod(path, 0o400)
                env[k] = path
        # Only the addresses change: loopback, any free port.
        env.update(TETHER_LISTEN="127.0.0.1:0", TETHER_PORT_FILE=os.path.join(d, "port"),
                   TETHER_METRICS_HOST="127.0.0.1")
        if "TETHER_EDGE_LISTEN" in env:
            env["TETHER_EDGE_LISTEN"] = "127.0.0.1:0"
        if cd.as_int(env.get("TETHER_METRICS_PORT"), -1) >= 0:
            env["TETHER_METRICS_PORT"] = "0"
        argv = [os.path.join(bin_root, cd.BINARIES[cfg["kind"]]), *args]
        if registry:
            if cfg["kind"] == "edge":
                self.preflight(argv, env, d, work)
            replicas = registry if isinstance(registry, list) else [registry]
            env["TETHER_REGISTRY"] = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
        self.redis, self.store = None, None
        if env.get("TETHER_STORE", "").startswith("redis://"):
            if store:
                env["TETHER_STORE"] = store
            else:
                # A real redis-server on loopback stands where the manifest's Redis would be,
                # with the password the example Secret gives, if any.
                self.redis, env["TETHER_STORE"] = start_redis(name, d, env, work)
            self.store = env["TETHER_STORE"]
        self.proc = Proc(name, argv, cd.clean_env(env), work)
        port_file = env["TETHER_PORT_FILE"]

        def port():
            return os.path.exists(port_file) and open(port_file).read().strip()
        eventually(lambda: port() or self.proc.p.poll() is not None)
        self.port = int(port()) if port() else None
        m = re.search(r"metrics on http://127.0.0.1:(\d+)/", self.proc.text())
        self.metrics = int(m.group(1)) if m else None
        if not self.port:
            fail(name, f"did not start:\n{self.proc.text()}")

    def preflight(self, argv, env, d, work):
        """ws_edge checks its --registry value only after the flags parsed (the static dry run's
        --version stops before that; the boot rewrites it): start the edge once with the
        configuration's own value, which must get as far as listening."""
        value = env.get("TETHER_REGISTRY")
        port_file = os.path.join(d, "preflight-port")
        p = Proc(f"{self.name}-preflight", argv,
                 cd.clean_env(dict(env, TETHER_PORT_FILE=port_file)), work)
        eventually(lambda: os.path.exists(port_file) or p.p.poll() is not None)
        if os.path.exists(port_file):
            ok(self.name, f"ws_edge accepts the configured TETHER_REGISTRY {value}")
        else:
            fail(self.name, f"ws_edge does not start with the configured TETHER_REGISTRY {value} "
                            f"(exit {p.p.poll()}):\n{p.text().strip()}")
        p.stop(signal.SIGKILL)

    def attached(self, edge_id):
        """Whether this registry's log shows that edge attaching to it."""
        return re.search(rf"event=edge_attached edge_id={re.escape(edge_id)}( |$)",
                         self.proc.text(), re.M) is not None

    def actual_port(self, container_port):
        """Where a containerPort of the manifest ended up on loopback."""
        if container_port == cd.port_of(self.cfg["env"].get("TETHER_LISTEN")):
            return self.port
        if str(container_port) == str(self.cfg["env"].get("TETHER_METRICS_PORT")):
            return self.metrics
        return None

    def healthcheck_env(self, bin_root):
        """The variables a Docker HEALTHCHECK reads, pointed at the live process."""
        probe_dir = os.path.join(bin_root, "deploy/health")
        return {"PATH": f"{probe_dir}:/usr/bin:/bin", "TETHER_LISTEN": f"127.0.0.1:{self.port}",
                "TETHER_METRICS_PORT": str(self.metrics)}


def run_healthcheck(where, img, env, replace=None):
    argv = [replace(a) if replace else a for a in img["healthcheck"]]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    if r.returncode == 0:
        ok(where, f"Docker HEALTHCHECK of {os.path.basename(img['path'])} passes")
    else:
        fail(where, f"Docker HEALTHCHECK {argv} exited {r.returncode}: {r.stderr.strip()}")


def run_k8s_probes(b, bin_root, probes=("startupProbe", "readinessProbe", "livenessProbe"),
                   wait=10):
    """The container's probes against the live process; an HTTP probe may take `wait` s to pass."""
    c = b.cfg["container"]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe in probes:
        p = c.get(probe)
        if not p:
            continue
        how = next(h for h in ("grpc", "httpGet", "tcpSocket") if h in p)
        port = b.actual_port(ports.get(p[how]["port"], p[how]["port"]))
        if how == "grpc":
            probe_bin = os.path.join(bin_root, "deploy/health/grpc_health_probe")
            good = subprocess.run([probe_bin, f"--addr=127.0.0.1:{port}"],
                                  capture_output=True).returncode == 0
        elif how == "httpGet":
            good = eventually(lambda: http_status(port, p[how]["path"]) == 200, wait)
        else:
            good = socket.create_connection(("127.0.0.1", port), timeout=2) is not None
        (ok if good else fail)(b.name, f"{probe} {how} on port {port} "
                                        f"{'passes' if good else 'FAILS'}")


class Conn:
    """A client socket and the bytes read past what was consumed."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.pending = b""

    def recv(self, n):
        return self.sock.recv(n)

    def sendall(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


def ws_open(port):
    """A WebSocket upgrade through `port`; returns (status line, connection, first frame)."""
    s = Conn(port)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nX-Forwarded-For: 203.0.113.9\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return buf.decode(errors="replace") or "no response", s, None
        buf += chunk
    head, _, s.pending = buf.partition(b"\r\n\r\n")
    _, payload = ws_frame(s)
    return head.decode().splitlines()[0], s, payload.decode(errors="replace")


def ws_frame(s):
    """One unmasked server frame: (opcode, payload)."""
    def need(n):
        while len(s.pending) < n:
            chunk = s.recv(4096)
            if not chunk:
                raise EOFError
            s.pending += chunk
    need(2)
    op, n, off = s.pending[0] & 0x0F, s.pending[1] & 0x7F, 2
    if n == 126:
        need(4)
        n, off = int.from_bytes(s.pending[2:4], "big"), 4
    elif n == 127:
        need(10)
        n, off = int.from_bytes(s.pending[2:10], "big"), 10
    need(off + n)
    payload, s.pending = s.pending[off:off + n], s.pending[off + n:]
    return op, payload


def boot_k8s(src, bin_root, work, images):
    cfgs = cd.k8s_containers(os.path.join(src, "deploy/k8s"), images)
    reg_cfg = next(c for c in cfgs if c["kind"] == "registry")
    edge_cfg = next(c for c in cfgs if c["kind"] == "edge")
    # One registry pod stands for the replicas (boot_compose boots two on one Redis).
    reg = Booted(reg_cfg, bin_root, work, "k8s-registry")
    started = [reg]
    try:
        if not reg.port:
            return
        run_k8s_probes(reg, bin_root, ("startupProbe", "livenessProbe"))
        # Its Redis starts empty, so the registry recovers: not ready until its grace ends (the
        # manifest sets no TETHER_RECOVERY_EDGES), yet its edges must attach meanwhile, which is
        # why they use a Service that publishes not-ready addresses (check_deploy.py).
        recovering = "event=recovery_started" in reg.proc.text()
        if recovering:
            status = http_status(reg.metrics, "/readyz")
            (ok if status == 503 else fail)(
                "k8s-registry", f"recovering after a start on an empty Redis: /readyz {status}")
        edge = Booted(edge_cfg, bin_root, work, "k8s-edge", registry=reg)
        started.append(edge)
        if not edge.port:
            return
        if eventually(lambda: http_status(edge.metrics, "/readyz") == 200):
            ok("k8s-edge", "attached to the registry with the manifests' edge secret (/readyz 200)"
                           + (", while the registry was recovering (not ready)"
                              if recovering and "event=recovery_ended" not in reg.proc.text()
                              else ""))
        else:
            fail("k8s-edge", f"never ready:\n{edge.proc.text()}")
        grace = cd.as_int(reg_cfg["env"].get("TETHER_RECOVERY_GRACE_MS"), None)
        if grace is None:
            grace = cd.as_int(cd.Binary(os.path.join(bin_root, cd.BINARIES["registry"]),
                                        "registry").defaults.get("recovery_grace_ms"), 10000)
        run_k8s_probes(reg, bin_root, ("readinessProbe",), wait=grace / 1000 + 5)
        run_k8s_probes(edge, bin_root)
        run_healthcheck("k8s-registry", images["registry"], reg.healthcheck_env(bin_root))
        run_healthcheck("k8s-edge", images["edge"], edge.healthcheck_env(bin_root))
        # SIGTERM (after the preStop sleep) must finish inside the grace period.
        pod = edge_cfg["deployment"]["spec"]["template"]["spec"]
        budget = pod.get("terminationGracePeriodSeconds", 30) - int(
            edge_cfg["container"]["lifecycle"]["preStop"]["exec"]["command"][1])
        rc, took = edge.proc.stop(timeout=budget)
        (ok if rc == 0 else fail)("k8s-edge", f"SIGTERM: exit {rc} after {took:.1f} s "
                                              f"(budget after preStop: {budget} s)")
    finally:
        for b in reversed(started):
            b.proc.stop()
            if b.redis:
                b.redis.stop()


def boot_compose(src, bin_root, work, images):
    _, svcs = cd.compose_services(os.path.join(src, "deploy/compose/compose.yaml"), images)
    reg_names = [n for n, c in svcs.items() if c["kind"] == "registry"]
    edge_names = [n for n, c in svcs.items() if c["kind"] == "edge"]
    lb_cfg = next(c for c in svcs.values() if c["kind"] == "lb")
    started, lb, regs = [], None, {}
    try:
        # Every replica, in the compose file's order, on one redis-server (the first one's).
        for n in reg_names:
            first = regs[reg_names[0]] if regs else None
            regs[n] = Booted(svcs[n], bin_root, work, f"compose-{n}",
                             store=first.store if first else None)
            started.append(regs[n])
            if not regs[n].port:
                return
        for n, r in regs.items():
            run_healthcheck(f"compose-{n}", images["registry"], r.healthcheck_env(bin_root))
        if len(regs) > 1 and len({r.store for r in regs.values()}) == 1:
            ok("compose", f"{len(regs)} registry replicas ({', '.join(regs)}) on one Redis")

        # Each edge gets the replicas its TETHER_REGISTRY lists (by service name or fixed
        # address), in its order, as loopback addresses.
        edges, lists, ids = {}, {}, {}
        for n in edge_names:
            targets = cd.compose_registry_targets(svcs, svcs[n])
            lists[n] = [r for _, r, _ in targets]
            ids[n] = svcs[n]["env"].get("TETHER_EDGE_ID", n)
            if None in lists[n]:
                fail(f"compose-{n}", f"TETHER_REGISTRY {svcs[n]['env'].get('TETHER_REGISTRY')} "
                                     "names something that is no registry (see check_deploy.py)")
                return
            edges[n] = Booted(svcs[n], bin_root, work, f"compose-{n}",
                              registry=[regs[r] for r in lists[n]])
            started.append(edges[n])
            if not edges[n].port:
                return
        for n, e in edges.items():
            if eventually(lambda: http_status(e.metrics, "/readyz") == 200):
                ok(f"compose-{n}", "attached to the registry with the env file's edge secret")
            else:
                fail(f"compose-{n}", f"never ready:\n{e.proc.text()}")
            run_healthcheck(f"compose-{n}", images["edge"], e.healthcheck_env(bin_root))
        # An edge uses the first replica it lists that answers: with all of them up, that one.
        for n in edges:
            on = [r for r, b in regs.items() if b.attached(ids[n])]
            (ok if on == lists[n][:1] else fail)(
                f"compose-{n}", f"attached to {', '.join(on) or 'no replica'} (it lists "
                                f"{', '.join(lists[n])})")
        # Recovery is per replica: a replica that started on the empty Redis must end it once
        # its own edges resynced (TETHER_RECOVERY_EDGES), not wait out the grace.
        for n, r in regs.items():
            if "event=recovery_started" not in r.proc.text():
                continue
            ended = eventually(lambda: re.search(r"event=recovery_ended (.*)", r.proc.text()), 5)
            expected = ended and "expected edges resynced" in ended.group(1)
            (ok if expected else fail)(
                f"compose-{n}", "recovery after the start on an empty Redis "
                + (f"ended when its edges resynced ({ended.group(1)})" if expected else
                   f"did not end on its edges' resync: {ended.group(0) if ended else 'still on'} "
                   f"(TETHER_RECOVERY_EDGES {svcs[n]['env'].get('TETHER_RECOVERY_EDGES')})"))
        # Failover: stop the first replica; each edge on it moves to the next replica it lists
        # and is ready again (the rest of the boot runs on the remaining replicas).
        if len(regs) > 1:
            gone = reg_names[0]
            rc, took = regs[gone].proc.stop()
            (ok if rc == 0 else fail)(f"compose-{gone}", f"SIGTERM: exit {rc} after {took:.1f} s")
            for n, e in edges.items():
                if lists[n][0] != gone:
                    continue
                nxt = lists[n][1] if len(lists[n]) > 1 else None
                moved = nxt and eventually(lambda: regs[nxt].attached(ids[n]) and
                                           http_status(e.metrics, "/readyz") == 200, 10)
                (ok if moved else fail)(
                    f"compose-{n}", f"{gone} stopped: " + (
                        f"re-attached to {nxt}, the next replica it lists (/readyz 200)"
                        if moved else f"did not fail over to {nxt or 'another replica'}:\n"
                                      f"{e.proc.text()}"))

        # The balancer, started by the image's own entry point with the compose arguments,
        # with the addresses mapped onto the booted edges.
        lb_port = free_port()
        args = [f"127.0.0.1:{lb_port}"] + [
            f"127.0.0.1:{edges[a.split(':')[0]].port}" for a in lb_cfg["args"][1:]]
        entry = os.path.join(src, "deploy/nginx/lb-entrypoint.sh")
        lb = Proc("compose-lb", [entry, *AS_ROOT, *args], {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": work}, work)
        if eventually(lambda: http_status(lb_port, "/lb-healthz") == 200):
            ok("compose-lb", f"nginx up via lb-entrypoint.sh on 127.0.0.1:{lb_port}")
        else:
            fail("compose-lb", f"nginx did not come up:\n{lb.text()}")
            return
        internal = cd.port_of(lb_cfg["args"][0])
        run_healthcheck("compose-lb", images["lb"], {"PATH": "/usr/bin:/bin"},
                        replace=lambda a: a.replace(f"/{internal}", f"/{lb_port}"))

        sockets = []
        for _ in range(len(edges)):  # least_conn: one socket on each edge
            status, s, first = ws_open(lb_port)
            sockets.append(s)
            if " 101 " in status and first and '"connect.challenge"' in first:
                ok("compose-lb", f"WebSocket through nginx: {status}; then connect.challenge")
            else:
                fail("compose-lb", f"WebSocket through nginx: {status!r}, first frame {first!r}")
        # Drain: SIGTERM every edge; each open socket must be closed with 1012 through nginx.
        drain = {n: cd.as_int(svcs[n]["env"].get("TETHER_DRAIN_TIMEOUT_MS"), 5000) for n in edges}
        for e in edges.values():
            e.proc.p.send_signal(signal.SIGTERM)
        for s in sockets:
            try:
                op, payload = ws_frame(s)
                while op != 0x8:
                    op, payload = ws_frame(s)
                code = int.from_bytes(payload[:2], "big")
            except (EOFError, OSError) as e:
                code = f"no close frame ({e})"
            (ok if code == 1012 else fail)("compose-lb",
                                           f"draining edge closed a socket with {code}")
            s.close()
        for n, e in edges.items():
            rc, took = e.proc.stop(timeout=drain[n] / 1000 + 5)
            (ok if rc == 0 else fail)(f"compose-{n}", f"SIGTERM: exit {rc} after {took:.1f} s")
    finally:
        if lb:
            lb.stop()
        for b in reversed(started):  # the replicas sharing a Redis stop before its owner
            b.proc.stop()
            if b.redis:
                b.redis.stop()


def nginx_t(src, work):
    """`nginx -t` on rendered configs, in a prefix of their own, as render.sh documents."""
    for flags in ([], ["--foreground", "--stdio-logs"]):
        prefix = os.path.join(work, "nginx-t" + "".join(flags).replace("-", "_"))
        os.makedirs(prefix)
        conf = os.path.join(prefix, "nginx.conf")
        subprocess.run([os.path.join(src, "deploy/nginx/render.sh"), *flags, *AS_ROOT,
                        "--out", conf,
                        str(free_port()), "18789", "localhost:18790"], check=True)
        r = subprocess.run(["nginx", "-t", "-p", prefix, "-c", conf, "-e", "stderr"],
                           capture_output=True, text=True,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        where = " ".join(["nginx -t (render.sh", *flags]) + ")"
        if r.returncode == 0 and "test is successful" in r.stderr:
            ok(where, "test is successful")
        else:
            fail(where, r.stderr.strip())


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    src, bin_root, work = (os.path.abspath(a) for a in sys.argv[1:])
    images = cd.load_images(os.path.join(src, "deploy"))
    for fn in (nginx_t, boot_k8s, boot_compose):
        try:
            if fn is nginx_t:
                fn(src, work)
            else:
                fn(src, bin_root, work, images)
        except Exception as e:  # report and go on with the next configuration
            fail(fn.__name__, f"{type(e).__name__}: {e}")
    print(f"boot_deploy: {len(FAILS)} problem(s)")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
