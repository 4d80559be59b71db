"""Fault scenarios: hostile or heavy input (poison entries, a slow
provider, a fan-out storm, a report posted twice).

Threads: the main thread (run.py calls each scenario in turn); the
tailer and poster threads of faultkit.
"""

import json
import os
import random
import re
import shutil
import struct
import subprocess
import time

import faultkit
from faultkit import CHANNEL_NUMBER, MEMBERS_FIRST, Failure, drive, percentile, scenario

# ---- helpers shared by scenarios 8-10 ----------------------------------------------------------

# Per profile, told apart by the profile's load time (faultkit.PROFILES is the lead's).
def _size(prof, short, long_):
    return short if prof["load"] <= 30 else long_


def _varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb(fields):
    """A protobuf message from (field number, value) pairs: int -> varint,
    float -> double, str/bytes -> length-delimited, a list of ints ->
    packed varints. Enough to write Reports and DeliveryBatches that the
    generated code would refuse to write."""
    out = bytearray()
    for num, v in fields:
        if isinstance(v, bool) or isinstance(v, int):
            out += _varint(num << 3) + _varint(int(v))
        elif isinstance(v, float):
            out += _varint(num << 3 | 1) + struct.pack("<d", v)
        elif isinstance(v, list):
            body = b"".join(_varint(x) for x in v)
            out += _varint(num << 3 | 2) + _varint(len(body)) + body
        else:
            b = v.encode() if isinstance(v, str) else bytes(v)
            out += _varint(num << 3 | 2) + _varint(len(b)) + b
    return bytes(out)


def report_pb(rid, **over):
    """A Report as the broker reads it, with fields overridden (None drops one)."""
    f = {1: 1, 2: rid, 3: int(time.time() * 1000), 4: 1, 5: "Melder", 6: 1, 7: 51.6901,
         8: 5.3019, 9: 1, 10: 3, 11: 1, 12: "Verdachte persoon", 14: 1, 15: "nl"}
    names = {"schema": 1, "id": 2, "author": 4, "group": 6, "lat": 7, "lon": 8, "category": 9,
             "urgency": 10, "source": 11, "text": 12, "locale": 15}
    for k, v in over.items():
        if v is None:
            f.pop(names[k], None)
        else:
            f[names[k]] = v
    return pb(sorted(f.items()))


def latencies(posted, seen, instances=faultkit.CHANNELS, members=None, since=None, until=None):
    """Seconds from a report acknowledged to each of its delivery lines seen,
    for reports acknowledged in [since, until)."""
    members = members if members is not None else range(MEMBERS_FIRST, MEMBERS_FIRST + 8)
    out = []
    for rid, t in posted.items():
        if (since is not None and t < since) or (until is not None and t >= until):
            continue
        for inst in instances:
            for uid in members:
                s = seen.get(f"r:{rid}:{CHANNEL_NUMBER[inst]}:{uid}")
                if s is not None:
                    out.append(s - t)
    return out


def lat_figures(values):
    return {"p50_ms": round(1000 * percentile(values, 50)),
            "p99_ms": round(1000 * percentile(values, 99)), "n": len(values)}


def dead_entries(r):
    """Every bb:dead entry as a dict of str -> bytes, oldest first."""
    out, last = [], "-"
    while True:
        rows = r.xrange("bb:dead", min=last, count=5000)
        if last != "-":
            rows = rows[1:]
        if not rows:
            return out
        for eid, fields in rows:
            out.append({k.decode(): v for k, v in fields.items()})
        last = rows[-1][0]


def receipts_by_delivery(r, channel):
    """delivery id -> list of (outcome, reason) of the receipts for one channel."""
    out, last = {}, "-"
    while True:
        rows = r.xrange("bb:receipts", min=last, count=10000)
        if last != "-":
            rows = rows[1:]
        if not rows:
            return out
        for _, fields in rows:
            f = faultkit.proto_fields(fields.get(b"p", b""))
            if f.get(3, 0) != channel:
                continue
            did = f.get(2, b"").decode()
            out.setdefault(did, []).append((f.get(4, 0), f.get(5, b"").decode()))
        last = rows[-1][0]


def wait_until_drained(kit, t0, timeout, instances=faultkit.CHANNELS):
    """Seconds from t0 (monotonic) until nothing is unread, pending or
    waiting in bb:later; polled every 20 ms (faultkit's wait_drained polls
    every 200 ms, too coarse to time a drain of a few seconds)."""
    while time.monotonic() - t0 < timeout:
        try:
            if kit.unfinished(instances=instances) == 0:
                return time.monotonic() - t0
        except faultkit.redis.exceptions.ConnectionError:
            pass
        time.sleep(0.02)
    raise Failure(f"not drained after {timeout:.0f} s: {kit.unfinished(instances=instances)} left")


def post_lines(kit, lines, no_validate=True):
    """Posts JSON report lines with buurtbusctl; returns the entry ids, in order."""
    path = os.path.join(kit.dir, "post.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = kit.ctl(["post"] + (["--no-validate"] if no_validate else []) + ["--file", path],
                timeout=120)
    ids = [x for x in r.stdout.split() if "-" in x]
    if len(ids) != len(lines):
        raise Failure(f"buurtbusctl post: {len(ids)} ids for {len(lines)} reports")
    return ids


# ---- 8. poison entries -------------------------------------------------------------------------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# The reason each kind of poison must be dead-lettered with, where only one fits.
EXPECTED_REASON = {
    "no_p_field": "missing_payload", "empty_p": "missing_field:id",
    "lat_999": "bad_location", "category_99": "unknown_category",
    "urgency_42": "unknown_urgency", "no_source": "missing_field:source",
    "schema_2": "unsupported_schema_version", "text_not_utf8": "bad_utf8:text",
    "text_too_long": "text_too_long", "unknown_group": "unknown_group",
    "no_id": "missing_field:id", "no_location": "missing_field:location",
    "ctl_no_author": "missing_field:author_id", "ctl_no_category": "missing_field:category",
    "ctl_unknown_group": "unknown_group", "ctl_no_urgency": "missing_field:urgency",
    "wrong_field_name": "missing_payload", "zstd_random": "decompress_error",
    "zstd_unknown_dict": "unknown_dictionary", "bad_key": "bad_notification_key",
    "no_zstd": "missing_field:notification_zstd", "zstd_garbage": "decode_error",
    "zstd_bad_utf8": "invalid_utf8",
}


class Poison:
    """Writes undecodable entries and remembers each (stream, entry id) and
    what it is, so that its one dead letter can be found."""

    def __init__(self, kit):
        self.kit = kit
        self.r = kit.redis.client()
        self.entries = {}  # (stream, id) -> kind
        self.seq = 0
        self.zstd_blobs = self._zstd_blobs()

    def _zstd_blobs(self):
        """Real zstd frames of things that are not a valid Notification (the
        zstd tool, when there is one): garbage, and text that is not UTF-8."""
        tool = shutil.which("zstd")
        if not tool:
            return {}
        notif = pb([(1, 1), (2, 1), (3, "poison"), (9, "nl"), (10, "Inbraak"),
                    (11, b"\xff\xfe\xc0 geen utf-8")])
        out = {}
        for kind, raw in (("zstd_garbage", os.urandom(300)), ("zstd_bad_utf8", notif)):
            r = subprocess.run([tool, "-q", "-c"], input=raw, capture_output=True)
            if r.returncode == 0:
                out[kind] = r.stdout
        return out

    def _name(self):
        self.seq += 1
        return f"poison-{self.seq}"

    def report_entry(self):
        """One poison entry for bb:reports (raw XADD): (kind, fields)."""
        rid = self._name()
        kinds = [
            ("random_bytes", {"p": os.urandom(random.randint(1, 300))}),
            ("no_p_field", {"q": os.urandom(20), "trace": "x"}),
            ("extra_fields_garbage_p", {"trace": "t-1", "p": os.urandom(50), "ts": "17"}),
            ("empty_p", {"p": b""}),
            ("lat_999", {"p": report_pb(rid, lat=999.0)}),
            ("category_99", {"p": report_pb(rid, category=99)}),
            ("urgency_42", {"p": report_pb(rid, urgency=42)}),
            ("no_source", {"p": report_pb(rid, source=None)}),
            ("schema_2", {"p": report_pb(rid, schema=2)}),
            ("text_not_utf8", {"p": report_pb(rid, text=b"\xff\xfe\xc0\xaf")}),
            ("text_too_long", {"p": report_pb(rid, text="x" * 5000)}),
            ("unknown_group", {"p": report_pb(rid, group=424242)}),
            ("no_id", {"p": report_pb(rid, id=None)}),
            ("no_location", {"p": report_pb(rid, lat=None, lon=None)}),
        ]
        return random.choice(kinds)

    def output_entry(self):
        """One garbage DeliveryBatch entry for bb:out:push: (kind, fields)."""
        key = "r:" + self._name()

        def batch(z, k=key):
            return pb([(1, 1), (2, 1), (3, k), (4, "nl"), (5, z), (6, 1), (7, [MEMBERS_FIRST]),
                       (8, 0), (9, 1), (10, int(time.time() * 1000)), (11, 3)])
        dict_frame = ZSTD_MAGIC + bytes([0x03, 0x00]) + struct.pack("<I", 0x0BADD1C7) + \
            os.urandom(40)
        kinds = [
            ("random_bytes", {"p": os.urandom(random.randint(1, 300))}),
            ("wrong_field_name", {"payload": batch(os.urandom(30))}),
            ("zstd_random", {"p": batch(os.urandom(60))}),
            ("zstd_corrupt", {"p": batch(ZSTD_MAGIC + os.urandom(60))}),
            ("zstd_unknown_dict", {"p": batch(dict_frame)}),
            ("bad_key", {"p": batch(ZSTD_MAGIC + os.urandom(20), k="r:has space")}),
            ("no_zstd", {"p": batch(b"")}),
        ]
        kinds += [(k, {"p": batch(z)}) for k, z in self.zstd_blobs.items()]
        return random.choice(kinds)

    def inject(self, n_reports, n_outputs):
        """XADDs poison entries now; a third of the report ones are posted with
        buurtbusctl post --no-validate instead (JSON the broker refuses)."""
        pipe = self.r.pipeline(transaction=False)
        kinds = []
        n_ctl = n_reports // 3
        for _ in range(n_reports - n_ctl):
            kind, fields = self.report_entry()
            pipe.xadd("bb:reports", fields)
            kinds.append(("bb:reports", kind))
        for _ in range(n_outputs):
            kind, fields = self.output_entry()
            pipe.xadd("bb:out:push", fields)
            kinds.append(("bb:out:push", kind))
        for (stream, kind), eid in zip(kinds, pipe.execute()):
            self.entries[(stream, eid.decode())] = kind
        if n_ctl:
            lines, ctl_kinds = [], []
            for _ in range(n_ctl):
                rid = self._name()
                good = self.kit.report_json(rid)
                kind, line = random.choice([
                    ("ctl_no_author", good.replace('"author_id":1', '"author_id":0')),
                    ("ctl_no_category", good.replace('"category":"burglary",', "")),
                    ("ctl_unknown_group", self.kit.report_json(rid, group=424242)),
                    ("ctl_no_urgency", good.replace('"urgency":"in_progress",', "")),
                ])
                lines.append(line)
                ctl_kinds.append(kind)
            for eid, kind in zip(post_lines(self.kit, lines), ctl_kinds):
                self.entries[("bb:reports", eid)] = kind

    def check(self, dead):
        """Each poison entry in bb:dead exactly once with a reason; nothing
        else there. Returns the dead letters counted by source and reason."""
        count, reasons, stray = {}, {}, []
        for d in dead:
            key = (d.get("stream", b"").decode(), d.get("id", b"").decode())
            count[key] = count.get(key, 0) + 1
            reason = d.get("reason", b"").decode()
            if key in self.entries:
                kind = self.entries[key]
                r = f"{key[0]}:{reason or '(none)'}"
                reasons[r] = reasons.get(r, 0) + 1
                if not reason:
                    raise Failure(f"dead letter of {key} ({kind}) has no reason")
                if EXPECTED_REASON.get(kind, reason) != reason:
                    raise Failure(f"dead letter of {key} ({kind}) says {reason}, "
                                  f"expected {EXPECTED_REASON[kind]}")
            else:
                stray.append((key, reason))
        missing = [(k, v) for k, v in self.entries.items() if count.get(k, 0) == 0]
        twice = [(k, v, count[k]) for k, v in self.entries.items() if count.get(k, 0) > 1]
        if missing:
            raise Failure(f"{len(missing)} of {len(self.entries)} poison entries not in bb:dead, "
                          f"e.g. {missing[:5]}")
        if twice:
            raise Failure(f"{len(twice)} poison entries in bb:dead more than once, "
                          f"e.g. {twice[:5]}")
        if stray:
            raise Failure(f"{len(stray)} dead letters that are not poison, e.g. {stray[:5]}")
        return reasons


def _post_backlog(kit, ids, poison=None, frac=0.0):
    """Posts the good reports ids (chunks of 100) with poison entries mixed in
    between so that they make frac of everything written."""
    per = 100
    for k in range(0, len(ids), per):
        chunk = ids[k:k + per]
        post_lines(kit, [kit.report_json(i) for i in chunk], no_validate=False)
        if poison:
            n = round(len(chunk) * frac / (1 - frac))  # poison entries per chunk
            poison.inject(n - n // 3, n // 3)


def _timed_drain(kit, timeout):
    """Starts worker and broker on the backlog waiting in Redis; returns the
    seconds until everything is delivered and the CPU seconds the broker,
    the worker and Redis used meanwhile, then stops both."""
    kit.start_worker("w1")
    t0 = time.monotonic()
    kit.start_broker("b1")
    procs = {"redis": kit.redis.proc, "broker": kit.brokers["b1"], "worker": kit.workers["w1"]}
    cpu0 = faultkit.cpu_seconds(kit.redis.proc.pid)
    secs = wait_until_drained(kit, t0, timeout)
    cpu = {k: faultkit.cpu_seconds(p.pid) for k, p in procs.items()}
    cpu["redis"] -= cpu0
    for p in (kit.brokers["b1"], kit.workers["w1"]):
        rc, _ = p.stop()
        if rc != 0:
            raise Failure(f"{p.name} exited {rc} on SIGTERM after a drain")
    return secs, cpu


def _cpu_ratio(runs):
    """CPU seconds of the best poisoned drain over the best clean one."""
    best = {k: min(sum(c.values()) for _, c in v) for k, v in runs.items()}
    return best["poison"] / best["clean"]


def fresh_tailer(kit, instances=faultkit.CHANNELS):
    """A sink tailer that starts at the sinks' current ends: lines written
    before (earlier phases) would otherwise be read, and stamped late, in
    its first poll."""
    paths = [kit.sink(i) for i in instances]
    t = faultkit.Tailer(paths)
    for p in paths:
        try:
            t.offsets[p] = os.path.getsize(p)
        except FileNotFoundError:
            pass
    t.start()
    return t


def wait_ready(kit, names, timeout=30):
    """Waits until each named broker or worker says /readyz 200."""
    t0 = time.monotonic()
    for name in names:
        while faultkit.http_status(kit.metrics[name], "/readyz") != 200:
            if time.monotonic() - t0 > timeout:
                raise Failure(f"{name} not ready after {timeout} s")
            time.sleep(0.05)


@scenario(8, "poison")
def poison(kit, prof):
    """Undecodable input mixed into the load: garbage and refused reports in
    bb:reports (raw XADD and buurtbusctl post --no-validate), garbage
    DeliveryBatch entries in bb:out:push. Each reaches bb:dead exactly once
    with its reason and nothing stays pending; the good reports are all
    delivered once. Throughput: a fixed backlog of good reports drained
    with and without 15 % poison (alternating, the best of each); latency
    under a steady load with and without poison."""
    kit.load_directory()
    frac = 0.15
    poison = Poison(kit)
    good = []

    # A fixed backlog, drained with and without poison, alternating. The
    # wall-clock drain is what the requirement names, but on a shared
    # 2-core machine it varies 3x between identical drains; the CPU seconds
    # broker + worker + Redis spend per good report vary less. Both are
    # reported, not asserted (speed is measured, not asserted in a test:
    # the CI run's load decides too much).
    n = _size(prof, 4000, 10000)
    runs = {"clean": [], "poison": []}
    rounds = _size(prof, 2, 3)
    for k in range(rounds):
        for kind in ("clean", "poison"):
            ids = [f"pb{k}{kind[0]}-{i}" for i in range(n)]
            _post_backlog(kit, ids, poison if kind == "poison" else None, frac)
            runs[kind].append(_timed_drain(kit, 300))
            good += ids
    wall = {k: min(t for t, _ in v) for k, v in runs.items()}
    kit.figures["backlog_reports"] = n
    kit.figures["poison_share"] = frac
    for kind, v in runs.items():
        kit.figures[f"drain_{kind}_s"] = [round(t, 2) for t, _ in v]
        kit.figures[f"drain_{kind}_cpu_s"] = [round(sum(c.values()), 2) for _, c in v]
    kit.figures["throughput_clean_rps"] = round(n / wall["clean"])
    kit.figures["throughput_poison_rps"] = round(n / wall["poison"])
    kit.figures["throughput_ratio_wall"] = round(wall["clean"] / wall["poison"], 3)
    kit.figures["cost_ratio_cpu"] = round(_cpu_ratio(runs), 3)
    kit.figures["within_10_percent"] = _cpu_ratio(runs) <= 1.10 or wall["clean"] / wall["poison"] >= 0.9

    # A steady load, the first half clean, the second with poison.
    kit.start_worker("w1")
    kit.start_broker("b1")
    wait_ready(kit, ["w1", "b1"])
    tail = fresh_tailer(kit)
    rate = prof["rate"]
    half = prof["load"] / 2
    p_clean = kit.poster("sc", rate)
    time.sleep(half)
    posted = p_clean.finish()
    t_mid = time.time()
    p_dirty = kit.poster("sp", rate)
    t0 = time.monotonic()
    per_tick = rate / 10 * frac / (1 - frac)
    acc = 0.0
    while time.monotonic() - t0 < half:
        acc += per_tick
        k = int(acc)
        acc -= k
        if k:
            poison.inject(k - k // 3, k // 3)
        time.sleep(0.1)
    posted_dirty = p_dirty.finish()
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    seen = tail.finish()
    posted.update(posted_dirty)
    good += list(posted)
    lc = lat_figures(latencies(posted, seen, until=t_mid))
    lp = lat_figures(latencies(posted, seen, since=t_mid))
    kit.figures["latency_clean"] = lc
    kit.figures["latency_poison"] = lp
    kit.figures["p99_ratio"] = round(lp["p99_ms"] / max(1, lc["p99_ms"]), 2)

    # Every poison entry dead once, with a reason; none pending.
    for p in list(kit.brokers.values()) + list(kit.workers.values()):
        if not p.running():
            raise Failure(f"{p.name} is gone (exit {p.p.returncode})")
    pending = {s: kit.r.xpending(s, g)["pending"] for s, g in
               (("bb:reports", "bb-brokers"), ("bb:out:push", "bb-workers"),
                ("bb:out:email", "bb-workers"))}
    kit.figures["pending"] = pending
    if any(pending.values()):
        raise Failure(f"entries still pending: {pending}")
    kit.figures["poison_entries"] = len(poison.entries)
    kit.figures["dead_by_reason"] = poison.check(dead_entries(kit.r))
    # Read at most once each: the broker and the worker log each dead letter
    # they make (rate-limited, so a count of lines is a lower bound); a
    # process re-reading a poison entry (a crash on it, no ack) logs it again.
    reads = {}
    for name, pat in (("b1", r'msg="dead letter" stream=(\S+) entry=(\S+)'),
                      ("w1", r'msg="batch to dead letters" stream=(\S+) entry=(\S+)')):
        for m in re.finditer(pat, kit.log_text(name)):
            reads[m.groups()] = reads.get(m.groups(), 0) + 1
    kit.figures["poison_reads_logged"] = sum(reads.values())
    again = {k: v for k, v in reads.items() if v > 1 and k in poison.entries}
    if again:
        raise Failure(f"{len(again)} poison entries handled more than once, "
                      f"e.g. {list(again.items())[:5]}")

    # The good reports: each delivered once per member and channel.
    l = kit.ledger(good)
    kit.figures.update({"reports": len(good), **l})
    if l["lost"] or l["duplicated"] or l["unexpected"]:
        raise Failure(f"ledger: {l}")
    outs = kit.broker_outputs()
    poison_out = sum(1 for s, _ in poison.entries if s == "bb:out:push")
    if outs["email"] != len(good) or outs["push"] != len(good) + poison_out:
        raise Failure(f"bb:out holds {outs} for {len(good)} reports (+{poison_out} poison in push)")


# ---- 9. a slow or failing provider -------------------------------------------------------------

def load_group(kit, gid, cell, uids, prefs, name="Buurtgroep", chunk=5000):
    """A group in cell with members uids, each wanting in-progress reports on
    prefs (a list, or a function uid -> list), with contact data as the app
    stores it (as Kit.load_directory does for group 1). Returns the seconds
    buurtbusctl load took."""
    prefs_of = prefs if callable(prefs) else (lambda uid: prefs)
    path = os.path.join(kit.dir, f"directory-{gid}.jsonl")
    with open(path, "w") as f:
        f.write('{"group":{"id":%d,"name":"%s","cells":["%s"],"location_precision":7}}\n'
                % (gid, name, cell))
        for uid in uids:
            f.write('{"user":{"id":%d,"screen_name":"Buur%d","locale":"nl",'
                    '"time_zone":"Europe/Amsterdam","prefs":{"in_progress":%s}}}\n'
                    '{"member":{"user":%d,"group":%d}}\n'
                    % (uid, uid, json.dumps(prefs_of(uid)), uid, gid))
    t0 = time.monotonic()
    kit.ctl(["load", path], timeout=3600)
    secs = time.monotonic() - t0
    uids = list(uids)
    for k in range(0, len(uids), chunk):
        pipe = kit.r.pipeline(transaction=False)
        for uid in uids[k:k + chunk]:
            pipe.hset(f"bb:user:{uid}", mapping={
                "email": f"buur{uid}@example.org", "push_token": f"tok{uid}",
                "push_platform": "file"})
        pipe.execute()
    return secs


class Provider:
    """slow_provider.py as a child process: a webhook receiver switched
    between ok, slow, 503 and blackhole."""

    def __init__(self, kit):
        here = os.path.dirname(os.path.abspath(__file__))
        portfile = os.path.join(kit.dir, "provider.port")
        log = open(os.path.join(kit.dir, "provider.log"), "ab")
        self.p = subprocess.Popen(["/usr/bin/python3", os.path.join(here, "slow_provider.py"),
                                   portfile], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        t0 = time.monotonic()
        while not os.path.exists(portfile):
            if time.monotonic() - t0 > 10 or self.p.poll() is not None:
                raise Failure("the stand-in provider did not start")
            time.sleep(0.05)
        with open(portfile) as f:
            self.port = int(f.read())

    def get(self, path):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.read()

    def mode(self, m, **q):
        qs = "&".join(f"{k}={v}" for k, v in q.items())
        self.get(f"/_mode/{m}" + (f"?{qs}" if qs else ""))

    def stats(self):
        return json.loads(self.get("/_stats"))

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def rss_mib(pid):
    """Resident set now, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@scenario(9, "slow-provider")
def slow_provider(kit, prof):
    """A third channel instance (inbox, read from bb:out:inbox) sends through
    the webhook plug-in to a stand-in provider that is switched, phase by
    phase, from answering at once to answering after 30 s, to 503 with
    Retry-After, to a black hole. Push and e-mail (the file plug-in, same
    worker) must keep flowing; the worker's memory and the slow instance's
    held batches stay bounded; the slow instance's deliveries end in bb:dead
    (retries_exhausted) within the retry budget; nothing is lost or doubled."""
    inbox_users = (MEMBERS_FIRST, MEMBERS_FIRST + 1)
    members = range(MEMBERS_FIRST, MEMBERS_FIRST + kit.members)
    load_group(kit, 1, faultkit.GROUP_CELL, members,
               lambda u: ["push", "email", "inbox"] if u in inbox_users else ["push", "email"],
               name="Buurtpreventie Noord")
    provider = Provider(kit)
    try:
        _slow_provider(kit, prof, provider, inbox_users)
    finally:
        try:
            kit.figures["provider"] = {k: v for k, v in provider.stats().items()
                                       if k != "ok_ids"}
        except OSError:
            pass
        provider.stop()


def _slow_provider(kit, prof, provider, inbox_users):
    secret = os.path.join(kit.dir, "webhook.secret")
    with open(secret, "w") as f:
        f.write("fault-suite-secret\n")
    max_inflight, concurrency, budget_s = 16, 4, 6
    instances = ("push", "email", "inbox")
    kit.start_worker("w1", instances=instances, extra=(
        f"max_inflight {max_inflight}\nretry_budget {budget_s}s\n"
        "channel.inbox.plugin webhook\n"
        f"channel.inbox.url http://127.0.0.1:{provider.port}/hook\n"
        f"channel.inbox.secret_file \"{secret}\"\n"
        "channel.inbox.timeout 2s\n"
        f"channel.inbox.concurrency {concurrency}\n"
        "channel.inbox.breaker_failures 5\nchannel.inbox.breaker_cooldown 1s\n"))
    kit.start_broker("b1")
    wait_ready(kit, ["w1", "b1"])
    worker = kit.workers["w1"]
    tail = fresh_tailer(kit)
    phase_s = _size(prof, 8, 45)
    rate = _size(prof, 100, 200)
    phases = [("baseline", "ok", {}), ("slow_30s", "slow", {"delay": 30}),
              ("503", "503", {"after": 1}), ("blackhole", "blackhole", {})]
    marks, samples = [], {}
    poster = kit.poster("sl", rate)
    for name, mode, q in phases:
        provider.mode(mode, **q)
        marks.append((name, time.time()))
        t0 = time.monotonic()
        smp = samples.setdefault(name, {"held": 0, "later": 0, "rss": 0.0})
        while time.monotonic() - t0 < phase_s:
            held = kit.r.xpending("bb:out:inbox", "bb-workers")["pending"] \
                if kit.r.exists("bb:out:inbox") else 0
            smp["held"] = max(smp["held"], held)
            smp["later"] = max(smp["later"], kit.r.zcard("bb:later:inbox"))
            smp["rss"] = max(smp["rss"], rss_mib(worker.pid))
            time.sleep(0.2)
    posted = poster.finish()
    t_end = time.time()
    marks.append(("end", t_end))

    # Push and e-mail drain at once.
    kit.figures["drain_push_email_s"] = round(kit.wait_drained(timeout=120), 1)
    seen = tail.finish()
    if not worker.running():
        raise Failure(f"the worker is gone (exit {worker.p.returncode})")
    kit.check_ledger(posted)  # push and e-mail: each delivery exactly once

    # Push and e-mail latency per phase, against the baseline.
    lat = {}
    for (name, t_from), (_, t_to) in zip(marks, marks[1:]):
        lat[name] = lat_figures(latencies(posted, seen, since=t_from, until=t_to))
    base99 = max(1, lat["baseline"]["p99_ms"])
    kit.figures["push_email_latency"] = lat
    kit.figures["p99_vs_baseline"] = {k: round(v["p99_ms"] / base99, 2) for k, v in lat.items()}
    kit.figures["held_batches_max"] = {k: v["held"] for k, v in samples.items()}
    kit.figures["later_max"] = {k: v["later"] for k, v in samples.items()}
    kit.figures["worker_rss_mib"] = {k: round(v["rss"], 1) for k, v in samples.items()}
    kit.figures["worker_peak_rss_mib"] = round(faultkit.peak_rss_mib(worker.pid), 1)
    if lat["baseline"]["n"] == 0:
        raise Failure("nothing went through in the baseline phase")

    # Bounds: batches held by the slow instance, requests open at the
    # provider (twice the concurrency: a timed-out request's connection may
    # still look open to the stand-in when the next one starts), memory.
    held = max(v["held"] for v in samples.values())
    if held > max_inflight:
        raise Failure(f"the slow instance held {held} batches (max_inflight {max_inflight})")
    max_open = provider.stats()["max_open"]
    if max_open > 2 * concurrency:
        raise Failure(f"{max_open} requests open at the provider at once "
                      f"(concurrency {concurrency})")
    rss = kit.figures["worker_rss_mib"]
    if max(rss.values()) > rss["baseline"] + 64:
        raise Failure(f"worker RSS grew from {rss['baseline']:.0f} MiB to "
                      f"{max(rss.values()):.0f} MiB with the provider failing")
    # Push and e-mail kept flowing: the 2x target is reported; a stall
    # behind the slow instance (seconds, like its timeouts) fails.
    worst = max(v["p99_ms"] for k, v in lat.items() if k != "baseline")
    if worst > max(4 * base99, 2000):
        raise Failure(f"push/e-mail p99 {worst} ms with the provider failing, "
                      f"baseline {base99} ms")

    # The inbox deliveries still failing must reach bb:dead within the
    # retry budget (plus the breaker's cool-down, a send's timeout and
    # the time to write them), the provider still a black hole.
    t0 = time.monotonic()
    try:
        kit.figures["drain_inbox_s"] = round(
            wait_until_drained(kit, t0, budget_s + 30, instances=instances), 1)
    except Failure as e:
        kit.figures["inbox_left"] = {"later": kit.r.zcard("bb:later:inbox"),
                                     "unfinished": kit.unfinished(instances=instances),
                                     "dead": kit.dead()}
        raise Failure(f"slow instance: {e} (retry_budget {budget_s} s): deliveries parked by "
                      "the open breaker never reach bb:dead")

    # Every inbox delivery has exactly one final outcome: OK (the provider
    # said 200) or retries_exhausted with its dead letter.
    rec = receipts_by_delivery(kit.r, CHANNEL_NUMBER["inbox"])
    dead = {}
    for d in dead_entries(kit.r):
        if d.get("stream") == b"bb:out:inbox":
            did = d.get("delivery", b"").decode()
            dead.setdefault(did, []).append(d.get("reason", b"").decode())
    outcome = {"ok": 0, "dead": 0}
    for rid in posted:
        for uid in inbox_users:
            did = f"r:{rid}:3:{uid}"
            final = [(o, r) for o, r in rec.get(did, []) if o != 2]  # 2: OUTCOME_RETRY
            ok = sum(1 for o, _ in final if o == 1)
            ex = sum(1 for o, r in final if o == 3 and r == "retries_exhausted")
            if len(final) != 1 or ok + ex != 1:
                raise Failure(f"{did}: final receipts {final}, dead letters {dead.get(did)}")
            if ex and dead.get(did) != ["retries_exhausted"]:
                raise Failure(f"{did}: retries exhausted but dead letters {dead.get(did)}")
            outcome["ok" if ok else "dead"] += 1
    kit.figures["inbox_outcomes"] = outcome
    if outcome["dead"] == 0 or outcome["ok"] == 0:
        raise Failure(f"inbox outcomes {outcome}: expected some sent (baseline) and some dead")


# ---- 10. a fan-out storm ------------------------------------------------------------------------

STORM_GROUP = 2
STORM_FIRST = 200001
STORM_LAT, STORM_LON = 52.3731, 4.8922  # Amsterdam: far from group 1's cell


def geohash(lat, lon, precision):
    alphabet = "0123456789bcdefghjkmnpqrstuvwxyz"
    lo = [-90.0, -180.0]
    hi = [90.0, 180.0]
    bits, even, out, ch = 0, True, [], 0
    while len(out) < precision:
        k = 1 if even else 0
        v = lon if even else lat
        mid = (lo[k] + hi[k]) / 2
        ch <<= 1
        if v >= mid:
            ch |= 1
            lo[k] = mid
        else:
            hi[k] = mid
        even = not even
        bits += 1
        if bits == 5:
            out.append(alphabet[ch])
            bits, ch = 0, 0
    return "".join(out)


@scenario(10, "fan-out-storm")
def fan_out_storm(kit, prof):
    """A group of 100,000 members (each wanting in-progress reports in the
    in-app inbox only: a third file instance) gets one report while the
    standard group's reports flow at a steady rate. Every member gets it
    exactly once; the normal reports keep flowing (their p99 during the
    storm against before it); the broker's and worker's peak memory stay
    bounded."""
    n = _size(prof, 100000, 100000)
    kit.load_directory()
    storm_uids = range(STORM_FIRST, STORM_FIRST + n)
    cell = geohash(STORM_LAT, STORM_LON, 5)
    if cell in (faultkit.GROUP_CELL, geohash(51.6901, 5.3019, 5)):
        raise Failure("the storm group's cell holds the normal reports' place")
    kit.figures["members"] = n
    kit.figures["directory_load_s"] = round(load_group(kit, STORM_GROUP, cell, storm_uids,
                                                       ["inbox"], name="Storm"), 1)
    kit.start_worker("w1", instances=("push", "email", "inbox"), extra=(
        f"channel.inbox.plugin file\nchannel.inbox.path \"{kit.sink('inbox')}\"\n"))
    t0 = time.monotonic()
    kit.start_broker("b1")
    wait_ready(kit, ["w1", "b1"], timeout=300)
    kit.figures["broker_ready_s"] = round(time.monotonic() - t0, 1)
    broker, worker = kit.brokers["b1"], kit.workers["w1"]
    tail = fresh_tailer(kit)
    storm_tail = fresh_tailer(kit, ("inbox",))
    phase_s = _size(prof, 8, 40)
    rate = prof["rate"]
    poster = kit.poster("fs", rate)

    time.sleep(phase_s)
    rss_before = {"broker": rss_mib(broker.pid), "worker": rss_mib(worker.pid)}
    t_storm = time.time()
    storm_id = "storm-1"
    post_lines(kit, [
        '{"id":"%s","author_id":%d,"author_screen_name":"Melder","group_id":%d,'
        '"lat":%.4f,"lon":%.4f,"category":"fire","urgency":"in_progress",'
        '"source":"municipality","text":"Grote brand, ramen en deuren sluiten",'
        '"anonymity":"screen_name","locale":"nl"}'
        % (storm_id, STORM_FIRST, STORM_GROUP, STORM_LAT, STORM_LON)], no_validate=False)
    # The storm lasts until its last line is written; the normal load goes on.
    t0 = time.monotonic()
    while len(storm_tail.seen) < n - 1 and time.monotonic() - t0 < 300:  # the author is skipped
        time.sleep(0.1)
    t_storm_end = time.time()
    time.sleep(max(0.0, phase_s - (time.monotonic() - t0)))
    t_after = time.time()
    time.sleep(phase_s / 2)
    posted = poster.finish()
    kit.figures["drain_s"] = round(kit.wait_drained(timeout=300,
                                                    instances=("push", "email", "inbox")), 1)
    seen = tail.finish()
    storm_seen = storm_tail.finish()
    kit.figures["storm_deliveries_s"] = round(t_storm_end - t_storm, 1)
    if storm_seen:
        kit.figures["storm_first_ms"] = round(1000 * (min(storm_seen.values()) - t_storm))
        kit.figures["storm_rate_per_s"] = round(len(storm_seen) / max(0.001, max(
            storm_seen.values()) - t_storm))
    kit.figures["storm_batches"] = kit.r.xlen("bb:out:inbox")

    lat = {"before": lat_figures(latencies(posted, seen, until=t_storm)),
           "storm": lat_figures(latencies(posted, seen, since=t_storm, until=t_storm_end)),
           "after": lat_figures(latencies(posted, seen, since=t_after))}
    kit.figures["normal_latency"] = lat
    kit.figures["p99_storm_vs_before"] = round(
        lat["storm"]["p99_ms"] / max(1, lat["before"]["p99_ms"]), 2)
    peak = {"broker": faultkit.peak_rss_mib(broker.pid),
            "worker": faultkit.peak_rss_mib(worker.pid)}
    kit.figures["rss_before_mib"] = {k: round(v, 1) for k, v in rss_before.items()}
    kit.figures["peak_rss_mib"] = {k: round(v, 1) for k, v in peak.items()}

    for p in (broker, worker):
        if not p.running():
            raise Failure(f"{p.name} is gone (exit {p.p.returncode})")
    # The normal reports: each delivered once; the storm: each member once
    # (its author, a member too, is not told of their own report).
    kit.check_ledger(posted, outputs_per_channel=kit.r.xlen("bb:reports") - 1)
    l = kit.ledger([storm_id], instances=("inbox",),
                   members=[u for u in storm_uids if u != STORM_FIRST])
    kit.figures["storm_ledger"] = l
    if l["lost"] or l["duplicated"] or l["unexpected"]:
        raise Failure(f"storm ledger: {l}")
    # Bounded memory: the storm's batches are written and sent in pieces,
    # not held whole (100,000 deliveries fit in a few MiB; 64 MiB more
    # than before the storm is a leak or an unbounded queue).
    for k in peak:
        if peak[k] > rss_before[k] + 64:
            raise Failure(f"{k} peak RSS {peak[k]:.0f} MiB against {rss_before[k]:.0f} MiB "
                          "before the storm")
    # The normal reports kept flowing. Waiting behind the storm would put
    # their p99 near its length (10-15 s here); the ratio to before is
    # reported, only a stall of seconds fails.
    storm_s = t_storm_end - t_storm
    if lat["storm"]["n"] == 0:
        raise Failure("no normal report was acknowledged during the storm")
    if lat["storm"]["p99_ms"] > max(3000, 10 * lat["before"]["p99_ms"]):
        raise Failure(f"normal reports p99 {lat['storm']['p99_ms']} ms during a storm of "
                      f"{storm_s:.1f} s (before: {lat['before']['p99_ms']} ms)")


# ---- 11. the same report id twice -------------------------------------------------------------

@scenario(11, "duplicate-report")
def duplicate_report(kit, prof):
    """Every report is posted twice with the same id (an app retrying after
    a lost reply): each member hears about it once per channel."""
    kit.load_directory()
    kit.start_broker("b1")
    kit.start_worker("w1")
    posted, _ = drive(kit, prof, "dr", rate=prof["rate"] // 2, duplicate=True)
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    outs = kit.broker_outputs()
    kit.figures["entries_posted"] = 2 * len(posted)
    kit.check_ledger(posted, outputs_per_channel=outs["push"])
    if outs["push"] not in (len(posted), 2 * len(posted)):
        raise Failure(f"{outs['push']} batches for {len(posted)} reports posted twice")
    kit.figures["batches_per_report"] = outs["push"] / len(posted)
    reasons = kit.receipt_reasons()
    kit.figures["duplicates_skipped_by_workers"] = reasons.get("already_sent", 0)
