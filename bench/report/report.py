"""Writes report.md and the PNG plots of one bench run from its results.jsonl.

    /usr/bin/python3 bench/report/report.py RESULTS_DIR

RESULTS_DIR holds results.jsonl as bench/run.sh writes it (one JSON object
a line, each with a "step" field). Writes RESULTS_DIR/report.md, the plot
data RESULTS_DIR/data/*.dat, the gnuplot script RESULTS_DIR/plots.gp and
the plots latency.png, throughput.png and memory.png (gnuplot, terminal
pngcairo, or png when cairo is missing). Can be run again on old results.
Exits 1 when results.jsonl is missing or gnuplot fails.
Threads: one; run by bench/run.sh at the end, or by hand.
"""
import json
import os
import subprocess
import sys

LATENCY_LIMIT_MS = 50


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def fmt(v, digits=0):
    if v is None or v == "":
        return "–"
    if isinstance(v, str):
        return v
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.{digits}f}×"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def mib(kb):
    return None if kb is None or kb < 0 else kb / 1024


def max_sustained(runs):
    """Highest offered rate whose p99 is under the limit; None when none is."""
    ok = [r["rate"] for r in runs if r.get("p99_ms") is not None and r["p99_ms"] < LATENCY_LIMIT_MS]
    return max(ok) if ok else None


class Report:
    def __init__(self, d):
        self.dir = d
        self.recs = load(os.path.join(d, "results.jsonl"))
        self.meta = next((r for r in self.recs if r["step"] == "meta"), {})
        self.end = next((r for r in self.recs if r["step"] == "end"), {})
        self.lines = []

    def of(self, step):
        return [r for r in self.recs if r["step"] == step]

    def add(self, *text):
        self.lines.extend(text)

    # ---- sections ----

    def header(self):
        m = self.meta
        p = m.get("params", {})
        dirty = " (+ local changes)" if m.get("dirty") else ""
        mem = m.get("mem_kb", 0) / 1024 / 1024
        self.add(f"# buurtbus bench: {m.get('date', '?')[:10]}, {m.get('commit', '?')}{dirty}", "",
                 f"- machine: {m.get('nproc', '?')} cores, {m.get('cpu', '?')}, "
                 f"{mem:.1f} GiB memory, Linux {m.get('kernel', '?')}",
                 f"- load average (1, 5, 15 min) before: {m.get('loadavg_before', '?')}, "
                 f"after: {self.end.get('loadavg_after', '?')}",
                 f"- commit: {m.get('commit', '?')}{dirty}, started {m.get('date', '?')}, "
                 f"{fmt(self.end.get('seconds'))} s in all",
                 f"- mode: `{p.get('mode', '?')}`; parameters: "
                 + ", ".join(f"{k} `{v}`" for k, v in p.items() if k != "mode" and v != ""), "")
        st = self.of("status")
        broken = [s["name"] for s in st if s["status"] != "ok"]
        if broken:
            self.add(f"**Broken steps: {', '.join(broken)}** (see `logs/STEP.log`).", "")
        self.add("Steps, one at a time:", "",
                 table(["step", "what", "status", "s", "results"],
                       [[s["name"], s.get("description", ""), s["status"], s["seconds"],
                         s["records"]] for s in st]), "")

    def headline(self):
        sweep = sorted(self.of("broker-sweep"), key=lambda r: r["rate"])
        peer = sorted(self.of("peer-sweep"), key=lambda r: r["rate"])
        self.add("## Summary", "")
        start = len(self.lines)
        if sweep:
            users = sweep[0]["users"]
            best = max_sustained(sweep)
            top = sweep[-1]["rate"]
            if best is None:
                txt = f"none of the offered rates (lowest {fmt(sweep[0]['rate'])}/s)"
            elif best == top:
                txt = (f"**{fmt(best)} reports/s** (the highest rate tried: the limit is at "
                       f"least this)")
            else:
                txt = f"**{fmt(best)} reports/s**"
            self.add(f"- Max sustained reports/s with p99 < {LATENCY_LIMIT_MS} ms at "
                     f"{fmt(users)} users (field mix): {txt}. This is the highest offered rate "
                     f"of the sweep ({', '.join(fmt(r['rate']) for r in sweep)}) whose p99 "
                     f"latency was under {LATENCY_LIMIT_MS} ms, not an interpolation.")
            if peer:
                pbest = max_sustained([r for r in peer if "p99_ms" in r])
                self.add(f"- The Redis-native peer by the same rule: "
                         f"{fmt(pbest) + ' reports/s' if pbest else 'none of its rates'}.")
            common = {r["rate"]: r for r in peer if "deliveries_per_s" in r}
            pairs = [(b, common[b["rate"]]) for b in sweep if b["rate"] in common]
            if pairs:
                # the highest rate the peer still kept up with, else the highest shared one
                calm = [(b, q) for b, q in pairs if not q.get("saturated")]
                b, q = (calm or pairs)[-1]
                self.add(f"- At {fmt(b['rate'])} reports/s offered"
                         f"{' (the highest rate the peer did not saturate)' if calm else ''}: "
                         f"buurtbus "
                         f"{ratio(b['deliveries_per_s'], q['deliveries_per_s'])} the peer's "
                         f"deliveries/s, p99 {ratio(q['p99_ms'], b['p99_ms'])} lower "
                         f"(peer p99 / buurtbus p99); all rates in the comparison below.")
        smtp = [r for r in self.of("worker") if r.get("plugin") == "smtp"]
        ap = self.of("apprise")
        if smtp and ap:
            self.add(f"- E-mail: the smtp worker sends "
                     f"{ratio(smtp[0]['deliveries_per_s'], ap[0]['emails_per_s'], 1)} the "
                     f"e-mails/s of Apprise {ap[0].get('version', '')} to the same SMTP sink.")
        if len(self.lines) == start:
            self.add("No broker, peer or e-mail figures in this run.")
        self.add("")

    def route(self):
        rt = sorted(self.of("route"), key=lambda r: (r["users"], not r.get("dict")))
        if not rt:
            return
        self.add("## Routing on one thread (bench_route)", "",
                 "In process, no server: the synthetic population, median of the runs. "
                 "Users loaded along the geohash curve (`--zorder`), as the broker does.", "",
                 table(["users", "dict", "reports × runs", "decisions/s per core (M)",
                        "ns/decision",
                        "deliveries/report", "deliveries/s route only (M)",
                        "deliveries/s with encode (M)", "index B/user", "total B/user",
                        "RSS B/user", "stream B/delivery", "payload zstd/raw"],
                       [[fmt(r["users"]), "yes" if r.get("dict") else "no",
                         f"{fmt(r.get('reports'))} × {fmt(r.get('runs'))}",
                         fmt(r["decisions_per_s"] / 1e6, 1), fmt(r["ns_per_decision"], 1),
                         fmt(r["deliveries_per_report"]),
                         fmt(r["route_deliveries_per_s"] / 1e6, 1),
                         fmt(r["encode_deliveries_per_s"] / 1e6, 1),
                         fmt(r["index_bytes_per_user"], 1), fmt(r["total_bytes_per_user"], 1),
                         fmt(r["rss_bytes_per_user"], 1), fmt(r["bytes_per_delivery"], 2),
                         fmt(r["payload_ratio"], 3)] for r in rt]), "")
        by_users = {}
        for r in rt:
            by_users.setdefault(r["users"], {})[bool(r.get("dict"))] = r
        for users, d in sorted(by_users.items()):
            if True in d and False in d:
                self.add(f"Dictionary at {fmt(users)} users: stream bytes per delivery "
                         f"{fmt(d[True]['bytes_per_delivery'], 2)} with, "
                         f"{fmt(d[False]['bytes_per_delivery'], 2)} without: "
                         f"{ratio(d[True]['bytes_per_delivery'], d[False]['bytes_per_delivery'])}"
                         f"; payload zstd/raw {fmt(d[True]['payload_ratio'], 3)} against "
                         f"{fmt(d[False]['payload_ratio'], 3)}.", "")

    @staticmethod
    def broker_rows(runs):
        return [[fmt(r["users"]), fmt(r["rate"]), fmt(r["sent"]),
                 fmt(r["reports_with_deliveries"]), fmt(r["deliveries_per_report"]),
                 fmt(r["deliveries_per_s"]), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
                 fmt(r["p999_ms"], 2), fmt(r["max_ms"], 2),
                 fmt(r["payload_bytes_per_delivery"], 2), fmt(r["redis_bytes_per_delivery"], 2),
                 fmt(r["broker_cpu_s_per_million_deliveries"], 2),
                 fmt(mib(r.get("broker_rss_kb")), 1),
                 "yes" if r["p99_ms"] < LATENCY_LIMIT_MS else "no"] for r in runs]

    BROKER_HEAD = ["users", "offered/s", "sent", "reached someone", "deliveries/report",
                   "deliveries/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "payload B/delivery",
                   "Redis B/delivery", "broker CPU s/1M", "broker RSS MiB",
                   f"p99 < {LATENCY_LIMIT_MS} ms"]

    def broker(self):
        sweep = sorted(self.of("broker-sweep"), key=lambda r: r["rate"])
        group = self.of("broker-group")
        pops = sorted(self.of("broker-population"), key=lambda r: r["users"])
        if not (sweep or group or pops):
            return
        self.add("## The broker end to end (run_broker.sh)", "",
                 "Reports posted open loop (Poisson spacing); latency from a report's intended "
                 "send time to a reader seeing its batches in `bb:out:*`. One broker "
                 "(1 router thread), Redis, sender and reader share the machine. A report "
                 "whose batches no reader saw within 10 s of the last send is not in the "
                 "percentiles: compare *reached someone* with *sent* (in the group mix some "
                 "reports reach nobody by design; in the field mix nearly all reach "
                 "someone, so a gap there means a backlog).", "")
        if sweep:
            self.add("Latency against offered load (field mix):", "",
                     table(self.BROKER_HEAD, self.broker_rows(sweep)), "")
        if group:
            self.add("Group mix (each report reaches one street or neighbourhood group):", "",
                     table(self.BROKER_HEAD, self.broker_rows(group)), "")
        if pops:
            self.add("Population size at a fixed offered rate (field mix):", "",
                     table(self.BROKER_HEAD, self.broker_rows(pops)), "")

    def peer(self):
        peer = sorted(self.of("peer-sweep"), key=lambda r: r["rate"])
        if not peer:
            return
        self.add("## The Redis-native peer (peer_redis)", "",
                 "The same population and reports, fanned out the way a team would on Redis "
                 "alone: GEOSEARCH (1,000 m) + SMEMBERS of the report's group, one XADD per "
                 "recipient, pipelined, 2 client threads. Latency from intended start to the "
                 "reply of the report's last XADD. The sweep stops at the first rate where the "
                 "peer saturates (its run lasts > 1.5 × the duration or p99 > 1 s).", "")
        rows = []
        for r in peer:
            if "deliveries_per_s" not in r:
                stopped = f"yes (stopped after {r.get('timed_out_after_s')} s)"
                rows.append([fmt(r["users"]), fmt(r["rate"])] + ["–"] * 7 + [stopped])
                continue
            rows.append([fmt(r["users"]), fmt(r["rate"]), fmt(r["reports"]),
                         fmt(r["deliveries_per_report"]), fmt(r["deliveries_per_s"]),
                         fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), fmt(r["p999_ms"], 2),
                         fmt(r["redis_cpu_s"], 2), "yes" if r.get("saturated") else "no"])
        self.add(table(["users", "offered/s", "reports", "deliveries/report", "deliveries/s",
                        "p50 ms", "p99 ms", "p99.9 ms", "Redis CPU s", "saturated"], rows), "")
        sweep = {r["rate"]: r for r in self.of("broker-sweep")}
        pairs = [(sweep[r["rate"]], r) for r in peer
                 if r["rate"] in sweep and "deliveries_per_s" in r]
        if pairs:
            self.add("buurtbus against the peer at the same offered rate (ratios: "
                     "buurtbus / peer for deliveries/s, peer / buurtbus for p99):", "",
                     table(["offered/s", "buurtbus deliveries/s", "peer deliveries/s",
                            "deliveries/s ratio", "buurtbus p99 ms", "peer p99 ms",
                            "p99 ratio", "deliveries/report buurtbus, peer"],
                           [[fmt(b["rate"]), fmt(b["deliveries_per_s"]),
                             fmt(q["deliveries_per_s"]),
                             ratio(b["deliveries_per_s"], q["deliveries_per_s"]),
                             fmt(b["p99_ms"], 2), fmt(q["p99_ms"], 2),
                             ratio(q["p99_ms"], b["p99_ms"]),
                             f"{fmt(b['deliveries_per_report'])}, "
                             f"{fmt(q['deliveries_per_report'])}"] for b, q in pairs]), "",
                     "A buurtbus delivery is one (recipient, channel) entry of a compressed "
                     "DeliveryBatch, routed through groups, area groups, watch areas and "
                     "preferences; a peer delivery is one XADD for a recipient of the radius "
                     "search or the group. The two reach different numbers of people per "
                     "report, so compare latency at the same offered rate first.", "")

    def workers(self):
        ws = self.of("worker")
        ap = self.of("apprise")
        if not (ws or ap):
            return
        self.add("## The worker draining a backlog (run_worker.sh)", "")
        if ws:
            self.add(table(["plug-in", "deliveries", "drain s", "deliveries/s",
                            "worker CPU µs/delivery", "worker peak RSS MiB", "Redis CPU s",
                            "sink CPU s", "receipts ok/total"],
                           [[w["plugin"], fmt(w["deliveries"]), fmt(w["drain_s"], 2),
                             fmt(w["deliveries_per_s"]),
                             fmt(w["worker_cpu_s_per_million"], 1),
                             fmt(w["worker_peak_rss_mib"], 1),
                             fmt(w["redis_cpu_s"], 2), fmt(w["sink_cpu_s"], 2),
                             w["receipts_ok_per_total"]] for w in ws]), "")
        smtp = [w for w in ws if w.get("plugin") == "smtp"]
        if ap:
            a = ap[0]
            self.add(f"Apprise {a.get('version', '')}: {fmt(a['sent'])} of {fmt(a['emails'])} "
                     f"e-mails sent in {fmt(a['wall_s'], 2)} s, {fmt(a['emails_per_s'])}/s "
                     f"(the sink counted {fmt(a.get('sink_messages'))}).")
            if smtp:
                self.add(f"The smtp worker against Apprise, e-mails/s: "
                         f"{fmt(smtp[0]['deliveries_per_s'])} / {fmt(a['emails_per_s'])} = "
                         f"**{ratio(smtp[0]['deliveries_per_s'], a['emails_per_s'], 1)}** "
                         f"({fmt(smtp[0]['deliveries'])} and {fmt(a['emails'])} e-mails; "
                         f"the worker's drain excludes its start-up, Apprise's wall clock "
                         f"is the whole loop).")
            self.add("")

    # ---- plots ----

    def plots(self):
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        gp = []

        def write(name, rows):
            with open(os.path.join(data, name), "w") as f:
                for r in rows:
                    f.write(" ".join(str(v) for v in r) + "\n")
            return f"data/{name}"

        sweep = sorted(self.of("broker-sweep"), key=lambda r: r["rate"])
        peer = sorted([r for r in self.of("peer-sweep") if "p99_ms" in r],
                      key=lambda r: r["rate"])
        lines = []
        # buurtbus in blues, the peer in reds; darker and more solid for higher percentiles
        for who, runs, pt, colours in (
                ("buurtbus", sweep, 7, ("#9ecae1", "#3182bd", "#08519c")),
                ("Redis-native", peer, 5, ("#fc9272", "#ef3b2c", "#99000d"))):
            if runs:
                f = write(f"latency-{who.lower()}.dat",
                          [(r["rate"], r["p50_ms"], r["p99_ms"], r["p999_ms"]) for r in runs])
                for (col, pct, dt), lc in zip(((2, "p50", 3), (3, "p99", 1), (4, "p99.9", 2)),
                                              colours):
                    lines.append(f"'{f}' using 1:{col} with linespoints pt {pt} dt {dt} lw 2 "
                                 f"lc rgb '{lc}' title '{who} {pct}'")
        if lines:
            users = sweep[0]["users"] if sweep else peer[0]["users"]
            gp += ["set output 'latency.png'",
                   f"set title 'Latency against offered load, {users:,} users (field mix)'",
                   "set xlabel 'offered reports/s'", "set ylabel 'latency (ms)'",
                   "set logscale y", "unset logscale x", "set key top left", "set xrange [0:*]",
                   f"set arrow 1 from graph 0, first {LATENCY_LIMIT_MS} to graph 1, first "
                   f"{LATENCY_LIMIT_MS} nohead dt 4 lc rgb 'gray'",
                   "plot " + ", \\\n     ".join(lines), "unset arrow 1", ""]

        rt = sorted([r for r in self.of("route") if r.get("dict")], key=lambda r: r["users"])
        broker_by_users = {}
        for r in sorted(self.of("broker-population"), key=lambda r: r["users"]):
            broker_by_users[r["users"]] = r
        if not broker_by_users:
            for r in sorted(self.of("broker-sweep"), key=lambda r: r["rate"]):
                broker_by_users[r["users"]] = r  # the highest rate of the sweep
        brk = [broker_by_users[u] for u in sorted(broker_by_users)]
        lines = []
        if rt:
            f = write("route.dat", [(r["users"], r["route_deliveries_per_s"],
                                    r["encode_deliveries_per_s"], r["decisions_per_s"],
                                    r["index_bytes_per_user"], r["total_bytes_per_user"],
                                    r["rss_bytes_per_user"]) for r in rt])
            for col, pt, what in ((4, 7, "decisions/s per core"),
                                  (2, 5, "deliveries/s per core, route only"),
                                  (3, 9, "deliveries/s per core, with encode")):
                lines.append(f"'{f}' using 1:{col} with linespoints pt {pt} "
                             f"title 'bench\\_route {what}'")
        if brk:
            rates = sorted({fmt(r["rate"]) for r in brk})
            fb = write("broker-population.dat",
                       [(r["users"], r["deliveries_per_s"], r.get("broker_rss_kb", -1) * 1024 /
                         r["users"]) for r in brk])
            lines.append(f"'{fb}' using 1:2 with linespoints pt 11 title 'broker end to end "
                         f"deliveries/s at {'/'.join(rates)} reports/s offered'")
        xs = sorted({r["users"] for r in rt} | set(broker_by_users))
        xrange = f"set xrange [{xs[0] / 2}:{xs[-1] * 2}]" if xs else "set xrange [*:*]"
        if lines:
            gp += ["set output 'throughput.png'", xrange,
                   "set title 'Throughput against population size'",
                   "set xlabel 'users'", "set ylabel 'per second'",
                   "set logscale x", "set logscale y", "set key below",
                   "set format x '%.0s%c'", "set format y '%.0s%c'",
                   "plot " + ", \\\n     ".join(lines), ""]
        lines = []
        if rt:
            lines += [f"'{f}' using 1:5 with linespoints pt 7 title 'index (bytes\\_users)'",
                      f"'{f}' using 1:6 with linespoints pt 5 title 'index (bytes\\_total)'",
                      f"'{f}' using 1:7 with linespoints pt 9 title 'bench\\_route RSS delta'"]
        if brk and any(r.get("broker_rss_kb", -1) > 0 for r in brk):
            lines.append(f"'{fb}' using 1:3 with linespoints pt 11 "
                         f"title 'broker RSS / users (with its fixed overhead)'")
        if lines:
            gp += ["set output 'memory.png'", xrange, "set title 'Memory per user'",
                   "set xlabel 'users'", "set ylabel 'bytes per user'",
                   "set logscale x", "unset logscale y", "set yrange [0:*]", "set key below",
                   "set format x '%.0s%c'", "set format y '%g'",
                   "plot " + ", \\\n     ".join(lines), ""]
        if not gp:
            return []
        term = "pngcairo size 1000,640 font ',10'"
        try:
            terms = subprocess.run(["gnuplot", "-e", "print GPVAL_TERMINALS"],
                                   capture_output=True, text=True).stderr
            if "pngcairo" not in terms.split():
                term = "png size 1000,640"
        except OSError:
            pass
        script = ["# Generated by bench/report/report.py; run with `gnuplot plots.gp` here.",
                  f"set terminal {term}", "set grid", "set datafile separator ' '", ""] + gp
        with open(os.path.join(self.dir, "plots.gp"), "w") as f:
            f.write("\n".join(script))
        subprocess.run(["gnuplot", "plots.gp"], cwd=self.dir, check=True)
        return [p for p in ("latency.png", "throughput.png", "memory.png")
                if os.path.exists(os.path.join(self.dir, p))]

    def write(self):
        self.header()
        self.headline()
        self.route()
        self.broker()
        self.peer()
        self.workers()
        ok = True
        try:
            pngs = self.plots()
        except (OSError, subprocess.CalledProcessError) as e:
            pngs, ok = [], False
            self.add(f"Plots failed: {e}", "")
        if pngs:
            self.add("## Plots", "")
            for p in pngs:
                self.add(f"![{p[:-4]}]({p})", "")
        self.add("Raw figures: `results.jsonl` (one JSON object a line, field `step`); "
                 "each step's output: `logs/`.", "")
        with open(os.path.join(self.dir, "report.md"), "w") as f:
            f.write("\n".join(self.lines))
        return ok


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        rep = Report(sys.argv[1])
    except OSError as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 1
    return 0 if rep.write() else 1


if __name__ == "__main__":
    sys.exit(main())
