"""The e-mail peer: Apprise (Debian's python3-apprise) sending the same
e-mails to the same local SMTP server the smtp channel is measured against,
one notification per recipient, as an application using Apprise would.

    /usr/bin/python3 bench/peer_apprise.py --port PORT --count N [--json]

Prints e-mails per second (wall clock) and how many the library reported
sent. Runs with Debian's Python (/usr/bin/python3), where apprise lives.
"""
import argparse
import json
import logging
import time

import apprise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    logging.disable(logging.CRITICAL)
    ok = 0
    t0 = time.monotonic()
    for i in range(a.count):
        obj = apprise.Apprise()
        obj.add("mailto://127.0.0.1:%d?from=meldingen@buurtbus.example&to=buur%d@example.org"
                % (a.port, i))
        ok += bool(obj.notify(title="Inbraak in de Muntelbuurt",
                              body="Verdachte situatie bij de achterdeur, %d" % i))
    wall = time.monotonic() - t0
    rate = a.count / wall if wall > 0 else 0
    if a.json:
        print(json.dumps({"peer": "apprise", "version": apprise.__version__, "emails": a.count,
                          "sent": ok, "wall_s": round(wall, 2), "emails_per_s": round(rate)}))
    else:
        print("apprise %s: %d of %d e-mails sent in %.2f s: %.0f/s"
              % (apprise.__version__, ok, a.count, wall, rate))


if __name__ == "__main__":
    main()
