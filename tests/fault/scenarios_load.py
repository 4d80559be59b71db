"""Fault scenarios: hostile or heavy input (poison entries, a slow provider, a fan-out storm, a report posted twice).

Threads: the main thread (run.py calls each scenario in turn); the
tailer and poster threads of faultkit.
"""

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
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
                kind, line = random.choice([
                    ("ctl_no_author", self.kit.report_json(rid).replace('"author_id":1', '"author_id":0')),
                    ("ctl_no_category", self.kit.report_json(rid).replace('"category":"burglary",', '')),
                    ("ctl_unknown_group", self.kit.report_json(rid, group=424242)),
                    ("ctl_no_urgency", self.kit.report_json(rid).replace('"urgency":"in_progress",', '')),
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
                r = f"{key[0]}:{reason or '(none)'}"
                reasons[r] = reasons.get(r, 0) + 1
                if not reason:
                    raise Failure(f"dead letter of {key} ({self.entries[key]}) has no reason")
            else:
                stray.append((key, reason))
        missing = [(k, v) for k, v in self.entries.items() if count.get(k, 0) == 0]
        twice = [(k, v, count[k]) for k, v in self.entries.items() if count.get(k, 0) > 1]
        if missing:
            raise Failure(f"{len(missing)} of {len(self.entries)} poison entries not in bb:dead, "
                          f"e.g. {missing[:5]}")
        if twice:
            raise Failure(f"{len(twice)} poison entries in bb:dead more than once, e.g. {twice[:5]}")
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
    seconds until everything is delivered, then stops both."""
    kit.start_worker("w1")
    t0 = time.monotonic()
    kit.start_broker("b1")
    secs = wait_until_drained(kit, t0, timeout)
    for p in (kit.brokers["b1"], kit.workers["w1"]):
        rc, _ = p.stop()
        if rc != 0:
            raise Failure(f"{p.name} exited {rc} on SIGTERM after a drain")
    return secs


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

    # A fixed backlog, drained with and without poison: the best of each.
    n = _size(prof, 1500, 6000)
    times = {"clean": [], "poison": []}
    rounds = _size(prof, 2, 3)
    for k in range(rounds + 1):
        if k == rounds:
            # One more pair only when the first ones say "clearly slower":
            # a busy machine makes single drains noisy.
            if min(times["poison"]) <= 1.10 * min(times["clean"]):
                break
        for kind in ("clean", "poison"):
            ids = [f"pb{k}{kind[0]}-{i}" for i in range(n)]
            _post_backlog(kit, ids, poison if kind == "poison" else None, frac)
            times[kind].append(_timed_drain(kit, 300))
            good += ids
    best_c, best_p = min(times["clean"]), min(times["poison"])
    kit.figures["backlog_reports"] = n
    kit.figures["drain_clean_s"] = [round(t, 2) for t in times["clean"]]
    kit.figures["drain_poison_s"] = [round(t, 2) for t in times["poison"]]
    kit.figures["throughput_clean_rps"] = round(n / best_c)
    kit.figures["throughput_poison_rps"] = round(n / best_p)
    kit.figures["throughput_ratio"] = round(best_c / best_p, 3)

    # A steady load, the first half clean, the second with poison.
    kit.start_worker("w1")
    kit.start_broker("b1")
    tail = kit.tailer()
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

    # The good reports: each delivered once per member and channel.
    l = kit.ledger(good)
    kit.figures.update({"reports": len(good), **l})
    if l["lost"] or l["duplicated"] or l["unexpected"]:
        raise Failure(f"ledger: {l}")
    outs = kit.broker_outputs()
    poison_out = sum(1 for s, _ in poison.entries if s == "bb:out:push")
    if outs["email"] != len(good) or outs["push"] != len(good) + poison_out:
        raise Failure(f"bb:out holds {outs} for {len(good)} reports (+{poison_out} poison in push)")

    # Throughput: only a clear regression fails (the best drains compared).
    if best_p > 1.10 * best_c:
        raise Failure(f"with {100 * frac:.0f}% poison the backlog drained in {best_p:.2f} s "
                      f"against {best_c:.2f} s clean: {100 * (best_p / best_c - 1):.0f}% slower")


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
