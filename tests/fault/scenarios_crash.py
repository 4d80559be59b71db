"""Fault scenarios: processes killed, paused and signalled under load.

Threads: the main thread (run.py calls each scenario in turn).
"""

import os
import random
import signal
import time

from faultkit import Failure, drive, scenario

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

    def holds_entries():
        for c in kit.r.xpending("bb:reports", "bb-brokers").get("consumers") or []:
            if c["name"] in (b"b1", "b1") and int(c["pending"]) > 0:
                return True
        return False

    def during(t):
        if t >= state["next"]:
            # Stop it while it holds entries (read, not yet committed).
            for _ in range(200):
                kit.brokers["b1"].send(signal.SIGSTOP)
                if holds_entries():
                    break
                kit.brokers["b1"].send(signal.SIGCONT)
                time.sleep(0.005)
            time.sleep(5.0)
            kit.brokers["b1"].send(signal.SIGCONT)
            pauses.append(5.0)
            state["next"] = t + 5.0 + 2.0

    posted, _ = drive(kit, prof, "bp", during)
    kit.figures["pauses"] = len(pauses)
    kit.figures["drain_s"] = round(kit.wait_drained(), 1)
    kit.check_ledger(posted)
    # What the pause did: entries b2 claimed from b1, and b1's commits that
    # found their entry claimed (they wrote nothing: one batch per report).
    kit.figures["claimed_by_b2"] = int(kit.metric("b2", "bb_claimed_total") or 0)
    kit.figures["commits_skipped_by_b1"] = int(kit.metric("b1", "bb_commits_skipped_total") or 0)
    if kit.figures["claimed_by_b2"] == 0:
        raise Failure("b2 claimed nothing: the pause did not test the claim")


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



# ---- 12. SIGTERM and SIGHUP under load ---------------------------------------------------------

@scenario(12, "signals")
def signals(kit, prof):
    """Under load: SIGHUP to every broker and worker (a reload; the first
    time with changed files: a live option applied, one that needs a
    restart reported), then SIGTERM to one broker and the worker, each
    replaced at once: each exits 0 within shutdown_grace, and nothing is
    lost or doubled."""
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
            if state["n"] == 1:
                with open(os.path.join(kit.dir, "b2.conf"), "a") as f:
                    f.write("log_level debug\nblock 300ms\n")
                with open(os.path.join(kit.dir, "w1.conf"), "a") as f:
                    f.write("channel.push.rate 100000\n")
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
    for log, want in (("b2", 'msg="option reloaded" option=log_level'),
                      ("b2", 'takes effect after a restart" option=block'),
                      ("w1", 'msg="option reloaded" option=push.rate')):
        if want not in kit.log_text(log):
            raise Failure(f"{log}.log does not say {want!r} after SIGHUP")
    kit.check_ledger(posted)


