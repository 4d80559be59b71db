"""Fault scenarios: hostile or heavy input (poison entries, a slow provider, a fan-out storm, a report posted twice).

Threads: the main thread (run.py calls each scenario in turn).
"""


from faultkit import Failure, drive, scenario

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


