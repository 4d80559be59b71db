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
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultkit  # noqa: E402
from faultkit import PROFILES, SCENARIOS, Failure  # noqa: E402
import scenarios_crash  # noqa: E402,F401 (registers its scenarios)
import scenarios_load  # noqa: E402,F401 (registers its scenarios)
import scenarios_redis  # noqa: E402,F401 (registers its scenarios)

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
