"""Turns one bench step's standard output into results.jsonl records.

    /usr/bin/python3 bench/report/collect.py --step NAME [--set KEY=VALUE ...]
                                             [--markdown] OUT.jsonl < tool-output

Every line of the output that is a JSON object becomes one record; with
--markdown (run_worker.sh) every row of the Markdown table does, with the
columns as fields and the smtp sink's "stats messages=N" as sink_messages.
Each record gets "step": NAME and the --set fields (values parsed as JSON
when they parse, strings otherwise) and is appended to OUT.jsonl. Prints the
number of records; exits 1 when there is none, or when a worker row says
the drain timed out or lost receipts (a broken step, not a slow one).
Threads: one; run by bench/run.sh once per step.
"""
import argparse
import json
import re
import sys


def value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def number(cell):
    try:
        return float(cell) if "." in cell else int(cell)
    except ValueError:
        return cell


def json_records(lines):
    out = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def slug(header):
    s = header.lower().replace("/1m", " per million").replace("/", " per ")
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_")


def markdown_records(lines):
    """Rows of bench_worker's table, plus the sink's message count."""
    header, rows, sink = None, [], None
    for line in lines:
        line = line.strip()
        m = re.search(r"stats messages=(\d+)", line)
        if line.startswith("sink:") and m:
            sink = int(m.group(1))
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] == "run":
            header = [slug(c) for c in cells]
        elif header and not set(cells[0]) <= set("-:") and len(cells) == len(header):
            rows.append(cells)
    out = []
    for cells in rows:
        rec = {}
        for key, cell in zip(header, cells):
            rec[key] = cell if key == "run" else number(cell)
        ok, _, rest = str(rec.get("receipts_ok_per_total", "")).partition("/")
        total = rest.split(" ")[0]
        rec["receipts_ok"] = int(ok) if ok.isdigit() else None
        rec["receipts_total"] = int(total) if total.isdigit() else None
        rec["timeout"] = "TIMEOUT" in str(rec.get("receipts_ok_per_total", ""))
        if sink is not None:
            rec["sink_messages"] = sink
        out.append(rec)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("out")
    a = ap.parse_args()
    lines = sys.stdin.read().splitlines()
    recs = markdown_records(lines) if a.markdown else json_records(lines)
    extra = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        extra[k] = value(v)
    broken = False
    with open(a.out, "a") as f:
        for rec in recs:
            rec = dict({"step": a.step}, **extra) | {k: v for k, v in rec.items() if k != "step"}
            if a.markdown and (rec["timeout"] or rec["receipts_ok"] != rec["deliveries"]):
                broken = True
            f.write(json.dumps(rec) + "\n")
    print(len(recs))
    return 1 if not recs or broken else 0


if __name__ == "__main__":
    sys.exit(main())
