#!/usr/bin/python3
"""The broker's operator console, end to end: a real redis-server on a free
port, a small directory loaded with the built buurtbusctl, the built broker
with `console yes` and a token file, reports posted (one to a group that
does not exist yet: a dead letter).

  test_console.py api BUILD      the HTTP API without a browser: auth (401),
                                 404s, 405, 413, 415, security headers, the
                                 console off by default, counts, dead letters,
                                 replay (Redis checked), explanations
  test_console.py browser BUILD  headless Chromium (Debian's `chromium`) driven
                                 over the DevTools protocol (python3-websocket):
                                 load the page, type the token, read the counts,
                                 replay the dead letter, run an explanation.
                                 Exits 77 (ctest SKIP) when Chromium or the
                                 websocket module is missing or cannot start.

Threads: one (the script); the broker, Redis and Chromium are child processes.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SKIP = 77
TOKEN = "console-test-token-5f1b0c9e"

DIRECTORY = [
    {"group": {"id": 2, "name": "De Muntel", "cells": ["u1hbc"]}},
    {"user": {"id": 1, "screen_name": "Jan", "locale": "nl", "time_zone": "Europe/Amsterdam"}},
    {"user": {"id": 2, "screen_name": "Ans", "locale": "nl", "time_zone": "Europe/Amsterdam"}},
    {"user": {"id": 3, "screen_name": "Piet", "locale": "nl", "time_zone": "Europe/Amsterdam",
              "prefs": {"categories": ["fire"]}}},
    {"user": {"id": 4, "screen_name": "Kees", "locale": "nl", "time_zone": "Europe/Amsterdam",
              "muted_authors": [1]}},
    {"user": {"id": 5, "screen_name": "Fleur", "locale": "en", "time_zone": "Europe/Amsterdam",
              "prefs": {"in_progress": ["email"]}}},
] + [{"member": {"user": u, "group": 2}} for u in (1, 2, 3, 4, 5)]

# Group 9 arrives after its report: the report is dead-lettered, then replayed.
LATE_GROUP = [
    {"group": {"id": 9, "name": "Hintham", "cells": ["u1hbc"]}},
    {"member": {"user": 2, "group": 9}},
]


def report(rid, group=2, category="burglary"):
    return {"id": rid, "author_id": 1, "group_id": group, "lat": 51.69, "lon": 5.30,
            "category": category, "urgency": "in_progress", "source": "resident",
            "text": "test"}


EXPECTED = {2: "notified", 5: "notified", 1: "author", 3: "pref_category", 4: "muted_author"}


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)
    print("ok:", what)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(fn, what, timeout=30.0, interval=0.1):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - a poll: keep trying until the deadline
            last = e
        time.sleep(interval)
    raise Fail("timed out waiting for %s (last: %r)" % (what, last))


# ---- a minimal RESP client (no python3-redis needed) ------------------------------------------

class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.f = self.s.makefile("rb")

    def __call__(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.s.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise Fail("redis: " + rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise Fail("redis: bad reply %r" % line)


def fields(flat):
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


# ---- the set-up --------------------------------------------------------------------------------

class Setup:
    def __init__(self, build, console=True):
        self.build = build
        self.tmp = tempfile.mkdtemp(prefix="bb-console-")
        self.procs = []
        self.redis_port = free_port()
        self.http_port = free_port()
        self.ctl_path = os.path.join(build, "broker", "ctl", "buurtbusctl")
        self.broker_path = os.path.join(build, "broker", "buurtbus-broker")
        self.start_redis()
        self.r = Redis(self.redis_port)
        self.load(DIRECTORY)
        self.token_file = os.path.join(self.tmp, "console.token")
        with open(self.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        self.start_broker(console)

    def start_redis(self):
        p = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", self.tmp],
                             stdout=open(os.path.join(self.tmp, "redis.log"), "w"),
                             stderr=subprocess.STDOUT)
        self.procs.append(p)

        def up():
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1):
                return True
        wait_for(up, "redis-server")

    def ctl(self, *args, stdin=None):
        return subprocess.run([self.ctl_path, "--redis", "127.0.0.1:%d" % self.redis_port] +
                              list(args), input=stdin, capture_output=True, text=True, timeout=30)

    def load(self, lines):
        res = self.ctl("load", "-", stdin="".join(json.dumps(x) + "\n" for x in lines))
        if res.returncode != 0:
            raise Fail("buurtbusctl load: %s" % res.stderr)

    def post(self, rep):
        res = self.ctl("post", json.dumps(rep))
        if res.returncode != 0:
            raise Fail("buurtbusctl post: %s" % res.stderr)

    def write_conf(self, console, extra=""):
        conf = os.path.join(self.tmp, "broker.conf")
        with open(conf, "w") as f:
            f.write("redis 127.0.0.1:%d\nmetrics_addr 127.0.0.1:%d\nblock 200ms\n"
                    "log_level info\n" % (self.redis_port, self.http_port))
            if console:
                f.write("console yes\nconsole_token_file %s\n" % self.token_file)
            f.write(extra)
        return conf

    def start_broker(self, console):
        conf = self.write_conf(console)
        p = subprocess.Popen([self.broker_path, "-c", conf],
                             stdout=open(os.path.join(self.tmp, "broker.log"), "w"),
                             stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.broker = p
        wait_for(lambda: self.http("/readyz")[0] == 200, "the broker to be ready")

    def http(self, path, token=None, method=None, body=None, ctype=None, headers=None):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = "Bearer " + token
        if ctype:
            h["Content-Type"] = ctype
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.http_port, path), data=data,
                                     method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, res.headers, res.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def api(self, path, body=None):
        code, _, data = self.http("/console/api/" + path, TOKEN,
                                  method="POST" if body is not None else "GET",
                                  body=json.dumps(body) if body is not None else None,
                                  ctype="application/json" if body is not None else None)
        return code, json.loads(data) if data else None

    def stats(self):
        return self.api("stats")[1]

    def post_reports(self):
        """Two good reports and one to group 9 (unknown yet): one dead letter."""
        self.post(report("r-ok-1"))
        self.post(report("r-ok-2", category="fire"))
        self.post(report("r-late", group=9))
        wait_for(lambda: self.stats()["reports_in"] == 3 and self.stats()["dead_letters"] == 1,
                 "3 reports read, 1 dead letter")
        dead = self.r("XRANGE", "bb:dead", "-", "+")
        check(len(dead) == 1 and fields(dead[0][1])["reason"] == b"unknown_group",
              "the report to the unknown group is a dead letter (unknown_group)")
        self.load(LATE_GROUP)  # the broker tails bb:directory: group 9 now exists
        return dead[0][0].decode()

    def check_replayed(self, dead_id, new_id):
        check(self.r("XRANGE", "bb:dead", dead_id, dead_id) == [], "the dead letter left bb:dead")
        back = self.r("XRANGE", "bb:reports", new_id, new_id)
        check(len(back) == 1, "the report went back to bb:reports as " + new_id)
        wait_for(lambda: self.stats()["routed"] == 3, "the replayed report to be routed")
        check(self.stats()["dead_letters"] == 1, "the replayed report routed, not dead again")

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if os.environ.get("BB_KEEP_TMP"):
            print("kept", self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def dump_logs(self):
        for name in ("broker.log", "chromium.log"):
            path = os.path.join(self.tmp, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    print("---- %s ----\n%s" % (name, f.read()[-4000:]))


# ---- API tests ---------------------------------------------------------------------------------

def test_api(build):
    # Off by default: the page and the API are not there; /metrics is.
    s = Setup(build, console=False)
    try:
        check(s.http("/console/")[0] == 404, "console off by default: /console/ is 404")
        check(s.http("/console/api/stats", TOKEN)[0] == 404, "console off: the API is 404")
        s.post(report("r-off"))
        wait_for(lambda: b"bb_recipients_per_report_count 1" in s.http("/metrics")[2],
                 "the recipients histogram in /metrics")
        m = wait_for(lambda: (lambda t: t if b"bb_stream_group_pending" in t else None)(
            s.http("/metrics")[2]), "stream metrics")
        for want in (b'bb_stream_length{stream="bb:reports"} 1',
                     b'bb_stream_group_pending{stream="bb:reports",group="bb-brokers"} 0',
                     b'bb_stream_group_lag{stream="bb:reports",group="bb-brokers"} 0',
                     b'bb_stream_group_consumers{stream="bb:reports",group="bb-brokers"} 1',
                     b'bb_stream_length{stream="bb:out:push"}',
                     b'bb_recipients_per_report_bucket{le="1"} 0',
                     b'bb_recipients_per_report_bucket{le="5"} 1'):
            check(want in m, "/metrics has " + want.decode())
        check(s.http("/metrics", method="POST", body="x", ctype="text/plain")[0] == 405,
              "POST /metrics is 405")
        # console yes without a (good) token file is refused.
        conf = s.write_conf(False, "console yes\n")
        res = subprocess.run([s.broker_path, "-c", conf, "--check-config"], capture_output=True,
                             text=True)
        check(res.returncode != 0 and "console_token_file" in res.stderr,
              "console yes without console_token_file is refused")
        short = os.path.join(s.tmp, "short.token")
        with open(short, "w") as f:
            f.write("short\n")
        conf = s.write_conf(False, "console yes\nconsole_token_file %s\n" % short)
        res = subprocess.run([s.broker_path, "-c", conf, "--check-config"], capture_output=True,
                             text=True)
        check(res.returncode != 0, "a token under 16 characters is refused")
    finally:
        s.close()

    s = Setup(build, console=True)
    try:
        code, h, body = s.http("/console/")
        check(code == 200 and b'<script src="app.js"' in body, "the page is served without a token")
        check(b"<script>" not in body, "no inline script in the page")
        for name, want in (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                           ("X-Frame-Options", "DENY")):
            check(h.get(name) == want, "page header %s: %s" % (name, want))
        csp = h.get("Content-Security-Policy", "")
        check("script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp,
              "a strict Content-Security-Policy")
        code, h, body = s.http("/console/app.js")
        check(code == 200 and h.get("Content-Type", "").startswith("text/javascript"),
              "app.js is served as JavaScript")
        check(s.http("/console/style.css")[0] == 200, "style.css is served")
        check(s.http("/console/nope.js")[0] == 404, "an unknown file is 404")
        check(s.http("/console")[0] == 200, "/console redirects to the page")

        code, h, _ = s.http("/console/api/stats")
        check(code == 401 and "Bearer" in h.get("WWW-Authenticate", ""), "no token: 401")
        check(s.http("/console/api/stats", TOKEN + "x")[0] == 401, "a longer wrong token: 401")
        check(s.http("/console/api/stats", TOKEN[:-1] + "0")[0] == 401, "a wrong token: 401")
        check(s.http("/console/api/stats", "")[0] == 401, "an empty token: 401")
        check(s.http("/console/api/stats", headers={"Authorization": "Basic " + TOKEN})[0] == 401,
              "another scheme: 401")
        check(s.http("/console/api/stats?token=" + TOKEN)[0] == 401, "a token in the URL: 401")
        check(s.http("/console/api/nope", TOKEN)[0] == 404, "an unknown API path: 404")
        check(s.http("/console/api/stats", TOKEN, method="POST", body="{}",
                     ctype="application/json")[0] == 405, "POST to a GET endpoint: 405")
        check(s.http("/console/api/explain", TOKEN)[0] == 405, "GET of a POST endpoint: 405")
        check(s.http("/console/api/explain", TOKEN, method="POST", body="{}",
                     ctype="text/plain")[0] == 415, "POST without application/json: 415")
        check(s.http("/console/api/explain", None, method="POST", body="{}",
                     ctype="application/json")[0] == 401, "POST without a token: 401")
        big = json.dumps({"report": report("big"), "pad": "x" * 100000})
        check(s.http("/console/api/explain", TOKEN, method="POST", body=big,
                     ctype="application/json")[0] == 413, "a body over 64 KiB: 413")
        check(s.http("/console/api/explain", TOKEN, method="POST", body="{nope",
                     ctype="application/json")[0] == 400, "a body that is not JSON: 400")
        code, h, _ = s.http("/console/api/stats", TOKEN)
        check(code == 200 and h.get("Cache-Control") == "no-store", "API answers are no-store")

        dead_id = s.post_reports()
        st = s.stats()
        check(st["reports_in"] == 3 and st["routed"] == 2 and st["dead_letters"] == 1,
              "stats: 3 read, 2 routed, 1 dead")
        check(st["deliveries"] > 0 and st["channels"]["email"] >= 1, "stats: deliveries by channel")
        check(sum(st["latency"]["counts"]) == 2, "stats: two commit latencies")

        streams = wait_for(lambda: (lambda d: d if any(
            x["name"] == "bb:dead" and x["length"] == 1 for x in d["streams"]) else None)(
            s.api("streams")[1]), "streams with the dead letter")
        rep = [x for x in streams["streams"] if x["name"] == "bb:reports"][0]
        g = rep["groups"][0]
        check(rep["length"] == 3 and g["name"] == "bb-brokers" and g["pending"] == 0 and
              g["lag"] == 0 and g["members"][0]["name"], "streams: bb:reports length, group, consumer")

        # A worker's dead letter: listed, not replayed here (buurtbusctl dead replay's job).
        worker_dead = s.r("XADD", "bb:dead", "*", "reason", "decode_error", "stream", "bb:out:push",
                          "id", "1-1", "p", "\x00\x01", "worker", "w1", "instance",
                          "push").decode()
        code, d = s.api("dead")
        check(code == 200 and len(d["dead"]) == 2, "dead letters listed")
        w, b = d["dead"]
        check(w["id"] == worker_dead and w["origin"] == "worker" and not w["replayable"] and
              w["replay_command"] == "buurtbusctl dead replay " + worker_dead,
              "a worker's dead letter shows the command to replay it")
        check(b["id"] == dead_id and b["reason"] == "unknown_group" and b["stream"] == "bb:reports"
              and b["size"] > 0 and b["replayable"] and b["detail"] == "r-late",
              "the broker's dead letter: reason, stream, size, replayable")
        check(all("p" not in x and "payload" not in x for x in d["dead"]),
              "no payload bytes in the list")
        code, e = s.api("dead/replay", {"id": worker_dead})
        check(code == 409 and e["command"].endswith(worker_dead), "replaying a worker's: 409 + command")
        check(s.api("dead/replay", {"id": "1-2"})[0] == 404, "replaying a missing dead letter: 404")
        check(s.api("dead/replay", {"id": "+"})[0] == 400, "a bad id: 400")
        code, e = s.api("dead/replay", {"id": dead_id})
        check(code == 200, "replay: 200")
        s.check_replayed(dead_id, e["replayed_as"])
        check(s.api("dead/replay", {"id": dead_id})[0] == 404, "a second replay: 404")

        code, reps = s.api("reports?count=10")
        check(code == 200 and reps["reports"][0]["entry"] == e["replayed_as"] and
              reps["reports"][0]["id"] == "r-late", "recent reports, newest first")

        code, x = s.api("explain", {"report": report("r-x")})
        check(code == 200, "explain: 200")
        verdicts = {p["user"]: p["verdict"] for p in x["people"]}
        check(verdicts == EXPECTED, "explain: who and why %r" % verdicts)
        check(x["recipients"] == 2 and x["channels"]["email"] == 1, "explain: 2 people, 1 e-mail")
        via = {p["user"]: p["channels"] for p in x["people"] if p["verdict"] == "notified"}
        check(via[5] == ["email"], "explain: user 5 by e-mail only")
        entry = reps["reports"][-1]["entry"]
        code, x = s.api("explain", {"entry": entry})
        check(code == 200 and x["report"] == "r-ok-1", "explain a stored report by entry")
        check(s.api("explain", {"entry": "1-1"})[0] == 404, "explain a missing entry: 404")
        code, x = s.api("explain", {"report": dict(report("bad"), category="nope")})
        check(code == 400 and x["error"] == "bad_report" and "category" in x["detail"],
              "explain a report that does not convert: 400 with the field")
        code, x = s.api("explain", {"report": {"id": "bad"}})
        check(code == 422 and x["error"].startswith("invalid_report:"),
              "explain a report the broker would dead-letter: 422 with the reason (%s)" % x)
        code, x = s.api("explain", {"report": report("r-g", group=77)})
        check(code == 422 and x["error"] == "unknown_group", "explain a report to no group: 422")
        log = open(os.path.join(s.tmp, "broker.log"), errors="replace").read()
        check(TOKEN not in log, "the token is not in the broker's log")

        # Guessing (last: it locks the console for a minute).
        # (The wrong tokens above count too: at most 21 in a minute pass.)
        codes = [s.http("/console/api/stats", "guess%02d-xxxxxxxxxxxx" % i)[0] for i in range(22)]
        check(set(codes) == {401, 429} and codes[-1] == 429 and codes.index(429) <= 21,
              "wrong tokens: 401 until the 21st in a minute, then 429 (%s)" % codes)
        code, h, _ = s.http("/console/api/stats", TOKEN)
        check(code == 429 and int(h.get("Retry-After", "0")) > 0,
              "after them even the right token gets 429 with Retry-After")
        log = open(os.path.join(s.tmp, "broker.log"), errors="replace").read()
        check("too many failed token attempts" in log, "the lock is logged")
    except Exception:
        s.dump_logs()
        raise
    finally:
        s.close()


# ---- the browser -------------------------------------------------------------------------------

class Browser:
    """Headless Chromium on the DevTools protocol over a websocket."""

    def __init__(self, tmp):
        import websocket  # python3-websocket
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise SkipTest("chromium is not installed (apt-get install chromium)")
        self.profile = os.path.join(tmp, "chromium")
        os.makedirs(self.profile)
        self.log = open(os.path.join(tmp, "chromium.log"), "w")
        self.p = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu",
                                   "--disable-dev-shm-usage", "--no-first-run",
                                   "--no-default-browser-check", "--disable-extensions",
                                   "--remote-debugging-port=0", "--remote-allow-origins=*",
                                   "--user-data-dir=" + self.profile, "about:blank"],
                                  stdout=self.log, stderr=subprocess.STDOUT)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        try:
            wait_for(lambda: os.path.exists(port_file) and open(port_file).read().count("\n") >= 1,
                     "Chromium's DevTools port", timeout=30)
        except Fail:
            self.close()
            raise SkipTest("chromium did not start here (see chromium.log)")
        port = int(open(port_file).read().split()[0])
        targets = wait_for(lambda: [t for t in json.load(urllib.request.urlopen(
            "http://127.0.0.1:%d/json/list" % port, timeout=5)) if t["type"] == "page"],
            "a page target")
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self.n = 0
        self.events = []
        self.cmd("Page.enable")
        self.cmd("Runtime.enable")
        self.cmd("Log.enable")  # CSP violations and failed loads arrive as Log entries

    def cmd(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise Fail("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expr):
        r = self.cmd("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise Fail("page script: %s" % r["exceptionDetails"].get("text"))
        return r["result"].get("value")

    def errors(self):
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(e["params"]["exceptionDetails"].get("text"))
            if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(str(e["params"]["args"]))
            if (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
                    and not e["params"]["entry"].get("url", "").endswith("/favicon.ico")):
                out.append(e["params"]["entry"].get("text"))
        return out

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class SkipTest(Exception):
    pass


def text_of(b, id_):
    return b.js("document.getElementById(%s).textContent" % json.dumps(id_))


def test_browser(build):
    try:
        import websocket  # noqa: F401
    except ImportError:
        print("SKIP: python3-websocket is not installed")
        return SKIP
    s = Setup(build, console=True)
    b = None
    try:
        dead_id = s.post_reports()
        try:
            b = Browser(s.tmp)
        except SkipTest as e:
            print("SKIP:", e)
            return SKIP
        b.cmd("Page.navigate", url="http://127.0.0.1:%d/console/" % s.http_port)
        wait_for(lambda: b.js("document.readyState") == "complete" and
                 b.js("!!document.getElementById('login-form')"), "the page to load")
        check(b.js("document.getElementById('console').hidden") is True, "the page asks for a token")
        # Type the token like a person: focus, insert text, submit.
        b.js("document.getElementById('token').focus()")
        b.cmd("Input.insertText", text=TOKEN)
        b.js("document.querySelector('#login-form button[type=submit]').click()")
        wait_for(lambda: text_of(b, "reports-in") == "3", "the page to show 3 reports read")
        check(b.js("sessionStorage.getItem('buurtbus-console-token')") == TOKEN,
              "the token is kept in sessionStorage")
        check(TOKEN not in b.js("location.href"), "the token is not in the URL")
        shown = {k: text_of(b, k) for k in ("reports-in", "routed", "dead-count", "deliveries")}
        st = s.stats()
        check(shown["reports-in"] == "3" and shown["routed"] == "2" and shown["dead-count"] == "1",
              "the page shows 3 read, 2 routed, 1 dead: %r" % shown)
        check(shown["deliveries"] == "{:,}".format(st["deliveries"]),
              "the page's deliveries match the broker's (%s)" % shown["deliveries"])
        wait_for(lambda: b.js("document.querySelectorAll('#streams tbody tr[data-stream=\"bb:reports\"]')"
                              ".length") >= 1, "the streams table")
        wait_for(lambda: b.js("document.querySelectorAll('#dead tbody tr').length") == 1,
                 "the dead letter in the table")
        row = b.js("(() => { const r = document.querySelector('#dead tbody tr');"
                   " return [r.dataset.id, r.dataset.reason, r.textContent]; })()")
        check(row[0] == dead_id and row[1] == "unknown_group" and "bb:reports" in row[2],
              "the dead letter shows its reason and stream")
        b.js("document.querySelector('#dead tbody tr button.replay').click()")
        msg = wait_for(lambda: (lambda t: t if "went back" in t else None)(
            text_of(b, "dead-message")), "the replay to be confirmed")
        new_id = msg.split(" as ")[1].rstrip(".")
        s.check_replayed(dead_id, new_id)
        wait_for(lambda: b.js("document.querySelectorAll('#dead tbody tr').length") == 0,
                 "the dead letter gone from the table")

        # The explainer: pick the first report from the list, explain it.
        # Empty the picker first, so the wait below sees the refreshed list,
        # not the one a refresh still in flight would replace under the pick.
        b.js("(() => { document.getElementById('report-pick').options.length = 1;"
             " document.getElementById('reports-refresh').click(); })()")
        wait_for(lambda: b.js("document.getElementById('report-pick').options.length") >= 4,
                 "the recent reports in the picker")
        entry = b.js("(() => { const s = document.getElementById('report-pick');"
                     " const o = [...s.options].find(o => o.textContent.includes('r-ok-1'));"
                     " s.value = o.value; s.dispatchEvent(new Event('change')); return o.value; })()")
        check(bool(entry), "report r-ok-1 picked (%s)" % entry)
        b.js("document.getElementById('explain').click()")
        wait_for(lambda: b.js("!document.getElementById('explain-result').hidden"),
                 "the explanation", timeout=20)
        people = b.js("[...document.querySelectorAll('#recipients tbody tr, #filtered tbody tr')]"
                      ".map(r => [Number(r.dataset.user), r.dataset.verdict, r.textContent])")
        verdicts = {u: v for u, v, _ in people}
        check(verdicts == EXPECTED, "the page shows who gets it and why not: %r" % verdicts)
        reasons = {u: t for u, _, t in people}
        check("muted_author" in reasons[4] and "pref_category" in reasons[3],
              "the filtered-out reasons are shown")
        check("email" in reasons[5] and "push" in reasons[2], "the channels are shown")
        check("notified 2 people" in text_of(b, "explain-summary"), "the summary counts 2 people")
        shot = os.environ.get("BB_CONSOLE_SCREENSHOT")
        if shot:  # for a person to look at the page
            import base64
            b.cmd("Emulation.setDeviceMetricsOverride", width=1200, height=1800,
                  deviceScaleFactor=1, mobile=False)
            with open(shot, "wb") as f:
                f.write(base64.b64decode(b.cmd("Page.captureScreenshot", format="png")["data"]))
        errs = b.errors()
        check(not errs, "no script errors or CSP violations in the page: %r" % errs)
        return 0
    except Exception:
        s.dump_logs()
        raise
    finally:
        if b:
            b.close()
        s.close()


def main():
    mode, build = sys.argv[1], sys.argv[2]
    try:
        if mode == "api":
            test_api(build)
            return 0
        return test_browser(build)
    except Fail as e:
        print("FAIL:", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
