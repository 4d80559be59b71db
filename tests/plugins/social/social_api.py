"""Stand-in for the three social APIs, for test_worker_social: writes its
port to argv[1] and appends one JSON line per request to argv[2] (which
API, the status it answered, the path, the headers, the parsed body, the
time, whether a post was created and its id).

  Mastodon  POST /api/v1/statuses      Bearer MASTODON_TOKEN, JSON body
  X         POST /2/tweets             Bearer X_TOKEN, JSON body
  Facebook  POST /v19.0/PAGE_ID/feed   form body with access_token=FB_TOKEN

Like the real services: a wrong token is 401 (Mastodon, X) or a Graph
error 190 (Facebook); Mastodon remembers each Idempotency-Key and answers a
repeated key with the same status instead of posting again; X refuses a
text it already posted with 403 "duplicate content".

Scripted failures, by what the post says:
  "Busy"   the first time: rate limited. Mastodon 429 with X-RateLimit-Reset
           (ISO 8601) and Retry-After; X 429 with x-rate-limit-reset (epoch
           seconds) and Retry-After; Facebook 400 with Graph error code 32
           and Retry-After.
  "Flaky"  Mastodon only, the first time: the status is created, then the
           answer is lost (503): the retry must not post it twice."""
import datetime
import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

MASTODON_TOKEN = "mastodon-test-token"
X_TOKEN = "x-test-token"
FB_TOKEN = "fb-page-token"
PAGE_ID = "1234567890"
RESET_S = 2

lock = threading.Lock()
idempotency = {}   # Mastodon: key -> status id
x_texts = set()    # X: texts posted
busy_seen = set()  # (api, text) rate limited once
flaky_seen = set()
next_id = [1000]


def new_id():
    next_id[0] += 1
    return str(next_id[0])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, obj, headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def record(self, api, status, body, posted=False, post_id=""):
        with open(sys.argv[2], "a") as f:
            f.write(json.dumps({"api": api, "status": status, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()},
                                "body": body, "t": time.time(), "posted": posted,
                                "post_id": post_id}) + "\n")

    def mastodon(self, raw):
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        if self.headers.get("Authorization") != "Bearer " + MASTODON_TOKEN:
            self.record("mastodon", 401, body)
            return self.answer(401, {"error": "The access token is invalid"})
        text = body.get("status", "")
        key = self.headers.get("Idempotency-Key", "")
        if not text:
            self.record("mastodon", 422, body)
            return self.answer(422, {"error": "Validation failed: Text can't be blank"})
        if key and key in idempotency:
            self.record("mastodon", 200, body, False, idempotency[key])
            return self.answer(200, {"id": idempotency[key], "content": text})
        if "Busy" in text and ("mastodon", text) not in busy_seen:
            busy_seen.add(("mastodon", text))
            reset = datetime.datetime.now(datetime.timezone.utc) + \
                datetime.timedelta(seconds=RESET_S)
            self.record("mastodon", 429, body)
            return self.answer(429, {"error": "Too many requests"}, [
                ("X-RateLimit-Limit", "300"), ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", reset.strftime("%Y-%m-%dT%H:%M:%S.000Z")),
                ("Retry-After", str(RESET_S))])
        sid = new_id()
        if key:
            idempotency[key] = sid
        if "Flaky" in text and key not in flaky_seen:
            flaky_seen.add(key)
            self.record("mastodon", 503, body, True, sid)
            return self.answer(503, {"error": "lost"})
        self.record("mastodon", 200, body, True, sid)
        return self.answer(200, {"id": sid, "content": text, "visibility": body.get("visibility")})

    def x(self, raw):
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        if self.headers.get("Authorization") != "Bearer " + X_TOKEN:
            self.record("x", 401, body)
            return self.answer(401, {"title": "Unauthorized", "status": 401})
        text = body.get("text", "")
        if text in x_texts:
            self.record("x", 403, body)
            return self.answer(403, {
                "detail": "You are not allowed to create a Tweet with duplicate content.",
                "type": "about:blank", "title": "Forbidden", "status": 403})
        if "Busy" in text and ("x", text) not in busy_seen:
            busy_seen.add(("x", text))
            self.record("x", 429, body)
            return self.answer(429, {"title": "Too Many Requests", "status": 429}, [
                ("x-rate-limit-limit", "17"), ("x-rate-limit-remaining", "0"),
                ("x-rate-limit-reset", str(int(time.time()) + RESET_S)),
                ("Retry-After", str(RESET_S))])
        x_texts.add(text)
        pid = new_id()
        self.record("x", 201, body, True, pid)
        return self.answer(201, {"data": {"id": pid, "text": text}})

    def facebook(self, raw):
        form = urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        body = {k: v[0] for k, v in form.items()}
        token = body.pop("access_token", None)
        body["token_ok"] = token == FB_TOKEN
        if token != FB_TOKEN:
            self.record("facebook", 400, body)
            return self.answer(400, {"error": {"message": "Invalid OAuth access token.",
                                               "type": "OAuthException", "code": 190}})
        text = body.get("message", "")
        if "Busy" in text and ("facebook", text) not in busy_seen:
            busy_seen.add(("facebook", text))
            self.record("facebook", 400, body)
            return self.answer(400, {"error": {"message": "Page request limit reached",
                                               "type": "OAuthException", "code": 32}},
                               [("Retry-After", str(RESET_S))])
        pid = PAGE_ID + "_" + new_id()
        self.record("facebook", 200, body, True, pid)
        return self.answer(200, {"id": pid})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            if self.path == "/api/v1/statuses":
                return self.mastodon(raw)
            if self.path == "/2/tweets":
                return self.x(raw)
            if self.path == "/v19.0/%s/feed" % PAGE_ID:
                return self.facebook(raw)
            self.record("unknown", 404, raw.decode("utf-8", "replace"))
            return self.answer(404, {"error": "not found"})

    def log_message(self, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
