"""Test HTTP endpoint for the httptest plug-in: writes its port to argv[1],
appends each accepted delivery id to argv[2]. Recipient 2: 410 always;
3: 503 with Retry-After: 1 on the first try; 4: 400 with X-Error: bad_token;
others: 200.
Listens on $BB_STAND_IN_PORT if set, else on a port of its own."""
import http.server
import os
import sys

seen = set()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        rcpt = self.headers.get("X-Recipient", "")
        if rcpt == "2":
            self.send_response(410)
        elif rcpt == "3" and body not in seen:
            seen.add(body)
            self.send_response(503)
            self.send_header("Retry-After", "1")
        elif rcpt == "4":
            self.send_response(400)
            self.send_header("X-Error", "bad_token")
        else:
            with open(sys.argv[2], "a") as f:
                f.write(body + "\n")
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


srv = http.server.HTTPServer(("127.0.0.1", int(os.environ.get("BB_STAND_IN_PORT", "0"))), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
