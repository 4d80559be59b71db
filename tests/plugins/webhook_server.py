"""Stand-in webhook receiver for test_worker_inbox_webhook: writes its port
to argv[1] and appends one JSON line per request to argv[2] (the status it
answered, the headers, the body as text); the test checks everything.
Answers by the recipient, the last ':' field of X-Buurtbus-Delivery:
2 -> 410 always; 3 -> 503 with Retry-After: 1 the first time; others 200."""
import http.server
import json
import os
import sys

seen = set()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        delivery = self.headers.get("X-Buurtbus-Delivery", "")
        rcpt = delivery.rsplit(":", 1)[-1]
        status = 200
        if rcpt == "2":
            status = 410
        elif rcpt == "3" and delivery not in seen:
            seen.add(delivery)
            status = 503
        with open(sys.argv[2], "a") as f:
            f.write(json.dumps({"status": status, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()},
                                "body": body.decode("utf-8")}) + "\n")
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
