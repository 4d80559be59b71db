"""Stand-in for a webhook provider that can be switched between behaving
and misbehaving, for fault scenario 9 (a slow or failing provider).

    slow_provider.py PORTFILE

Listens on 127.0.0.1 (a free port, written to PORTFILE) and answers
POSTs according to its mode, which GET /_mode/<mode> switches:

    ok         200 at once
    slow       200 after 30 s (GET /_mode/slow?delay=S for another delay)
    503        503 with Retry-After (GET /_mode/503?after=S, default 1)
    blackhole  reads the request and never answers; the connection is held
               until the client gives up and closes it

GET /_stats answers a JSON object: requests per mode, the requests open
now and the most ever open at once, the distinct delivery ids seen
(X-Buurtbus-Delivery) and those answered 200. A waiting request whose
client closed the connection is dropped without an answer, so "open"
counts what the client still waits for.

Threads: one per connection (ThreadingHTTPServer); they share the mode and
the counters, guarded by LOCK.
"""

import http.server
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()
STATE = {"mode": "ok", "delay": 30.0, "after": 1}
STATS = {"requests": {}, "open": 0, "max_open": 0, "answered": {}, "client_gone": 0}
SEEN = set()
OK_IDS = set()


def client_gone(sock):
    """True if the peer closed the connection (readable with nothing to read)."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        if url.path.startswith("/_mode/"):
            mode = url.path[len("/_mode/"):]
            if mode not in ("ok", "slow", "503", "blackhole"):
                return self.answer(404)
            with LOCK:
                STATE["mode"] = mode
                if "delay" in q:
                    STATE["delay"] = float(q["delay"][0])
                if "after" in q:
                    STATE["after"] = int(q["after"][0])
            return self.answer(200, b"ok\n")
        if url.path == "/_stats":
            with LOCK:
                body = dict(STATS, mode=STATE["mode"], seen=len(SEEN), ok_ids=sorted(OK_IDS))
            return self.answer(200, json.dumps(body).encode())
        return self.answer(404)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        delivery = self.headers.get("X-Buurtbus-Delivery", "")
        with LOCK:
            mode, delay, after = STATE["mode"], STATE["delay"], STATE["after"]
            STATS["requests"][mode] = STATS["requests"].get(mode, 0) + 1
            STATS["open"] += 1
            STATS["max_open"] = max(STATS["max_open"], STATS["open"])
            SEEN.add(delivery)
        try:
            if mode in ("slow", "blackhole"):
                t_end = time.monotonic() + (delay if mode == "slow" else 1e9)
                while time.monotonic() < t_end:
                    if client_gone(self.connection):
                        with LOCK:
                            STATS["client_gone"] += 1
                        self.close_connection = True
                        return
                    time.sleep(0.05)
            status = 503 if mode == "503" else 200
            with LOCK:
                STATS["answered"][str(status)] = STATS["answered"].get(str(status), 0) + 1
                if status == 200:
                    OK_IDS.add(delivery)
            headers = {"Retry-After": str(after)} if status == 503 else {}
            self.answer(status, b"", headers)
        finally:
            with LOCK:
                STATS["open"] -= 1

    def answer(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, sys.argv[1])
    srv.serve_forever()


if __name__ == "__main__":
    main()
