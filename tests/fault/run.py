#!/usr/bin/python3
"""The fault suite: each scenario starts a real Redis, brokers and workers
(the file plug-in as sink), drives load, injects its fault and checks the
delivery ledger (faultkit.py): lost = 0 and duplicated = 0, plus what the
scenario itself promises. Every scenario prints its figures.

    tests/fault/run.py --build build [--profile short|long] [--keep] [SCENARIO...]

The short profile (CI) runs each scenario for seconds; the long one for
minutes. Exit status 0 when every scenario passed.

Threads: the main thread runs the scenarios one after another.
"""

import argparse
import json
import os
import random
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultkit  # noqa: E402
from faultkit import Failure  # noqa: E402

PROFILES = {
    # seconds of load per scenario, reports per second, the Redis outage
    "short": {"load": 12, "rate": 300, "outage": 4, "partition": 30},
    "long": {"load": 180, "rate": 500, "outage": 20, "partition": 30},
}

SCENARIOS = {}


def scenario(number, name):
    def register(fn):
        SCENARIOS[name] = (number, fn)
        return fn
    return register


def drive(kit, prof, prefix, during=None, rate=None, **poster_kw):
    """Posts for the profile's load time, calling during(elapsed) about
    every 100 ms; returns the report ids posted."""
    p = kit.poster(prefix, rate or prof["rate"], **poster_kw)
    t0 = time.monotonic()
    while time.monotonic() - t0 < prof["load"]:
        if during:
            during(time.monotonic() - t0)
        time.sleep(0.1)
    return p.finish(), p


# ---- 1. kill -9 of brokers ---------------------------------------------------------------------

@scenario(1, "broker-kill")
def broker_kill(kit, prof):
    """Three brokers; every 1-3 s one of them is killed with SIGKILL at a
    random moment (after a read, between batch writes, before the ack:
    wherever it happens to be under load) and started again."""
    kit.load_directory()
    names = ["b1", "b2", "b3"]
    for n in names:
        kit.start_broker(n)
    kit.start_worker("w1")
    kills = []
    state = {"next": 1.0}

    def during(t):
        if t >= state["next"]:
            victim = random.choice(names)
            kit.brokers[victim].kill9()
            kills.append(victim)
            time.sleep(random.uniform(0.05, 0.5))
            kit.start_broker(victim)
            state["next"] = t + random.uniform(1.0, 3.0)

    posted, _ = drive(kit, prof, "bk", during)
    kit.figures["kills"] = len(kills)
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    kit.check_ledger(posted)


# ---- 2. a broker paused past claim_idle -------------------------------------------------------

@scenario(2, "broker-pause")
def broker_pause(kit, prof):
    """Two brokers; one is stopped with SIGSTOP for longer than claim_idle
    (2 s) while it holds entries, the other claims them, then the first is
    resumed: its commits must find the entries claimed and write nothing."""
    kit.load_directory()
    kit.start_broker("b1")
    kit.start_broker("b2")
    kit.start_worker("w1")
    pauses = []
    state = {"next": 2.0}

    def during(t):
        if t >= state["next"]:
            kit.brokers["b1"].send(signal.SIGSTOP)
            time.sleep(5.0)
            kit.brokers["b1"].send(signal.SIGCONT)
            pauses.append(5.0)
            state["next"] = t + 5.0 + 2.0

    posted, _ = drive(kit, prof, "bp", during)
    kit.figures["pauses"] = len(pauses)
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    kit.check_ledger(posted)
    skipped = kit.log_text("b1").count("claimed by another")
    kit.figures["commits_skipped_claimed"] = skipped


# ---- 3. kill -9 of a worker mid-send ---------------------------------------------------------

@scenario(3, "worker-kill")
def worker_kill(kit, prof):
    """One worker, killed with SIGKILL every 1-3 s in the middle of its
    sends and started again: deliveries it handed over without recording
    the outcome are resent to the (idempotent) file plug-in, which finds
    the ones it wrote; none lost, none doubled."""
    kit.load_directory()
    kit.start_broker("b1")
    kit.start_worker("w1")
    kills = []
    state = {"next": 1.0}

    def during(t):
        if t >= state["next"]:
            kit.workers["w1"].kill9()
            kills.append(t)
            time.sleep(random.uniform(0.05, 0.3))
            kit.start_worker("w1")
            state["next"] = t + random.uniform(1.0, 3.0)

    posted, _ = drive(kit, prof, "wk", during)
    kit.figures["kills"] = len(kills)
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    kit.check_ledger(posted)
    receipts = kit.receipt_reasons()
    kit.figures["found_written_on_resend"] = receipts.get("already_written", 0)
    kit.figures["unconfirmed_skipped"] = receipts.get("unconfirmed", 0)
    if receipts.get("unconfirmed", 0):
        raise Failure("deliveries skipped as unconfirmed with an idempotent plug-in")


# ---- 4. Redis killed and restarted -----------------------------------------------------------

@scenario(4, "redis-restart")
def redis_restart(kit, prof):
    """Redis (appendonly, appendfsync always) killed with SIGKILL under
    load and started again after the outage: brokers and workers say not
    ready while it is down, reconnect with backoff (their CPU while down
    is measured: no busy loop), and everything acknowledged is delivered."""
    kit.load_directory()
    kit.start_broker("b1")
    kit.start_broker("b2")
    kit.start_worker("w1")
    res = {}

    def during(t):
        if "killed" in res or t < 3.0:
            return
        res["killed"] = True
        kit.redis.kill9()
        down_t0 = time.monotonic()
        procs = [kit.brokers["b1"], kit.brokers["b2"], kit.workers["w1"]]
        cpu0 = [faultkit.cpu_seconds(p.pid) for p in procs]
        time.sleep(min(2.0, prof["outage"] / 2))
        ready = {p.name: faultkit.http_status(kit.metrics[p.name], "/readyz") for p in procs}
        live = {p.name: faultkit.http_status(kit.metrics[p.name], "/healthz") for p in procs}
        time.sleep(max(0.0, prof["outage"] - (time.monotonic() - down_t0)))
        cpu = [faultkit.cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0)]
        down = time.monotonic() - down_t0
        kit.redis.start()
        up_t0 = time.monotonic()
        res.update(ready=ready, live=live, cpu=max(cpu) / down, down=down)
        # Back in service: every program ready again.
        while time.monotonic() - up_t0 < 30:
            if all(faultkit.http_status(kit.metrics[p.name], "/readyz") == 200 for p in procs):
                break
            time.sleep(0.1)
        res["recovery"] = time.monotonic() - up_t0

    posted, poster = drive(kit, prof, "rr", during)
    kit.figures["outage_s"] = round(res["down"], 1)
    kit.figures["readyz_while_down"] = res["ready"]
    kit.figures["max_cpu_while_down"] = f"{100 * res['cpu']:.1f}%"
    kit.figures["recovery_s"] = round(res["recovery"], 2)
    kit.figures["posts_refused_while_down"] = poster.failures
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    if any(v != 503 for v in res["ready"].values()):
        raise Failure(f"/readyz while Redis was down: {res['ready']}")
    if any(v != 200 for v in res["live"].values()):
        raise Failure(f"/healthz while Redis was down: {res['live']}")
    if res["cpu"] > 0.2:
        raise Failure(f"a process used {100 * res['cpu']:.0f}% CPU while Redis was down")
    kit.check_ledger(posted)


# ---- 5. Redis unreachable without a clean close -----------------------------------------------

@scenario(5, "redis-partition")
def redis_partition(kit, prof):
    """Every program reaches Redis through a relay that stops forwarding
    for 30 s without closing anything (a link dropping traffic): each must
    notice within 20 s (/readyz says 503), then recover."""
    kit.load_directory()
    hole = faultkit.Blackhole(kit.redis.port)
    kit.redis_addr = f"127.0.0.1:{hole.port}"
    kit.start_broker("b1")
    kit.start_worker("w1")
    procs = [kit.brokers["b1"], kit.workers["w1"]]
    res = {}

    def during(t):
        if "done" in res or t < 2.0:
            return
        res["done"] = True
        hole.dropping.set()
        t0 = time.monotonic()
        detected = {}
        while time.monotonic() - t0 < prof["partition"]:
            for p in procs:
                if p.name not in detected and \
                        faultkit.http_status(kit.metrics[p.name], "/readyz") == 503:
                    detected[p.name] = time.monotonic() - t0
            time.sleep(0.2)
        hole.dropping.clear()
        t1 = time.monotonic()
        while time.monotonic() - t1 < 60:
            if all(faultkit.http_status(kit.metrics[p.name], "/readyz") == 200 for p in procs):
                break
            time.sleep(0.1)
        res.update(detected=detected, recovery=time.monotonic() - t1)

    # The poster talks to Redis directly: reports keep arriving meanwhile.
    posted, _ = drive(kit, prof, "rp", during)
    kit.figures["partition_s"] = prof["partition"]
    kit.figures["detected_s"] = {k: round(v, 1) for k, v in res["detected"].items()}
    kit.figures["recovery_s"] = round(res["recovery"], 2)
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    for p in procs:
        if res["detected"].get(p.name, 99) > 20:
            raise Failure(f"{p.name} did not notice the partition within 20 s")
    kit.check_ledger(posted)


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


# ---- 12. SIGTERM and SIGHUP under load ---------------------------------------------------------

@scenario(12, "signals")
def signals(kit, prof):
    """Under load: SIGHUP to every broker and worker (a reload), then
    SIGTERM to one broker and the worker, each replaced at once: each
    exits 0 within shutdown_grace, and nothing is lost or doubled."""
    kit.load_directory()
    kit.start_broker("b1")
    kit.start_broker("b2")
    kit.start_worker("w1")
    res = {"exits": []}
    state = {"next": 2.0, "n": 0}

    def during(t):
        if t < state["next"]:
            return
        state["next"] = t + 2.5
        state["n"] += 1
        if state["n"] % 2 == 1:
            for p in list(kit.brokers.values()) + list(kit.workers.values()):
                p.send(signal.SIGHUP)
            res["hups"] = res.get("hups", 0) + 1
            return
        for name, start, group in (("b1", kit.start_broker, kit.brokers),
                                   ("w1", kit.start_worker, kit.workers)):
            rc, secs = group[name].stop(signal.SIGTERM, 15)
            res["exits"].append((name, rc, round(secs, 2)))
            start(name)

    posted, _ = drive(kit, prof, "sg", during)
    kit.figures["sighups"] = res.get("hups", 0)
    kit.figures["sigterm_exits"] = res["exits"]
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    for name, rc, secs in res["exits"]:
        if rc != 0 or secs > 10:
            raise Failure(f"{name} exited {rc} after {secs} s on SIGTERM")
    for p in list(kit.brokers.values()) + list(kit.workers.values()):
        if not p.running():
            raise Failure(f"{p.name} is gone after SIGHUP")
    kit.check_ledger(posted)


# ---- running them ------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", required=True, help="the CMake build directory")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="short")
    ap.add_argument("--keep", action="store_true", help="keep every scenario's directory")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("scenarios", nargs="*", help=f"names (default: all): {', '.join(SCENARIOS)}")
    args = ap.parse_args()
    prof = PROFILES[args.profile]
    names = args.scenarios or sorted(SCENARIOS, key=lambda n: SCENARIOS[n][0])
    results, failed = [], []
    for name in names:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name}")
        number, fn = SCENARIOS[name]
        kit = faultkit.Kit(os.path.abspath(args.build), name, keep=args.keep)
        t0 = time.monotonic()
        ok = True
        try:
            kit.start()
            fn(kit, prof)
        except Exception as e:  # a scenario's failure, or the kit's
            ok = False
            kit.failed = True
            msg = str(e) if isinstance(e, Failure) else traceback.format_exc()
            kit.figures["error"] = msg
        finally:
            kit.close()
        secs = time.monotonic() - t0
        line = " ".join(f"{k}={json.dumps(v) if not isinstance(v, (int, float)) else v}"
                        for k, v in kit.figures.items() if k != "error")
        print(f"{number:2d} {name:18s} {'ok    ' if ok else 'FAILED'} {secs:5.1f}s  {line}",
              flush=True)
        if not ok:
            print("   " + kit.figures["error"].replace("\n", "\n   "), flush=True)
            failed.append(name)
        results.append({"scenario": name, "number": number, "ok": ok, "seconds": round(secs, 1),
                        **kit.figures})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"profile": args.profile, "results": results}, f, indent=1)
    if failed:
        print(f"fault scenarios failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
