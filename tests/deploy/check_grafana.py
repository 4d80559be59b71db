#!/usr/bin/python3
"""deploy/grafana: checks deploy/grafana/buurtbus.json against what the
programs really export.

  check_grafana.py --dashboard buurtbus.json --metrics broker.metrics worker.metrics

The metrics files are /metrics scrapes of the built buurtbus-broker and
buurtbus-worker (test_notify scrape). Checked: the JSON parses; the
dashboard has a Prometheus datasource variable and every panel and query
uses it; every bb_* name in a query (panels and variables) is a series the
programs export (histograms by their _bucket/_sum/_count series); every
label a query groups by or matches on is one that series carries; panels
do not overlap on the grid."""
import argparse
import json
import re
import sys

NAME = re.compile(r"\bbb_[a-z0-9_]+\b")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=~?')
# Labels Prometheus adds when it scrapes, on every series.
TARGET_LABELS = {"instance", "job", "le"}


def exported(paths):
    """{series name: set of label names} from Prometheus text files."""
    series = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                m = SAMPLE.match(line)
                if not m:
                    continue
                labels = set(LABEL.findall(m.group(3) or ""))
                series.setdefault(m.group(1), set()).update(labels)
    return series


def queries(dash):
    """(where, expr) for every panel target and query variable."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"panel '{p.get('title')}' {t.get('refId')}", t.get("expr", "")))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            out.append((f"variable ${v['name']}", q.get("query") if isinstance(q, dict) else q))
    return out


def labels_used(expr, name):
    """Label names a query uses with metric name: its matchers {a="x"} and
    the by (...) / without (...) clauses of the aggregation around it."""
    used = set()
    for m in re.finditer(re.escape(name) + r"\{([^}]*)\}", expr):
        used.update(LABEL.findall(m.group(1)))
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used.update(x.strip() for x in m.group(1).split(",") if x.strip())
    return used


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--metrics", nargs="+", required=True)
    a = ap.parse_args()
    errors = []
    with open(a.dashboard) as f:
        dash = json.load(f)
    series = exported(a.metrics)
    print(f"{len(series)} series names exported by the programs")

    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = [v for v in variables.values() if v.get("type") == "datasource"]
    if not ds or ds[0].get("query") != "prometheus":
        errors.append("no Prometheus datasource variable")
    dsref = "${" + ds[0]["name"] + "}" if ds else None

    def check_ds(where, d):
        if not isinstance(d, dict) or d.get("uid") != dsref or d.get("type") != "prometheus":
            errors.append(f"{where}: datasource is not the variable {dsref}: {d}")

    names_used = set()
    for where, expr in queries(dash):
        if not expr:
            errors.append(f"{where}: empty query")
            continue
        names = set(NAME.findall(expr))
        if not names:
            errors.append(f"{where}: queries no buurtbus metric: {expr}")
        for n in names:
            names_used.add(n)
            if n not in series:
                errors.append(f"{where}: {n} is not exported")
                continue
            missing = labels_used(expr, n) - series[n] - TARGET_LABELS
            # A by() clause may name a label of another metric in the same
            # query (a ratio of two families): only labels no series of
            # the query has are errors.
            missing = {l for l in missing if not any(l in series.get(o, set()) for o in names)}
            if missing:
                errors.append(f"{where}: {n} has no label(s) {sorted(missing)}")

    grid = []

    def walk(panels):
        for p in panels:
            where = f"panel '{p.get('title')}'"
            if p.get("type") != "row":
                check_ds(where, p.get("datasource"))
                if not p.get("targets"):
                    errors.append(f"{where}: no queries")
                for t in p.get("targets", []):
                    check_ds(f"{where} {t.get('refId')}", t.get("datasource"))
            g = p["gridPos"]
            for (ow, og) in grid:
                if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and
                        g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                    errors.append(f"{where} overlaps {ow}")
            grid.append((where, g))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    for v in variables.values():
        if v.get("type") == "query":
            check_ds(f"variable ${v['name']}", v.get("datasource"))

    print(f"{len(names_used)} metric names used by the dashboard: {' '.join(sorted(names_used))}")
    unused = sorted(n for n in series if n.startswith("bb_") and n not in names_used and
                    not re.search(r"_(bucket|sum|count)$", n))
    print(f"exported and not on the dashboard: {' '.join(unused) or '(none)'}")
    for e in errors:
        print("FAIL:", e)
    print("FAILED" if errors else "ok")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
