#!/usr/bin/python3
"""Static checks of deploy/ against the real binaries (run by validate_deploy.sh).

Parses every YAML file, the Dockerfiles and the nginx template, and checks that the images,
ports, flags and TETHER_* variables they use are the ones the binaries define (read from their
--helpfull), that each container's flags parse (`binary ... --version` exits 0 only then), that
the pieces point at each other (Services, probes, secrets, the balancer's upstreams), and that
the runtime images install every Debian package the binaries link. One line per problem; exit 1
if there is any.

  check_deploy.py SRC_ROOT BIN_ROOT     (BIN_ROOT: the test's runfiles, or bazel-bin by hand)

Standard library plus python3-yaml (Debian) only. boot_deploy.py reuses the parsing below.
"""
import glob
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys

import yaml

ERRORS = []

# Variables the binaries read themselves, besides TETHER_<FLAG> (see their main.cc).
EXTRA_ENV = {
    "registry": {"TETHER_EDGE_SECRET"},
    "edge": {"TETHER_SHARED_TOKEN", "TETHER_EDGE_SECRET", "OPENCLAW_GATEWAY_TOKEN"},
}
SECRET_ENV = {"TETHER_SHARED_TOKEN", "TETHER_EDGE_SECRET", "OPENCLAW_GATEWAY_TOKEN"}
DEV_ONLY = ("dev_mode", "auto_approve", "auto_approve_loopback", "allow_no_token")
BINARIES = {"registry": "registry_service/server/registry_service", "edge": "ws_edge/ws_edge"}


def error(where, msg):
    ERRORS.append(f"{where}: {msg}")


# ---------------------------------------------------------------------------- binaries

class Binary:
    """A binary's flags and their defaults, from its --helpfull (Abseil's own flags left out)."""

    def __init__(self, path, kind):
        self.path, self.kind, self.name = path, kind, os.path.basename(path)
        out = subprocess.run([path, "--helpfull"], capture_output=True, text=True).stdout
        # "  Flags from FILE:" heads a section; "    --name (help); default: value;" is a flag,
        # its help possibly wrapped onto more lines.
        self.flags, self.defaults, text, section, name = set(), {}, {}, "", None
        for line in out.splitlines():
            if m := re.match(r"^  Flags from (\S+):$", line):
                section, name = m.group(1), None
            elif m := re.match(r"^    --(\w+) \(", line):
                name = None if re.match(r"(\./)?absl/", section) else m.group(1)
                if name:
                    self.flags.add(name)
                    text[name] = line
            elif name and line.startswith("      "):
                text[name] += " " + line.strip()
        for name, t in text.items():
            if m := re.search(r"; default: (.*);$", t):
                self.defaults[name] = m.group(1).strip('"')
        if not self.flags:
            error(path, "no flags found in --helpfull output")

    def knows_env(self, n):
        return n in EXTRA_ENV[self.kind] or (
            n.startswith("TETHER_") and n[len("TETHER_"):].lower() in self.flags)

    def check(self, where, args, env_names):
        for a in args:
            if a.startswith("--"):
                name = a[2:].split("=", 1)[0]
                if name not in self.flags and not (name[:2] == "no" and name[2:] in self.flags):
                    error(where, f"--{name} is not a flag of {self.name}")
        for n in env_names:
            # The binary silently ignores TETHER_* variables that name no flag: catch them here.
            if n.startswith("TETHER_") and not self.knows_env(n):
                error(where, f"{n} names no flag of {self.name}")

    def dry_run(self, where, args, env):
        """Abseil exits 0 on --version only when every flag and value parsed."""
        r = subprocess.run([self.path, *args, "--version"], env=clean_env(env),
                           capture_output=True, text=True)
        if r.returncode != 0:
            error(where, f"flags do not parse: {r.stderr.strip()}")


_OWNERS = {}


def _owner(path):
    """The Debian package that installed `path`, from dpkg's file lists (what `dpkg -S` reads)."""
    if not _OWNERS:
        for lst in glob.glob("/var/lib/dpkg/info/*.list"):
            pkg = os.path.basename(lst)[:-len(".list")].split(":")[0]
            for f in open(lst, errors="replace").read().split("\n"):
                if ".so" in f:
                    _OWNERS[f] = pkg
    # Debian 12 merged /lib into /usr/lib; dpkg knows each file under one of the two names.
    for c in (path, os.path.realpath(path)):
        for v in (c, re.sub(r"^/usr/lib/", "/lib/", c), re.sub(r"^/lib/", "/usr/lib/", c)):
            if v in _OWNERS:
                return _OWNERS[v]
    return None


def linked_packages(path):
    """The Debian packages owning the shared libraries `path` loads (per ldd)."""
    pkgs = set()
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"=> (/\S+)", out):
        if pkg := _owner(lib):
            pkgs.add(pkg)
        else:
            error(path, f"no Debian package owns {lib}")
    return pkgs


# ---------------------------------------------------------------------------- parsing

def as_int(v, default=0):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default  # the dry run reports the bad value


def port_of(addr):
    try:
        return int(str(addr).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def redis_host(url):
    """The host of a redis://HOST:PORT[/DB] store URL, or None."""
    m = re.match(r"redis://([^:/]+)", url or "")
    return m.group(1) if m else None


def registry_targets(value):
    """The entries of an edge's TETHER_REGISTRY (HOST:PORT, dns:///HOST:PORT, or a comma-separated
    list of them, possibly ipv4:-prefixed) as [(entry, host, port)]."""
    value = str(value or "").strip()
    if value.startswith("ipv4:"):
        value = value[len("ipv4:"):]
    out = []
    for entry in value.split(","):
        entry = entry.strip()
        host, _, port = (entry[len("dns:///"):] if entry.startswith("dns:///") else entry) \
            .rpartition(":")
        out.append((entry, host, as_int(port, None)))
    return out


def scaled(v, total, round_up):
    """A Deployment/PDB count: an int, or "N%" of total (rounded as Kubernetes does)."""
    if isinstance(v, str) and v.endswith("%"):
        n = as_int(v[:-1]) * total
        return -(-n // 100) if round_up else n // 100
    return as_int(v)


def selects(selector, labels):
    """Whether a Service/PDB selector (a label map) picks pods with these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def image_kind(image):
    """tether/registry[:tag], or some.registry/tether/registry:tag -> 'registry'."""
    m = re.search(r"(?:^|/)tether/(registry|edge|lb)(?::[\w.-]+)?$", image or "")
    return m.group(1) if m else None


def clean_env(env):
    return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **{k: str(v) for k, v in env.items()}}


def exec_form(rest):
    """A Dockerfile JSON exec form as a list; a shell form as /bin/sh -c."""
    try:
        v = json.loads(rest)
        if isinstance(v, list):
            return v
    except json.JSONDecodeError:
        pass
    return ["/bin/sh", "-c", rest]


def parse_dockerfile(path):
    """Stages as lists of (KEYWORD, text); continuation lines joined, comments dropped."""
    stages = []
    for line in re.sub(r"\\\n", " ", open(path).read()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            kw, _, rest = line.partition(" ")
            if kw.upper() == "FROM":
                stages.append([])
            stages[-1].append((kw.upper(), rest.strip()))
    return stages


def dockerfile_image(path):
    """What the final stage promises: env defaults, ports, user, health check, entry point."""
    stages = parse_dockerfile(path)
    img = {"path": path, "stages": stages, "env": {}, "expose": [], "user": None,
           "healthcheck": None, "entrypoint": [], "apt": set()}
    for kw, rest in stages[-1]:
        if kw == "FROM":
            img["from"] = rest.split()[0]
        elif kw == "ENV":
            img["env"].update(re.findall(r"(\w+)=(\S+)", rest))
        elif kw == "EXPOSE":
            img["expose"] += [int(p.split("/")[0]) for p in rest.split()]
        elif kw == "USER":
            img["user"] = rest
        elif kw == "HEALTHCHECK":
            img["healthcheck"] = exec_form(re.sub(r"^(--\S+\s+)*CMD\s+", "", rest))
        elif kw == "ENTRYPOINT":
            img["entrypoint"] = exec_form(rest)
        elif kw == "RUN" and "apt-get install" in rest:
            words = rest.split("apt-get install", 1)[1].split("&&")[0].split()
            img["apt"] |= {w for w in words if not w.startswith("-")}
    img["build_runs"] = " ".join(r for s in stages[:-1] for kw, r in s if kw == "RUN")
    return img


def load_images(deploy):
    return {k: dockerfile_image(os.path.join(deploy, "docker", f"{k}.Dockerfile"))
            for k in ("registry", "edge", "lb")}


def k8s_docs(k8s_dir):
    kust = yaml.safe_load(open(os.path.join(k8s_dir, "kustomization.yaml")))
    docs = {}
    for res in kust["resources"]:
        for d in yaml.safe_load_all(open(os.path.join(k8s_dir, res))):
            docs[(d["kind"], d["metadata"]["name"])] = d
    return kust, docs


def k8s_containers(k8s_dir, images):
    """Each Deployment container as a config: env (image defaults under the manifest's literal
    values), args, and the files its secret volumes provide (from the example Secret)."""
    _, docs = k8s_docs(k8s_dir)
    examples = {}
    for f in glob.glob(os.path.join(k8s_dir, "*.example.yaml")):
        for d in yaml.safe_load_all(open(f)):
            if d["kind"] == "Secret":
                examples[d["metadata"]["name"]] = d.get("stringData", {})
    out = []
    for (kind_, name), dep in docs.items():
        if kind_ != "Deployment":
            continue
        pod = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            kind = image_kind(c["image"])
            env = dict(images[kind]["env"]) if kind in images else {}
            env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            files = {}
            for m in c.get("volumeMounts", []):
                sec = volumes.get(m["name"], {}).get("secret")
                if sec:
                    data = examples.get(sec["secretName"], {})
                    items = sec.get("items") or [{"key": k, "path": k} for k in data]
                    for it in items:
                        files[os.path.join(m["mountPath"], it["path"])] = data.get(it["key"])
            out.append({"where": f"k8s Deployment {name} container {c['name']}", "kind": kind,
                        "env": env, "env_names": [e["name"] for e in c.get("env", [])],
                        "args": c.get("command", [])[1:] + c.get("args", []), "files": files,
                        "container": c, "deployment": dep, "literal_env": {
                            e["name"]: e["value"] for e in c.get("env", []) if "value" in e}})
    return out


def compose_services(path, images):
    """Each compose service as a config: env (image defaults, then env_file examples, then
    `environment`), args, and the files its bind mounts provide (from the .example files)."""
    base = os.path.dirname(path)
    c = yaml.safe_load(open(path))
    out = {}
    for name, s in c["services"].items():
        kind = image_kind(s.get("image"))
        env = dict(images[kind]["env"]) if kind in images else {}
        env_files = s.get("env_file", [])
        env_files = [env_files] if isinstance(env_files, str) else env_files
        for ef in env_files:
            example = os.path.join(base, ef + ".example")
            if os.path.exists(example):
                env.update(re.findall(r"^(\w+)=(.*)$", open(example).read(), re.M))
        literal = s.get("environment", {})
        if isinstance(literal, list):
            literal = dict(e.split("=", 1) for e in literal)
        literal = {k: str(v) for k, v in literal.items()}
        env.update(literal)
        files = {}
        for v in s.get("volumes", []):
            src, _, target = v.partition(":")
            target = target.split(":")[0]
            example = os.path.join(base, src + ".example")
            if src.startswith("./") and os.path.exists(example):
                files[target] = open(example).read()
        cmd = s.get("command", [])
        out[name] = {"where": f"compose service {name}", "kind": kind, "env": env,
                     "env_names": list(literal), "args": shlex.split(cmd) if isinstance(cmd, str)
                     else cmd, "files": files, "service": s, "env_files": env_files,
                     "literal_env": literal}
    return c, out


def compose_networks(s):
    """A compose service's networks as {name: options} (none listed: the project's default)."""
    nets = s.get("networks") or ["default"]
    return {n: {} for n in nets} if isinstance(nets, list) else \
        {n: (o or {}) for n, o in nets.items()}


def compose_depends(s):
    """depends_on as {service: condition} (the short list form means service_started)."""
    dep = s.get("depends_on") or {}
    if isinstance(dep, list):
        return {d: "service_started" for d in dep}
    return {d: (o or {}).get("condition", "service_started") for d, o in dep.items()}


def compose_ports(s):
    """A service's `ports` as [(host ip, host port or None, container port)]."""
    out = []
    for p in s.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", "0.0.0.0"), as_int(p.get("published"), None),
                        as_int(p.get("target"), None)))
            continue
        parts = str(p).split("/")[0].split(":")
        out.append((":".join(parts[:-2]) or "0.0.0.0",
                    as_int(parts[-2], None) if len(parts) > 1 else None, as_int(parts[-1], None)))
    return out


def compose_registry_targets(svcs, cfg):
    """The registries an edge's TETHER_REGISTRY lists, in its order, as [(entry, registry service
    or None, port)]. An entry names a registry service, or the fixed ipv4_address a registry has
    on a network the edge is on (a list in TETHER_REGISTRY takes IPv4 addresses only)."""
    edge_nets = compose_networks(cfg["service"])
    by_host = {}
    for n, c in svcs.items():
        if c["kind"] != "registry":
            continue
        for net, opts in compose_networks(c["service"]).items():
            if net in edge_nets:
                by_host[n] = n
                if opts.get("ipv4_address"):
                    by_host[str(opts["ipv4_address"])] = n
    return [(e, by_host.get(h), p)
            for e, h, p in registry_targets(cfg["env"].get("TETHER_REGISTRY"))]


# ---------------------------------------------------------------------------- checks

def check_dockerfile(img, kind, bins, bin_root):
    path = img["path"]
    if img["stages"][0][0][1].split()[0] != "debian:12" and len(img["stages"]) > 1:
        error(path, "the build stage must be debian:12")
    if img.get("from") != "debian:12-slim":
        error(path, f"the runtime stage is {img.get('from')}, not debian:12-slim")
    uid = (img["user"] or "").split(":")[0]
    if not uid.isdigit() or uid == "0":
        error(path, f"USER must be a numeric non-root uid, got {img['user']}")
    if not img["healthcheck"]:
        error(path, "no HEALTHCHECK")
    if not os.path.exists(path + ".dockerignore"):
        error(path, "no .dockerignore beside it")
    if kind not in bins:
        return
    b = bins[kind]
    runs = img["build_runs"]
    if "scripts/install_deps.sh" not in runs or "bazel build --jobs=2 -c opt" not in runs:
        error(path, "the build stage must run scripts/install_deps.sh and "
                    "`bazel build --jobs=2 -c opt`")
    linked = set()
    for pkg, name in re.findall(r"//([\w/]*):(\w+)", runs):
        built = os.path.join(bin_root, pkg, name)
        if not os.path.exists(built):
            error(path, f"builds //{pkg}:{name}: add it to the data of "
                        "//tests/deploy:validate_deploy")
            continue
        if f"bazel-bin/{pkg}/{name}" not in runs:
            error(path, f"//{pkg}:{name} is built but not copied out of bazel-bin")
        linked |= linked_packages(built)
    missing = linked - img["apt"] - {"libc6", "libgcc-s1"}
    if missing:
        error(path, f"the runtime stage lacks packages the binaries link: {sorted(missing)}")
    entry = os.path.basename(img["entrypoint"][0]) if img["entrypoint"] else None
    if entry != b.name:
        error(path, f"ENTRYPOINT runs {entry}, not {b.name}")
    b.check(path, img["entrypoint"][1:], img["env"])
    for var in ("TETHER_LISTEN", "TETHER_METRICS_PORT"):
        if var in img["env"] and port_of(f":{img['env'][var]}") not in img["expose"]:
            error(path, f"EXPOSE {img['expose']} lacks the {var} port ({img['env'][var]})")


def check_config(cfg, bins):
    """What every registry or edge container must satisfy, wherever it is declared."""
    where, kind = cfg["where"], cfg["kind"]
    if kind not in bins:
        return
    b = bins[kind]
    b.check(where, cfg["args"], cfg["env_names"])
    b.dry_run(where, cfg["args"], cfg["env"])
    names = {a[2:].split("=", 1)[0] for a in cfg["args"] if a.startswith("--")}
    names |= {n[len("TETHER_"):].lower() for n in cfg["env_names"] if n.startswith("TETHER_")}
    for bad in DEV_ONLY:
        if bad in names:
            error(where, f"{bad} is for development only")
    for k in SECRET_ENV & set(cfg["literal_env"]):
        error(where, f"{k} is given literally; use a Secret or an env file")
    if any(a.split("=")[0] in ("--shared_token", "--edge_secret") for a in cfg["args"]):
        error(where, "a secret must not be a command-line argument")
    for k, v in cfg["env"].items():
        if k.endswith("_FILE") and k.startswith("TETHER_") and v and v not in cfg["files"]:
            error(where, f"{k}={v} is not provided by a mounted Secret or file")
        elif k.endswith("_FILE") and v and cfg["files"].get(v) is None:
            error(where, f"{k}={v}: its key is missing from the example Secret")
    if kind == "registry" and not ("TETHER_API_TOKENS_FILE" in cfg["env"]):
        error(where, "the registry needs TETHER_API_TOKENS_FILE (its public API is authenticated)")
    if kind == "registry" and not cfg["env"].get("TETHER_STORE", "").startswith("redis://"):
        error(where, "the registry must keep its state in Redis (TETHER_STORE=redis://...): with "
                     "the memory store a restart locks out nodes that reconnect with device tokens")
    if not ({"TETHER_EDGE_SECRET", "TETHER_EDGE_SECRET_FILE"} & set(cfg["env"])):
        error(where, "no edge secret (TETHER_EDGE_SECRET or TETHER_EDGE_SECRET_FILE)")


def check_k8s(k8s_dir, bins, images):
    kust, docs = k8s_docs(k8s_dir)
    for f in glob.glob(os.path.join(k8s_dir, "*.yaml")):
        base = os.path.basename(f)
        if base not in kust["resources"] + ["kustomization.yaml"] and ".example." not in base:
            error(f, "not listed in kustomization.yaml resources")
    kust_images = {i["name"] for i in kust.get("images", [])}
    services = {n: d for (k, n), d in docs.items() if k == "Service"}
    pods_by_app = {}
    cfgs = k8s_containers(k8s_dir, images)
    # The registry's pods: their labels, container ports and listen port (for the Services below).
    registries = [(c["deployment"]["spec"]["template"]["metadata"]["labels"],
                   {p.get("name"): p["containerPort"] for p in c["container"].get("ports", [])},
                   port_of(c["env"].get("TETHER_LISTEN"))) for c in cfgs if c["kind"] == "registry"]

    def registry_port(svc, port):
        """For a Service and one of its ports: None if it reaches the registry's gRPC listener,
        else why not."""
        sel = svc["spec"].get("selector") or {}
        reg = next((r for r in registries if selects(sel, r[0])), None)
        if reg is None:
            return "its selector does not pick the registry pods"
        sp = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
        if sp is None:
            return f"it has no port {port} (ports {[p['port'] for p in svc['spec']['ports']]})"
        target = sp.get("targetPort", sp["port"])
        if reg[1].get(target, target) != reg[2]:
            return f"port {port} goes to {target}, not the registry's TETHER_LISTEN port {reg[2]}"
        return None

    for cfg in cfgs:
        where, kind, c, dep = cfg["where"], cfg["kind"], cfg["container"], cfg["deployment"]
        if kind not in bins:
            error(where, f"image {c['image']} is neither tether/registry nor tether/edge")
            continue
        if c["image"].split(":")[0] not in kust_images:
            error(where, f"image {c['image']} is not in kustomization.yaml images")
        check_config(cfg, bins)
        pod = dep["spec"]["template"]
        if any(pod["metadata"]["labels"].get(k) != v
               for k, v in dep["spec"]["selector"]["matchLabels"].items()):
            error(where, "the Deployment's selector does not match its pod labels")
        if not pod["spec"].get("securityContext", {}).get("runAsNonRoot"):
            error(where, "the pod must set runAsNonRoot")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        pods_by_app[pod["metadata"]["labels"]["app.kubernetes.io/name"]] = ports
        env = cfg["env"]
        host = redis_host(env.get("TETHER_STORE", ""))
        if kind == "registry" and host and host not in services:
            error(where, f"TETHER_STORE names {host}, which is no Service in the manifests")
        if port_of(env.get("TETHER_LISTEN")) not in ports.values():
            error(where, f"no containerPort for TETHER_LISTEN {env.get('TETHER_LISTEN')}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            p = c.get(probe) or {}
            for how in ("grpc", "tcpSocket", "httpGet"):
                if how not in p:
                    continue
                port = ports.get(p[how]["port"], p[how]["port"])
                if port not in ports.values():
                    error(where, f"{probe} uses port {p[how]['port']}, not a container port")
                if how == "httpGet" and str(port) != env.get("TETHER_METRICS_PORT"):
                    error(where, f"{probe} is HTTP on {port}, but TETHER_METRICS_PORT is "
                                 f"{env.get('TETHER_METRICS_PORT')} (--metrics_port)")
                if how == "httpGet" and env.get("TETHER_METRICS_HOST", "127.0.0.1") in \
                        ("127.0.0.1", "localhost", "::1"):
                    error(where, f"{probe}: the kubelet cannot reach a metrics port on loopback")
        if kind == "registry":
            check_registry_replicas(where, dep, env, docs)
            if "grpc" not in (c.get("livenessProbe") or {}):
                error(where, "the registry's liveness must be the gRPC health check")
        if kind == "edge":
            check_edge_shutdown(where, pod, c, env, bins["edge"])
            for entry, host, port in registry_targets(env.get("TETHER_REGISTRY")):
                svc = services.get(host)
                why = registry_port(svc, port) if svc else "no Service has that name"
                if why:
                    error(where, f"TETHER_REGISTRY {env.get('TETHER_REGISTRY')}: {entry} is no "
                                 f"Service port of the registry: {why}")
                elif not svc["spec"].get("publishNotReadyAddresses"):
                    error(where, f"TETHER_REGISTRY {entry}: Service {host} must set "
                                 "publishNotReadyAddresses: true: a replica that started on an "
                                 "empty Redis is not ready until edges resynced through it, so "
                                 "through a readiness-gated Service no edge could reach it")

    # Workloads that are not ours (Redis) count for Services too, and must keep their data.
    for (k, n), d in docs.items():
        if k != "StatefulSet":
            continue
        pod = d["spec"]["template"]
        ports = {p.get("name"): p["containerPort"]
                 for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        pods_by_app[pod["metadata"]["labels"]["app.kubernetes.io/name"]] = ports
        if not pod["spec"].get("securityContext", {}).get("runAsNonRoot"):
            error(f"k8s StatefulSet {n}", "the pod must set runAsNonRoot")
        if not d["spec"].get("volumeClaimTemplates"):
            error(f"k8s StatefulSet {n}", "no volumeClaimTemplates: its data would not survive")
    for name, svc in services.items():
        ports = pods_by_app.get(svc["spec"]["selector"].get("app.kubernetes.io/name"))
        if ports is None:
            error(f"k8s Service {name}", "its selector matches no Deployment or StatefulSet")
            continue
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            if ports.get(t, t) not in ports.values():
                error(f"k8s Service {name}", f"targetPort {t} is not a container port")

    if not any(d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == "tether-edge"
               for (k, _), d in docs.items() if k == "PodDisruptionBudget"):
        error("k8s", "no PodDisruptionBudget covers the edges")
    # Callers must not reach a replica that is recovering or stopping: they need a Service that
    # lists ready replicas only (the edges' Service lists every replica).
    if registries and not any(
            not svc["spec"].get("publishNotReadyAddresses") and
            registry_port(svc, registries[0][2]) is None for svc in services.values()):
        error("k8s", "no readiness-gated Service (without publishNotReadyAddresses) reaches the "
                     "registry's gRPC port: callers need one that leaves out replicas that are "
                     "recovering or stopping")
    for (k, n), ing in docs.items():
        if k != "Ingress":
            continue
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                s = path["backend"]["service"]
                svc = services.get(s["name"])
                port = s["port"].get("name", s["port"].get("number"))
                valid = [p.get("name") for p in svc["spec"]["ports"]] + \
                        [p["port"] for p in svc["spec"]["ports"]] if svc else []
                if port not in valid:
                    error(f"k8s Ingress {n}", f"backend {s} is no Service port")
        ann = ing["metadata"].get("annotations", {})
        for a in ("proxy-read-timeout", "proxy-send-timeout"):
            check_idle_timeout(f"k8s Ingress {n} {a}",
                               as_int(ann.get(f"nginx.ingress.kubernetes.io/{a}", "60")),
                               bins["edge"])
        if ann.get("nginx.ingress.kubernetes.io/proxy-buffering") != "off":
            error(f"k8s Ingress {n}", "proxy buffering must be off")


def check_registry_replicas(where, dep, env, docs):
    """Replicas on one Redis: at least two, replaced one by one, never all evicted together."""
    spec = dep["spec"]
    replicas = spec.get("replicas", 1)
    if redis_host(env.get("TETHER_STORE")) and replicas < 2:
        error(where, f"{replicas} registry replica(s): run at least 2 on the one Redis, so edges "
                     "and callers have another to fail over to (registry_service/store/README.md, "
                     "Replicas)")
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        error(where, f"strategy {strategy.get('type')}: use RollingUpdate, so a rollout replaces "
                     "the replicas one at a time instead of stopping them all together")
    else:
        ru = strategy.get("rollingUpdate") or {}
        down = scaled(ru.get("maxUnavailable", "25%"), replicas, round_up=False)
        if down >= replicas:
            error(where, f"rollingUpdate maxUnavailable {ru.get('maxUnavailable')} lets a rollout "
                         f"stop all {replicas} replicas at once")
    labels = spec["template"]["metadata"]["labels"]
    pdbs = [d for (k, _), d in docs.items() if k == "PodDisruptionBudget"
            and selects(d["spec"]["selector"].get("matchLabels"), labels)]
    if not pdbs:
        error(where, "no PodDisruptionBudget covers the registry: a node drain could evict every "
                     "replica at once")
    for d in pdbs:
        name, ps = d["metadata"]["name"], d["spec"]
        if "minAvailable" in ps:
            keep = scaled(ps["minAvailable"], replicas, round_up=True)
        else:
            keep = replicas - scaled(ps.get("maxUnavailable", 1), replicas, round_up=True)
        if keep < 1:
            error(f"k8s PodDisruptionBudget {name}", "lets evictions take every registry replica")
        elif keep >= replicas:
            error(f"k8s PodDisruptionBudget {name}", f"keeps {keep} of {replicas} registry "
                                                     "replicas: it blocks every node drain")


def check_edge_shutdown(where, pod, c, env, edge):
    """preStop wait + the edge's own drain must fit in the grace period."""
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    cmd = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command", [])
    pre = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else None
    if pre is None:
        error(where, "preStop must be [sleep, N] (endpoints drop before the drain starts)")
        pre = 0
    drain = as_int(env.get("TETHER_DRAIN_TIMEOUT_MS", edge.defaults["drain_timeout_ms"]))
    if pre + drain / 1000 + 5 > grace:
        error(where, f"terminationGracePeriodSeconds {grace} < preStop {pre} s + drain "
                     f"{drain / 1000} s + 5 s")
    if not c.get("readinessProbe"):
        error(where, "the edge needs a readinessProbe")


def check_idle_timeout(where, seconds, edge):
    """A proxy's idle timeout must comfortably exceed the edge's longest silence (tick, ping)."""
    quiet = max(int(edge.defaults["tick_interval_ms"]), int(edge.defaults["ping_interval_ms"]))
    if seconds * 1000 < 2 * quiet:
        error(where, f"{seconds} s is not more than twice the edge's {quiet} ms tick/ping")


def check_compose(path, bins, images):
    compose, svcs = compose_services(path, images)
    base = os.path.dirname(path)
    ignored = open(os.path.join(base, ".gitignore")).read().split()
    env_file_users = {}
    published, fixed, first_choice = {}, {}, {}
    for name, cfg in svcs.items():
        where, kind, s = cfg["where"], cfg["kind"], cfg["service"]
        if "build" in s:
            df = os.path.join(base, s["build"]["context"], s["build"]["dockerfile"])
            if not os.path.exists(df):
                error(where, f"{df} does not exist")
            elif os.path.basename(df) != f"{kind}.Dockerfile":
                error(where, f"image {s.get('image')} is built from {os.path.basename(df)}")
        for dep in s.get("depends_on", {}):
            if dep not in svcs:
                error(where, f"depends_on names no service: {dep}")
        for ef in cfg["env_files"]:
            env_file_users.setdefault(ef, []).append(kind)
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("./") and src[2:] not in ignored:
                error(where, f"{src} holds a secret but is not git-ignored")
        check_config(cfg, bins)
        for ip, host_port, _ in compose_ports(s):
            if host_port is not None:
                if (ip, host_port) in published:
                    error(where, f"publishes {ip}:{host_port}, as does "
                                 f"{published[(ip, host_port)]}")
                published[(ip, host_port)] = name
        if kind == "registry":
            host = redis_host(cfg["env"].get("TETHER_STORE", ""))
            if host and host not in svcs:
                error(where, f"TETHER_STORE names {host}, which is no compose service")
            elif host and compose_depends(s).get(host) != "service_healthy":
                error(where, f"the registry must depend on {host} with condition: service_healthy "
                             "to start after it")
            listen = port_of(cfg["env"].get("TETHER_LISTEN"))
            for _, host_port, target in compose_ports(s):
                if target != listen:
                    error(where, f"publishes container port {target}, but the registry listens on "
                                 f"{cfg['env'].get('TETHER_LISTEN')}")
            for net, opts in compose_networks(s).items():
                if opts.get("ipv4_address"):
                    check_fixed_address(where, str(opts["ipv4_address"]), net, compose, fixed)
        if kind == "edge":
            reg = cfg["env"].get("TETHER_REGISTRY", "")
            listed = []
            for entry, r, port in compose_registry_targets(svcs, cfg):
                if r is None:
                    error(where, f"TETHER_REGISTRY {reg}: {entry} is neither a registry service "
                                 "nor the ipv4_address of one on this edge's networks")
                    continue
                if port != port_of(svcs[r]["env"].get("TETHER_LISTEN")):
                    error(where, f"TETHER_REGISTRY {entry} ({r}), but {r} listens on "
                                 f"{svcs[r]['env'].get('TETHER_LISTEN')}")
                if r in listed:
                    error(where, f"TETHER_REGISTRY {reg} lists {r} twice")
                    continue
                listed.append(r)
                if compose_depends(s).get(r) != "service_healthy":
                    error(where, f"TETHER_REGISTRY lists {r} ({entry}), so the edge must depend on "
                                 f"it with condition: service_healthy")
            missing = [r for r, c in svcs.items() if c["kind"] == "registry" and r not in listed]
            if listed and missing:
                error(where, f"TETHER_REGISTRY {reg} lists {', '.join(listed)} but not "
                             f"{', '.join(missing)}: list every replica, so the edge can fail "
                             "over to any")
            if listed:
                first_choice.setdefault(listed[0], []).append(name)
            grace = re.match(r"(\d+)s$", str(s.get("stop_grace_period", "10s")))
            drain = as_int(cfg["env"].get("TETHER_DRAIN_TIMEOUT_MS",
                                          bins["edge"].defaults["drain_timeout_ms"]))
            if not grace or int(grace.group(1)) * 1000 <= drain:
                error(where, f"stop_grace_period must exceed the drain ({drain} ms)")
    for ef, kinds in env_file_users.items():
        if ef not in ignored:
            error(ef, "an env file with secrets must be git-ignored")
        example = os.path.join(base, ef + ".example")
        if not os.path.exists(example):
            error(ef, f"no {ef}.example beside it")
            continue
        for k, v in re.findall(r"^(\w+)=(.*)$", open(example).read(), re.M):
            if "CHANGE_ME" not in v:
                error(f"{ef}.example", f"{k} is not a CHANGE_ME placeholder")
            if not any(bins[kd].knows_env(k) for kd in kinds if kd in bins):
                error(f"{ef}.example", f"{k} is read by none of the services using it")
    regs = [n for n, c in svcs.items() if c["kind"] == "registry"]
    if len(regs) < 2:
        error(path, f"{len(regs)} registry service(s): run at least two replicas on the one Redis, "
                    "so each edge has another to fail over to (registry_service/store/README.md, "
                    "Replicas)")
    stores = sorted({svcs[r]["env"].get("TETHER_STORE", "") for r in regs})
    if len(stores) > 1:
        error(path, f"the registry replicas use different stores {stores}: replicas share their "
                    "state through one Redis")
    for r in regs:
        # Recovery after a start on an empty Redis is per replica: it ends once as many edges as
        # TETHER_RECOVERY_EDGES resynced through that replica (0: only the grace ends it).
        first = first_choice.get(r, [])
        have = as_int(svcs[r]["env"].get("TETHER_RECOVERY_EDGES",
                                         bins["registry"].defaults.get("recovery_edges", "0")))
        if have not in (0, len(first)):
            error(svcs[r]["where"], f"TETHER_RECOVERY_EDGES is {have}, but {len(first)} edge(s) "
                                    f"list this replica first ({', '.join(first) or 'none'}): "
                                    "recovery counts the edges that resync through it (0: wait "
                                    "the whole grace)")
    edges = [n for n, c in svcs.items() if c["kind"] == "edge"]
    lbs = [c for c in svcs.values() if c["kind"] == "lb"]
    if len(edges) < 2:
        error(path, "fewer than two edges")
    if len(lbs) != 1:
        error(path, "no load balancer (image tether/lb)")
    else:
        want = {f"{e}:{port_of(svcs[e]['env']['TETHER_LISTEN'])}" for e in edges}
        if set(lbs[0]["args"][1:]) != want:
            error(path, f"the lb balances {lbs[0]['args'][1:]}, but the edges are {sorted(want)}")


def check_fixed_address(where, addr, net, compose, fixed):
    """A compose ipv4_address must lie in its network's subnet, outside the range Docker hands
    out to other containers, and be nobody else's."""
    if addr in fixed:
        error(where, f"ipv4_address {addr} is also {fixed[addr]}'s")
    fixed[addr] = where
    configs = ((((compose.get("networks") or {}).get(net) or {}).get("ipam") or {})
               .get("config") or [])
    try:
        ip = ipaddress.ip_address(addr)
        for c in configs:
            if ip in ipaddress.ip_network(c["subnet"]):
                if c.get("ip_range") and ip in ipaddress.ip_network(c["ip_range"]):
                    error(where, f"ipv4_address {addr} is inside ip_range {c['ip_range']}: "
                                 "Docker may give it to another container first")
                return
    except (KeyError, ValueError) as e:
        error(where, f"ipv4_address {addr} on network {net}: {e}")
        return
    error(where, f"ipv4_address {addr}: network {net} declares no ipam subnet holding it "
                 "(Docker assigns fixed addresses only from a configured subnet)")


def check_secrets_are_placeholders(deploy):
    """Committed examples hold placeholders only."""
    for f in glob.glob(os.path.join(deploy, "**", "*example*"), recursive=True):
        if f.endswith(".yaml"):
            for d in yaml.safe_load_all(open(f)):
                for k, v in (d.get("stringData") or {}).items():
                    if "CHANGE_ME" not in v:
                        error(f, f"{k} is not a CHANGE_ME placeholder")
                if d.get("data"):
                    error(f, "use stringData with CHANGE_ME placeholders, not data")


def check_nginx_template(path, edge):
    tmpl = open(path).read()
    for d in ("proxy_read_timeout", "proxy_send_timeout"):
        m = re.search(rf"{d} (\d+)s;", tmpl)
        if not m:
            error(path, f"no {d}")
        else:
            check_idle_timeout(f"{path} {d}", int(m.group(1)), edge)
    for needed in ("proxy_set_header Upgrade $http_upgrade", "proxy_http_version 1.1",
                   "proxy_buffering off", "client_max_body_size",
                   "proxy_set_header X-Forwarded-For $remote_addr;"):
        if needed not in tmpl:
            error(path, f"missing `{needed}`")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, bin_root = (os.path.abspath(a) for a in sys.argv[1:])
    deploy = os.path.join(src, "deploy")
    for f in sorted(glob.glob(os.path.join(deploy, "**", "*.y*ml"), recursive=True)):
        try:
            list(yaml.safe_load_all(open(f)))
        except yaml.YAMLError as e:
            error(f, f"YAML does not parse: {e}")
    if not ERRORS:
        bins = {k: Binary(os.path.join(bin_root, p), k) for k, p in BINARIES.items()}
        images = load_images(deploy)
        checks = [(f"{k}.Dockerfile", check_dockerfile, (img, k, bins, bin_root))
                  for k, img in images.items()]
        checks += [
            ("k8s", check_k8s, (os.path.join(deploy, "k8s"), bins, images)),
            ("compose", check_compose,
             (os.path.join(deploy, "compose", "compose.yaml"), bins, images)),
            ("examples", check_secrets_are_placeholders, (deploy,)),
            ("nginx", check_nginx_template,
             (os.path.join(deploy, "nginx", "nginx.conf.template"), bins["edge"])),
        ]
        for name, fn, args in checks:
            try:
                fn(*args)
            except Exception as e:  # a malformed file: report it as a problem, go on
                error(name, f"could not be checked ({type(e).__name__}: {e})")
    for e in ERRORS:
        print(f"FAIL {e.replace(src + '/', '')}")
    print(f"check_deploy: {len(ERRORS)} problem(s)")
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
