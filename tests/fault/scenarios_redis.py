"""Fault scenarios: Redis killed, unreachable, full, trimmed.

Threads: the main thread (run.py calls each scenario in turn).
"""

import signal
import time

import faultkit
from faultkit import Failure, drive, scenario

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




# ---- 6. Redis out of memory ----------------------------------------------------------------------

@scenario(6, "redis-oom")
def redis_oom(kit, prof):
    """Redis runs out of memory with work inside it: broker and worker are
    paused (SIGSTOP) while reports pile up in bb:reports, maxmemory is set
    below what Redis holds, and both are resumed, so every write they try
    (the brokers' commits, the workers' records, receipts and acks, the
    app's posts) answers OOM. Nothing may be acked without its outputs;
    after the outage maxmemory is lifted and all recovers."""
    kit.load_directory()
    kit.start_broker("b1", extra="trim_interval 0\n")  # nothing frees memory by itself
    kit.start_worker("w1")
    res = {}

    def during(t):
        if "done" in res or t < 2.0:
            return
        res["done"] = True
        procs = (kit.brokers["b1"], kit.workers["w1"])
        for p in procs:
            p.send(signal.SIGSTOP)
        time.sleep(1.0)  # the poster fills bb:reports meanwhile
        used = int(kit.r.info("memory")["used_memory"])
        kit.r.config_set("maxmemory", max(used - 1024 * 1024, used // 2))
        t0 = time.monotonic()
        try:
            kit.r.set("bb:fault:probe", "x")
        except Exception as e:  # noqa: BLE001 (the OOM error is the signal)
            res["oom"] = "OOM" in str(e)
        for p in procs:
            p.send(signal.SIGCONT)
        time.sleep(prof["outage"])
        res["refusals"] = kit.log_text("b1").count("OOM") + kit.log_text("w1").count("OOM")
        kit.r.config_set("maxmemory", 0)
        res["oom_s"] = time.monotonic() - t0

    posted, poster = drive(kit, prof, "om", during)
    if not res.get("oom"):
        raise Failure("Redis did not refuse a write after maxmemory was lowered")
    kit.figures["oom_s"] = round(res["oom_s"], 1)
    kit.figures["oom_lines_logged"] = res["refusals"]
    kit.figures["posts_refused"] = poster.failures
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    if res["refusals"] == 0:
        raise Failure("neither broker nor worker met an OOM refusal")
    kit.check_ledger(posted)


# ---- 7. trimming --------------------------------------------------------------------------------

@scenario(7, "trimming")
def trimming(kit, prof):
    """The brokers' retention trims every 500 ms what all groups have read
    and acked. A worker stopped (SIGSTOP) for 5 s lags behind it: it must
    lose nothing, and the streams must end up short. Then the worker is
    stopped again and bb:out:push is trimmed by hand under it (XTRIM
    MAXLEN 0): an alert and dead letters must follow, not silence."""
    kit.load_directory()
    kit.start_broker("b1", extra="trim_interval 500ms\n")
    kit.start_worker("w1")
    state = {}

    def during(t):
        if "paused" not in state and t >= 2.0:
            state["paused"] = True
            kit.workers["w1"].send(signal.SIGSTOP)
            time.sleep(5.0)
            kit.workers["w1"].send(signal.SIGCONT)

    posted, _ = drive(kit, prof, "tr", during)
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    time.sleep(1.5)  # a few retention rounds
    lengths = {s: kit.r.xlen(s) for s in ("bb:reports", "bb:out:push", "bb:out:email")}
    kit.figures["stream_lengths_after"] = lengths
    kit.check_ledger(posted, outputs_per_channel=-1)
    if max(lengths.values()) > 500:
        raise Failure(f"streams not trimmed after the drain: {lengths}")
    if kit.dead():
        raise Failure(f"dead letters from a safe trim: {kit.dead()}")

    # Outside buurtbus: the stream trimmed under a stopped worker.
    kit.workers["w1"].send(signal.SIGSTOP)
    p = kit.poster("tx", prof["rate"])
    time.sleep(3.0)
    extra = p.finish()
    kit.r.xtrim("bb:out:push", maxlen=0, approximate=False)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and "entries_trimmed_unread" not in kit.dead():
        time.sleep(0.1)
    kit.figures["alert_after_s"] = round(time.monotonic() - t0, 2)
    kit.workers["w1"].send(signal.SIGCONT)
    kit.wait_drained(instances=("email",))
    time.sleep(1.0)
    dead = kit.dead()
    kit.figures["dead_letters"] = dead
    lost = kit.ledger(extra, instances=("push",))["lost"]
    kit.figures["push_lost_to_the_hand_trim"] = lost
    if "entries_trimmed_unread" not in dead:
        raise Failure("unread entries trimmed by hand and no alert")
    for _, f in kit.r.xrange("bb:dead"):
        if f[b"reason"] == b"entries_trimmed_unread":
            kit.figures["alert_says_lost_at_least"] = int(f[b"lost"])
    email = kit.ledger(list(posted) + list(extra), instances=("email",))
    if email["lost"] or email["duplicated"]:
        raise Failure(f"email ledger after the hand trim of push: {email}")
