#!/usr/bin/python3
"""deploy/manifests: static checks of deploy/container/ and deploy/k8s/,
which cannot run here (no container runtime, no cluster).

  check_manifests.py SRC_DIR [BUILD_DIR]

Every YAML file parses. Compose: files it mounts and builds from exist,
depends_on names services, the fixed addresses and ports in the programs'
configurations are the services' addresses and ports. Containerfile: the
stages compose builds exist, the runtime stage runs as a non-root user and
installs the package of every shared library the built programs and
plug-ins link directly (with BUILD_DIR; dpkg -S maps them). Kubernetes:
kustomization.yaml's resources and generator files exist (secrets/ is the
operator's: only its names are checked against make-acl.sh's), every
ConfigMap and Secret a pod mounts is generated, each "-c FILE" argument and
each secret path is a key of what is mounted there, metrics ports agree
with metrics_addr, Services select pods and name their ports, the HPA's
target and External metric exist (the adapter rule maps a metric the
worker exports), pods meet the restricted Pod Security Standard, and
k8s/redis.conf is deploy/redis/redis.conf. With BUILD_DIR, each program
configuration passes --check-config of the built program. Exit 77 when
python3-yaml is missing."""
import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    print("SKIP: python3-yaml is not installed (deploy/deps.sh installs it)")
    sys.exit(77)

src = sys.argv[1]
build = sys.argv[2] if len(sys.argv) > 2 else None
errors = []
checked = []


def fail(msg):
    errors.append(msg)


def ok(msg):
    checked.append(msg)


def conf_options(path):
    """name -> value of a buurtbus configuration file."""
    opts = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.match(r"([A-Za-z0-9_.-]+)\s*(?:=\s*|\s+)(.*)$", line)
            if m:
                opts[m.group(1)] = m.group(2).strip().strip('"')
    return opts


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


# ---- every YAML file parses -------------------------------------------------
docs = {}
for path in sorted(glob.glob(f"{src}/deploy/container/*.y*ml") + glob.glob(f"{src}/deploy/k8s/*.y*ml")):
    try:
        with open(path) as f:
            docs[path] = [d for d in yaml.safe_load_all(f) if d is not None]
        ok(f"parses: {os.path.relpath(path, src)}")
    except yaml.YAMLError as e:
        fail(f"{path}: {e}")

# ---- compose ----------------------------------------------------------------
cdir = f"{src}/deploy/container"
compose = docs.get(f"{cdir}/compose.yaml", [{}])[0]
services = compose.get("services", {})
stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", open(f"{cdir}/Containerfile").read(), re.M)
ips = {}
for name, s in services.items():
    b = s.get("build")
    if b:
        ctx = os.path.normpath(os.path.join(cdir, b["context"]))
        if not os.path.isfile(os.path.join(ctx, b["dockerfile"])):
            fail(f"compose {name}: no {b['dockerfile']} in {ctx}")
        if b.get("target") not in stages:
            fail(f"compose {name}: target {b.get('target')} is not a Containerfile stage {stages}")
    for v in s.get("volumes", []):
        source = v.split(":")[0]
        if source.startswith("."):
            if not os.path.exists(os.path.normpath(os.path.join(cdir, source))):
                fail(f"compose {name}: mounts {source}, which does not exist")
        elif source not in compose.get("volumes", {}):
            fail(f"compose {name}: volume {source} is not declared")
    deps = s.get("depends_on", [])
    for d in deps if isinstance(deps, list) else deps.keys():
        if d not in services:
            fail(f"compose {name}: depends on {d}, no such service")
    nets = s.get("networks", {})
    if isinstance(nets, dict):
        for n in nets.values():
            if n and "ipv4_address" in n:
                ips[name] = n["ipv4_address"]
    # -c FILE must be a file the service mounts.
    cmd = s.get("command", [])
    cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
    for i, a in enumerate(cmd):
        if a == "-c" and i + 1 < len(cmd) and cmd[i + 1].startswith("/etc/"):
            if not any(v.split(":")[1] == cmd[i + 1] for v in s.get("volumes", [])):
                fail(f"compose {name}: -c {cmd[i + 1]} is not mounted")
ok(f"compose: {len(services)} services, stages {stages}")

bconf = conf_options(f"{cdir}/broker.conf")
wconf = conf_options(f"{cdir}/worker.conf")
subnet = compose["networks"]["bus"]["ipam"]["config"][0]["subnet"]
prefix = subnet.rsplit(".", 1)[0] + "."
for n, ip in ips.items():
    if not ip.startswith(prefix):
        fail(f"compose {n}: {ip} is outside {subnet}")
for which, conf in (("broker", bconf), ("worker", wconf)):
    if conf["redis"] != f"{ips.get('redis')}:6379":
        fail(f"container {which}.conf: redis {conf['redis']}, the redis service is {ips.get('redis')}:6379")
    hc = " ".join(services[which]["healthcheck"]["test"])
    if f"/dev/tcp/127.0.0.1/{port_of(conf['metrics_addr'])}" not in hc:
        fail(f"compose {which}: healthcheck does not probe metrics_addr {conf['metrics_addr']}")
    if not conf["redis_password_file"].startswith("/run/buurtbus/secrets/"):
        fail(f"container {which}.conf: password file outside the secrets volume")
for k, v in wconf.items():
    if k.endswith(".url") and v.startswith("smtp://"):
        hostport = v[len("smtp://"):]
        mail_cmd = " ".join(services["mail"]["command"])
        if hostport != f"{ips.get('mail')}:2525" or "TCP-LISTEN:2525" not in mail_cmd:
            fail(f"container worker.conf: {k} {v} is not the mail service ({ips.get('mail')}:2525)")
prom = docs.get(f"{cdir}/prometheus.yml", [{}])[0]
ports = {c["job_name"]: c["dns_sd_configs"][0]["port"] for c in prom.get("scrape_configs", [])}
if ports.get("buurtbus-broker") != port_of(bconf["metrics_addr"]) or \
        ports.get("buurtbus-worker") != port_of(wconf["metrics_addr"]):
    fail(f"prometheus.yml scrapes {ports}, the configurations say {bconf['metrics_addr']}, {wconf['metrics_addr']}")
ok("compose: addresses, ports, mounts and healthchecks agree with the configurations")

# ---- Containerfile ----------------------------------------------------------
cf = open(f"{cdir}/Containerfile").read()
for m in re.finditer(r"^COPY\s+(?!--from)(\S+)\s", cf, re.M):
    if m.group(1) != "." and not os.path.exists(os.path.join(src, m.group(1))):
        fail(f"Containerfile: COPY {m.group(1)}: no such file")
runtime = cf.split("AS runtime", 1)[1].split("\nFROM ", 1)[0]
users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
if not users or users[-1].split(":")[0] in ("root", "0"):
    fail("Containerfile: the runtime stage does not end as a non-root USER")
runtime_pkgs = set(re.findall(r"\b(lib[a-z0-9.+-]+|ca-certificates|tzdata)\b",
                              runtime.split("apt-get install", 1)[1].split("rm -rf", 1)[0]))
if build:
    progs = [f"{build}/broker/buurtbus-broker", f"{build}/workers/buurtbus-worker",
             f"{build}/broker/ctl/buurtbusctl"] + glob.glob(f"{build}/workers/plugins-out/bb-channel-*.so")
    base = {"libc6", "libgcc-s1", "zlib1g"}
    needed = set()
    for p in progs:
        if not os.path.exists(p):
            continue
        out = subprocess.run(["objdump", "-p", p], capture_output=True, text=True).stdout
        needed.update(re.findall(r"NEEDED\s+(\S+)", out))
    # A sanitizer build links its runtimes; the image is built without them.
    needed = {lib for lib in needed if not re.match(r"lib(asan|ubsan|tsan|lsan)\.so", lib)}
    for lib in sorted(needed):
        r = subprocess.run(["dpkg", "-S", f"*/{lib}"], capture_output=True, text=True)
        pkgs = {line.split(":")[0] for line in r.stdout.splitlines() if "-dev" not in line.split(":")[0]
                and "i386" not in line and "lib32" not in line and "libx32" not in line}
        if not pkgs:
            fail(f"Containerfile: cannot tell which package has {lib}")
        elif not pkgs & (runtime_pkgs | base):
            fail(f"Containerfile: runtime stage lacks {'/'.join(sorted(pkgs))} ({lib})")
    ok(f"Containerfile: runtime packages cover the {len(needed)} libraries {len(progs)} built files link")

# ---- Kubernetes -------------------------------------------------------------
kdir = f"{src}/deploy/k8s"
kust = docs[f"{kdir}/kustomization.yaml"][0]
objects = []
for r in kust["resources"]:
    if f"{kdir}/{r}" not in docs:
        fail(f"kustomization: resource {r} missing")
        continue
    objects += docs[f"{kdir}/{r}"]
generated = {}  # name -> (kind, {key: file})
for kind, gens in (("ConfigMap", kust.get("configMapGenerator", [])),
                   ("Secret", kust.get("secretGenerator", []))):
    for g in gens:
        keys = {}
        for f in g.get("files", []):
            key, _, path = f.partition("=")
            path = path or key
            keys[os.path.basename(key)] = path
            if path.startswith("secrets/"):
                continue  # the operator's (README.md); names checked below
            if not os.path.isfile(f"{kdir}/{path}"):
                fail(f"kustomization: {kind} {g['name']}: {path} missing")
        generated[g["name"]] = (kind, keys)
acl_names = {"users.acl", "broker.password", "worker.password", "ctl.password", "app.password"}
for name, (kind, keys) in generated.items():
    for key, path in keys.items():
        if path.startswith("secrets/") and os.path.basename(path) not in acl_names | {"smtp-password"}:
            fail(f"kustomization: {path} is not a file make-acl.sh writes (or smtp-password)")
if open(f"{kdir}/redis.conf").read() != open(f"{src}/deploy/redis/redis.conf").read():
    fail("deploy/k8s/redis.conf differs from deploy/redis/redis.conf (copy it again)")
ok("kustomization: resources and generated files; k8s/redis.conf == redis/redis.conf")

by_kind = {}
for o in objects:
    by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
services_k = by_kind.get("Service", {})
workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
for wname, w in workloads.items():
    spec = w["spec"]["template"]["spec"]
    labels = w["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in w["spec"]["selector"]["matchLabels"].items()):
        fail(f"{wname}: selector does not match its pod labels")
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{wname}: pod not runAsNonRoot with RuntimeDefault seccomp (restricted namespace)")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for t in w["spec"].get("volumeClaimTemplates", []):
        vols[t["metadata"]["name"]] = {"persistentVolumeClaim": t["spec"]}
    for v in vols.values():
        ref = v.get("configMap", {}).get("name") or v.get("secret", {}).get("secretName")
        if ref and ref not in generated:
            fail(f"{wname}: volume {v['name']} references {ref}, which is not generated")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{wname}/{c['name']}: privilege escalation allowed or capabilities kept")
        # What each mounted path holds: files of a ConfigMap or Secret.
        files = {}
        for m in c.get("volumeMounts", []):
            v = vols.get(m["name"])
            if not v:
                fail(f"{wname}/{c['name']}: mounts unknown volume {m['name']}")
                continue
            ref = v.get("configMap", {}).get("name") or v.get("secret", {}).get("secretName")
            if ref in generated:
                keys = generated[ref][1]
                if "subPath" in m:
                    files[m["mountPath"]] = ref
                    if m["subPath"] not in keys:
                        fail(f"{wname}: subPath {m['subPath']} not in {ref}")
                else:
                    for k in keys:
                        files[f"{m['mountPath']}/{k}"] = ref
        args = c.get("args", [])
        paths = [args[i + 1] for i, a in enumerate(args) if a == "-c"]
        paths += [a.split("=", 1)[1] for a in args if re.match(r"[a-z_.]*_file=", a)]
        paths += [a for a in args if a.startswith("/etc/")]
        conf = None
        for p in paths:
            if p not in files:
                fail(f"{wname}/{c['name']}: {p} is not in any mounted ConfigMap or Secret")
            elif p.endswith(".conf") and p.startswith("/etc/buurtbus/"):
                conf = conf_options(f"{kdir}/{generated[files[p]][1][os.path.basename(p)]}")
        if conf:
            for k, v in conf.items():
                if k.endswith("password_file") and v not in files:
                    fail(f"{wname}: {k} {v} is not a mounted secret")
            cport = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            if cport.get("metrics") != port_of(conf["metrics_addr"]):
                fail(f"{wname}: containerPort metrics {cport.get('metrics')}, metrics_addr {conf['metrics_addr']}")
            for a in args:
                for var in re.findall(r"\$\(([A-Z0-9_]+)\)", a):
                    envs = {e["name"] for e in c.get("env", [])}
                    svc = re.match(r"(.*)_SERVICE_(HOST|PORT)$", var)
                    if var in envs:
                        continue
                    if not svc or svc.group(1).lower().replace("_", "-") not in services_k:
                        fail(f"{wname}: $({var}) is neither an env var nor a Service's")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            p = c.get(probe, {}).get("httpGet")
            if p and p["port"] not in {x["name"] for x in c.get("ports", [])}:
                fail(f"{wname}: {probe} port {p['port']} is not a named port")
ok(f"k8s: {len(workloads)} workloads: mounts, arguments, secrets, ports, security contexts")

for sname, s in services_k.items():
    sel = s["spec"].get("selector", {})
    pods = [w for w in workloads.values()
            if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
    if not pods:
        fail(f"Service {sname}: selects no pod")
    for p in s["spec"]["ports"]:
        names = {cp.get("name") for w in pods for c in w["spec"]["template"]["spec"]["containers"]
                 for cp in c.get("ports", [])}
        if isinstance(p.get("targetPort"), str) and p["targetPort"] not in names:
            fail(f"Service {sname}: targetPort {p['targetPort']} is not a port of its pods")
ok(f"k8s: {len(services_k)} Services select pods by named ports")

rules = docs[f"{kdir}/prometheus-adapter-rules.yaml"][0]["externalRules"]
adapter = {r["name"]["as"]: re.match(r"(\w+)", r["seriesQuery"]).group(1) for r in rules}
worker_src = open(f"{src}/workers/host/main.c").read()
for hname, h in by_kind.get("HorizontalPodAutoscaler", {}).items():
    t = h["spec"]["scaleTargetRef"]
    if t["name"] not in by_kind.get(t["kind"], {}):
        fail(f"HPA {hname}: target {t['kind']}/{t['name']} does not exist")
    for m in h["spec"]["metrics"]:
        if m["type"] == "External":
            name = m["external"]["metric"]["name"]
            series = adapter.get(name)
            if not series:
                fail(f"HPA {hname}: no adapter rule serves {name}")
            elif f'"{series}"' not in worker_src:
                fail(f"HPA {hname}: {series} is not exported by the worker (workers/host/main.c)")
            sel = m["external"]["metric"].get("selector", {}).get("matchLabels", {})
            if "channel" in sel:
                target = by_kind[t["kind"]][t["name"]]
                cm = [v["configMap"]["name"] for v in target["spec"]["template"]["spec"]["volumes"]
                      if "configMap" in v][0]
                wc = conf_options(f"{kdir}/{generated[cm][1]['worker.conf']}")
                if sel["channel"] not in wc["channels"].split(","):
                    fail(f"HPA {hname}: channel {sel['channel']} is not served by {t['name']}")
ok("k8s: autoscaler target, adapter rule and exported metric agree")

# ---- the configurations pass the built programs' --check-config -----------
if build:
    with tempfile.TemporaryDirectory() as tmp:
        secret = f"{tmp}/secret"
        with open(secret, "w") as f:
            f.write("a-password-for-the-check-0123456789\n")
        for conf, prog in ((f"{cdir}/broker.conf", "broker/buurtbus-broker"),
                           (f"{cdir}/worker.conf", "workers/buurtbus-worker"),
                           (f"{kdir}/broker.conf", "broker/buurtbus-broker"),
                           (f"{kdir}/worker.conf", "workers/buurtbus-worker")):
            opts = conf_options(conf)
            # What the deployment provides: secrets as files, the Redis
            # address in args (k8s), plug-ins where the build put them. A
            # secret file is read as the file is, so a copy of it names
            # ours (a later --set cannot stop the read).
            text = open(conf).read()
            for k, v in opts.items():
                if k.endswith("password_file") or k.endswith(".path") or k == "plugin_dir":
                    new = secret if k.endswith("password_file") else \
                        f"{build}/workers/plugins-out" if k == "plugin_dir" else f"{tmp}/out"
                    text = re.sub(rf"^({re.escape(k)}\s+).*$", rf"\g<1>{new}", text, flags=re.M)
            copy = f"{tmp}/{os.path.basename(conf)}"
            with open(copy, "w") as f:
                f.write(text)
            sets = [f"redis_password_file={secret}"]
            if "redis" not in opts:
                sets.append("redis=10.96.0.10:6379")
            argv = [f"{build}/{prog}", "-c", copy, "--check-config"]
            for s in sets:
                argv += ["--set", s]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            rel = os.path.relpath(conf, src)
            if r.returncode != 0:
                fail(f"{rel}: --check-config: {r.stdout.strip()} {r.stderr.strip()}")
            else:
                ok(f"{rel}: --check-config ok")

for c in checked:
    print("ok:", c)
for e in errors:
    print("FAIL:", e)
print("FAILED" if errors else "ok")
sys.exit(1 if errors else 0)
