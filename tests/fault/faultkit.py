"""The fault suite's kit: a real Redis (AOF, fsync always) in a temporary
directory, the built brokers and workers as child processes, reports posted
with the built buurtbusctl at a steady rate, and the delivery ledger.

The ledger: every report posted goes to a group whose members are known,
each member wanting it on two channels (push and email), each channel a
worker instance with the file plug-in as its sink. At the end every
expected (report, channel, member) delivery id must appear in the sinks
exactly once: lost = expected ids missing, duplicated = lines beyond the
first for an id. The brokers' own output is checked too: one DeliveryBatch
per report and channel (more would be a broker writing twice, which the
workers' records would otherwise hide).

Threads: a scenario runs on the main thread; the poster and the sink
tailer each run on one thread of their own and share only what their
locks guard.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import redis

GROUP_CELL = "u15y0"  # the group's area: the cell holding 51.6901, 5.3019, where reports are
MEMBERS_FIRST = 1001
CHANNELS = ("push", "email")
CHANNEL_NUMBER = {"push": 1, "email": 2, "inbox": 3, "digest": 4}


class Failure(Exception):
    """A scenario's check failed."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def http_status(port, path):
    """The status of GET path on 127.0.0.1:port, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))]


class Proc:
    """A child process with its stderr in a log file."""

    def __init__(self, name, argv, log_path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.p = None

    def start(self):
        log = open(self.log_path, "ab")
        self.p = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        return self

    @property
    def pid(self):
        return self.p.pid

    def running(self):
        return self.p is not None and self.p.poll() is None

    def send(self, sig):
        if self.running():
            self.p.send_signal(sig)

    def kill9(self):
        if self.running():
            self.p.kill()
            self.p.wait()

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Sends sig and waits; returns (exit code, seconds), SIGKILLing after timeout."""
        if not self.running():
            return (self.p.returncode if self.p else None, 0.0)
        t0 = time.monotonic()
        self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        return rc, time.monotonic() - t0


class Redis:
    """redis-server on a fixed loopback port in its own directory, with the
    append-only file on and fsync on every write, so it can be killed and
    started again with what it acknowledged."""

    def __init__(self, dir_, port, extra=()):
        self.dir = dir_
        self.port = port
        self.extra = list(extra)
        self.proc = None

    def start(self):
        argv = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--maxmemory-policy", "noeviction", "--logfile", os.path.join(self.dir, "redis.log"),
        ] + self.extra
        self.proc = Proc("redis", argv, os.path.join(self.dir, "redis.out")).start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                pass
            time.sleep(0.05)
        raise Failure("redis-server did not start")

    def client(self, timeout=5):
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def kill9(self):
        self.proc.kill9()

    def stop(self):
        if self.proc:
            self.proc.stop(signal.SIGTERM, 10)


class Blackhole:
    """A TCP relay between the programs and Redis that can stop forwarding
    without closing anything: to the programs Redis looks alive (the
    connection stays open, the kernel acknowledges every segment) but
    never answers, as behind a link that drops traffic."""

    def __init__(self, target_port):
        self.target = target_port
        self.port = free_port()
        self.dropping = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        """Forwards src to dst; while dropping, holds what arrives (as TCP
        would keep retransmitting it) and delivers it once the link is back."""
        held = []
        src.settimeout(0.1)
        try:
            while True:
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    data = None
                if data == b"":
                    break
                if data:
                    held.append(data)
                if held and not self.dropping.is_set():
                    dst.sendall(b"".join(held))
                    held = []
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Poster(threading.Thread):
    """Posts reports to the group at rate per second, in chunks of
    rate/10 every 100 ms, with buurtbusctl. A chunk that fails (Redis down,
    out of memory) is posted again, same ids, until it goes in: what an app
    does, and why a report id may arrive twice. Records when each report
    was first acknowledged, for latency."""

    def __init__(self, kit, prefix, rate, duplicate=False, extra=None):
        super().__init__(daemon=True)
        self.kit = kit
        self.prefix = prefix
        self.rate = rate
        self.duplicate = duplicate
        self.extra = extra  # called with the chunk index; returns extra JSON lines
        self.stop_ev = threading.Event()
        self.posted = {}  # report id -> wall time (s) acknowledged
        self.failures = 0
        self.seq = 0
        self.lock = threading.Lock()

    def run(self):
        per = max(1, self.rate // 10)
        chunk_path = os.path.join(self.kit.dir, f"chunk-{self.prefix}.jsonl")
        next_t = time.monotonic()
        while not self.stop_ev.is_set():
            ids = [f"{self.prefix}-{self.seq + i}" for i in range(per)]
            self.seq += per
            lines = [self.kit.report_json(i) for i in ids]
            if self.duplicate:
                lines += lines
            if self.extra:
                lines += self.extra(self.seq)
            with open(chunk_path, "w") as f:
                f.write("\n".join(lines) + "\n")
            while not self.stop_ev.is_set():
                r = self.kit.ctl(["post", "--no-validate", "--file", chunk_path], check=False,
                                 timeout=10)
                if r.returncode == 0:
                    now = time.time()
                    with self.lock:
                        for i in ids:
                            self.posted.setdefault(i, now)
                    break
                self.failures += 1
                time.sleep(0.2)
            next_t += 0.1
            time.sleep(max(0.0, next_t - time.monotonic()))

    def finish(self):
        self.stop_ev.set()
        self.join(30)
        return dict(self.posted)


class Tailer(threading.Thread):
    """Follows the sink files and notes when each delivery id first
    appears, for the latency of deliveries (report acknowledged to line
    written, at the tailer's 20 ms resolution)."""

    def __init__(self, paths):
        super().__init__(daemon=True)
        self.paths = paths
        self.offsets = {p: 0 for p in paths}
        self.rest = {p: b"" for p in paths}
        self.seen = {}
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.poll()
            time.sleep(0.02)
        self.poll()

    def poll(self):
        now = time.time()
        for p in self.paths:
            try:
                with open(p, "rb") as f:
                    f.seek(self.offsets[p])
                    data = f.read()
            except FileNotFoundError:
                continue
            self.offsets[p] += len(data)
            data = self.rest[p] + data
            *lines, self.rest[p] = data.split(b"\n")
            for line in lines:
                m = DELIVERY_RE.match(line)
                if m:
                    self.seen.setdefault(m.group(1).decode(), now)

    def finish(self):
        self.stop_ev.set()
        self.join(10)
        return self.seen


def proto_fields(buf):
    """The top-level fields of a protobuf message: number -> last value
    (int for varints, bytes for length-delimited). Enough to read a
    Receipt without generated code."""
    out, i = {}, 0

    def varint():
        nonlocal i
        v = shift = 0
        while True:
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v

    while i < len(buf):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            out[num] = varint()
        elif wt == 2:
            n = varint()
            out[num] = buf[i:i + n]
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError("bad wire type")
    return out


DELIVERY_RE = re.compile(rb'^\{"delivery_id":"([^"]+)"')


class Kit:
    """One scenario's world: a temporary directory, Redis, the directory of
    one group with members MEMBERS_FIRST.., brokers, workers, the ledger."""

    def __init__(self, build, name, members=8, keep=False):
        self.build = build
        self.name = name
        self.members = members
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix=f"bb-fault-{name}-")
        self.redis = Redis(self.dir, free_port())
        self.redis_addr = f"127.0.0.1:{self.redis.port}"  # what the programs connect to
        self.brokers = {}
        self.workers = {}
        self.metrics = {}  # process name -> metrics port
        self.failed = False
        self.figures = {}
        self.ctl_path = os.path.join(build, "broker", "ctl", "buurtbusctl")
        self.broker_path = os.path.join(build, "broker", "buurtbus-broker")
        self.worker_path = os.path.join(build, "workers", "buurtbus-worker")
        self.plugin_dir = os.path.join(build, "workers", "plugins-out")

    # ---- setup ----------------------------------------------------------------------------

    def start(self):
        self.redis.start()
        self.r = self.redis.client(timeout=10)
        return self

    def ctl(self, args, check=True, timeout=60, stdin=None):
        # The app's side: straight to Redis, never through the relay.
        direct = f"127.0.0.1:{self.redis.port}"
        r = subprocess.run([self.ctl_path, "--redis", direct, "--timeout", "3000"] + args,
                           capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and r.returncode != 0:
            raise Failure(f"buurtbusctl {' '.join(args)}: {r.returncode}: {r.stderr.strip()}")
        return r

    def load_directory(self, extra_group=None):
        """The group and its members, each wanting in-progress reports by
        push and e-mail, with contact data as the app stores it."""
        lines = [
            '{"group":{"id":1,"name":"Buurtpreventie Noord","cells":["%s"],'
            '"location_precision":7}}' % GROUP_CELL
        ]
        for k in range(self.members):
            uid = MEMBERS_FIRST + k
            lines.append(
                '{"user":{"id":%d,"screen_name":"Buur%d","locale":"nl",'
                '"time_zone":"Europe/Amsterdam","prefs":{"in_progress":["push","email"]}}}'
                % (uid, uid))
            lines.append('{"member":{"user":%d,"group":1}}' % uid)
        path = os.path.join(self.dir, "directory.jsonl")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.ctl(["load", path], timeout=600)
        pipe = self.r.pipeline(transaction=False)
        for k in range(self.members):
            uid = MEMBERS_FIRST + k
            pipe.hset(f"bb:user:{uid}", mapping={
                "email": f"buur{uid}@example.org", "push_token": f"tok{uid}",
                "push_platform": "file"})
        pipe.execute()

    def report_json(self, rid, group=1, text="Verdachte persoon bij de achterdeur"):
        return ('{"id":"%s","author_id":1,"author_screen_name":"Melder","group_id":%d,'
                '"lat":51.6901,"lon":5.3019,"category":"burglary","urgency":"in_progress",'
                '"source":"resident","text":"%s","anonymity":"screen_name","locale":"nl"}'
                % (rid, group, text))

    def start_broker(self, name, extra=""):
        port = self.metrics.get(name) or free_port()
        self.metrics[name] = port
        conf = os.path.join(self.dir, f"{name}.conf")
        with open(conf, "w") as f:
            f.write(f"redis {self.redis_addr}\nname {name}\nrouter_threads 1\nblock 200ms\n"
                    "claim_idle 2s\nclaim_interval 500ms\nconnect_timeout 1s\n"
                    "command_timeout 3s\nreconnect_min 100ms\nreconnect_max 1s\n"
                    f"shutdown_grace 10s\nmetrics_addr 127.0.0.1:{port}\nlog_level info\n"
                    # Untrimmed streams let the ledger count the brokers' batches.
                    + ("" if "trim_interval" in extra else "trim_interval 0\n")
                    + extra)
        p = Proc(name, [self.broker_path, "-c", conf], os.path.join(self.dir, f"{name}.log"))
        self.brokers[name] = p.start()
        return p

    def start_worker(self, name, extra="", instances=CHANNELS):
        port = self.metrics.get(name) or free_port()
        self.metrics[name] = port
        conf = os.path.join(self.dir, f"{name}.conf")
        text = (f"redis {self.redis_addr}\nname {name}\nplugin_dir \"{self.plugin_dir}\"\n"
                "block 100ms\nclaim_idle 2s\nclaim_interval 500ms\nconnect_timeout 1s\n"
                "command_timeout 3s\nreconnect_min 100ms\nreconnect_max 1s\n"
                "retry_min 50ms\nretry_max 1s\nlater_poll 100ms\nshutdown_grace 10s\n"
                f"metrics_addr 127.0.0.1:{port}\nlog_level info\n"
                f"channels {','.join(instances)}\n")
        for inst in instances:
            if inst in CHANNELS:
                text += (f"channel.{inst}.plugin file\n"
                         f"channel.{inst}.path \"{self.sink(inst)}\"\n")
        conf_text = text + extra
        with open(conf, "w") as f:
            f.write(conf_text)
        p = Proc(name, [self.worker_path, "-c", conf], os.path.join(self.dir, f"{name}.log"))
        self.workers[name] = p.start()
        return p

    def sink(self, inst):
        return os.path.join(self.dir, f"{inst}.jsonl")

    def poster(self, prefix, rate, **kw):
        p = Poster(self, prefix, rate, **kw)
        p.start()
        return p

    def tailer(self):
        t = Tailer([self.sink(c) for c in CHANNELS])
        t.start()
        return t

    # ---- waiting ---------------------------------------------------------------------------

    def unfinished(self, streams=(("bb:reports", "bb-brokers"),), instances=CHANNELS):
        """Entries not yet read or not acked by their group, plus jobs in bb:later."""
        n = 0
        groups = list(streams) + [(f"bb:out:{i}", "bb-workers") for i in instances]
        for stream, group in groups:
            if not self.r.exists(stream):
                n += 1 if stream == "bb:reports" else 0
                continue
            info = {g["name"].decode(): g for g in self.r.xinfo_groups(stream)}
            g = info.get(group)
            if g is None:
                n += 1
                continue
            lag = g.get("lag")
            n += g["pending"] + (lag if lag is not None else 1)
        for i in instances:
            n += self.r.zcard(f"bb:later:{i}")
        return n

    def wait_drained(self, timeout=120.0, instances=CHANNELS):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.unfinished(instances=instances) == 0:
                    return time.monotonic() - t0
            except redis.exceptions.ConnectionError:
                pass
            time.sleep(0.2)
        raise Failure(f"not drained after {timeout:.0f} s: {self.unfinished()} left")

    # ---- the ledger ------------------------------------------------------------------------

    def sink_counts(self, instances=CHANNELS):
        counts = {}
        for inst in instances:
            try:
                f = open(self.sink(inst), "rb")
            except FileNotFoundError:
                continue
            with f:
                for line in f:
                    m = DELIVERY_RE.match(line)
                    if m and line.rstrip().endswith(b"}"):
                        k = m.group(1).decode()
                        counts[k] = counts.get(k, 0) + 1
        return counts

    def ledger(self, report_ids, instances=CHANNELS, members=None):
        """lost, duplicated and unexpected deliveries of report_ids."""
        members = members if members is not None else range(
            MEMBERS_FIRST, MEMBERS_FIRST + self.members)
        counts = self.sink_counts(instances)
        expected = 0
        lost = dup = 0
        for rid in report_ids:
            for inst in instances:
                ch = CHANNEL_NUMBER[inst]
                for uid in members:
                    expected += 1
                    c = counts.pop(f"r:{rid}:{ch}:{uid}", 0)
                    lost += c == 0
                    dup += max(0, c - 1)
        unexpected = sum(counts.values())
        return {"expected": expected, "lost": lost, "duplicated": dup,
                "unexpected": unexpected}

    def broker_outputs(self, instances=CHANNELS):
        """Entries the brokers wrote to each bb:out stream."""
        return {i: self.r.xlen(f"bb:out:{i}") for i in instances}

    def receipt_reasons(self):
        """Receipts in bb:receipts counted by reason."""
        out = {}
        last = "-"
        while True:
            rows = self.r.xrange("bb:receipts", min=last, count=10000)
            if last != "-":
                rows = rows[1:]
            if not rows:
                return out
            for _, fields in rows:
                reason = proto_fields(fields.get(b"p", b"")).get(5, b"").decode()
                out[reason] = out.get(reason, 0) + 1
            last = rows[-1][0]

    def dead(self):
        """Dead letters by reason."""
        out = {}
        for _, fields in self.r.xrange("bb:dead"):
            reason = fields.get(b"reason", b"?").decode()
            out[reason] = out.get(reason, 0) + 1
        return out

    def check_ledger(self, report_ids, outputs_per_channel=None, **kw):
        l = self.ledger(report_ids, **kw)
        self.figures.update({"reports": len(report_ids), **l})
        if l["lost"] or l["duplicated"] or l["unexpected"]:
            raise Failure(f"ledger: {l}")
        if outputs_per_channel == -1:
            return l  # the streams were trimmed: their length says nothing
        # One batch per report entry and channel (the members fit in one
        # batch): more would be a broker writing twice. Entries of bb:reports
        # count, not ids: a chunk posted again after a refusal adds some.
        outs = self.broker_outputs(kw.get("instances", CHANNELS))
        want = self.r.xlen("bb:reports") if outputs_per_channel is None else outputs_per_channel
        self.figures["broker_batches"] = sum(outs.values())
        for inst, n in outs.items():
            if n != want:
                raise Failure(f"bb:out:{inst} holds {n} batches for {want} report entries")
        return l

    def metric(self, name, metric):
        """A counter or gauge from a program's /metrics (the sum over its
        label sets), or None when it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.metrics[name]}/metrics"
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(metric + " ") or line.startswith(metric + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_text(self, name):
        try:
            with open(os.path.join(self.dir, f"{name}.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # ---- the end ---------------------------------------------------------------------------

    def close(self):
        for p in list(self.brokers.values()) + list(self.workers.values()):
            if p.running():
                p.kill9()
        self.redis.stop()
        if self.failed or self.keep:
            print(f"  kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---- scenarios ---------------------------------------------------------------------------------

# seconds of load per scenario, reports per second, the Redis outage, the partition
PROFILES = {
    "short": {"load": 12, "rate": 300, "outage": 4, "partition": 30},
    "long": {"load": 180, "rate": 500, "outage": 20, "partition": 30},
}

SCENARIOS = {}  # name -> (number, function(kit, profile))


def scenario(number, name):
    """Registers a scenario: a function(kit, profile) that raises Failure."""
    def register(fn):
        SCENARIOS[name] = (number, fn)
        return fn
    return register


def drive(kit, prof, prefix, during=None, rate=None, **poster_kw):
    """Posts for the profile's load time, calling during(elapsed) about
    every 100 ms; returns (the report ids posted with when each was
    acknowledged, the poster)."""
    p = kit.poster(prefix, rate or prof["rate"], **poster_kw)
    t0 = time.monotonic()
    while time.monotonic() - t0 < prof["load"]:
        if during:
            during(time.monotonic() - t0)
        time.sleep(0.1)
    return p.finish(), p
