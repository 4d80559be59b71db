#!/usr/bin/python3
"""Protocol test of bb-smtp-sink's TLS side (STARTTLS, --smtps, AUTH gating).

The smtp plug-in's TLS cases (workers/plugins/smtp/test_smtp_format.c) only
mean something if the stand-in behaves like a strict provider, so this
speaks raw SMTP to the built sink and checks what libcurl never exercises:
no AUTH offered in plaintext, 538/530 before TLS, plaintext pipelined
behind STARTTLS dropped (RFC 3207 5), EHLO state forgotten after the
upgrade (503 until EHLO), --smtps from the first byte, and the --log
line (tls version, user) per message. Single-threaded; one sink at a time.

Usage: test_sink_tls.py /path/to/bb-smtp-sink
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile

SINK = sys.argv[1]
sinks = []  # running sink processes, stopped on failure


def fail(msg):
    print("FAIL: " + msg)
    for p in sinks:
        if p.poll() is None:
            p.kill()
            p.wait()
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


class Conn:
    """One SMTP client connection; reads whole (multi-line) replies."""

    def __init__(self, port, ctx=None, implicit=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.ctx = ctx
        if implicit:
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data.encode())

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                fail("connection closed, buffered %r" % self.buf)
            self.buf += chunk
        out, self.buf = self.buf.split(b"\r\n", 1)
        return out.decode()

    def reply(self):
        lines = [self.line()]
        while lines[-1][3:4] == "-":
            lines.append(self.line())
        return lines

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def starttls(self):
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname="localhost")

    def close(self):
        self.sock.close()


def code(reply):
    return int(reply[0][:3])


def start_sink(tmp, *extra):
    p = subprocess.Popen([SINK, "--port", "0", "--maildir", tmp, "--log", tmp + "/sink.log"]
                         + list(extra), stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    sinks.append(p)
    check(line.startswith("listening 127.0.0.1:"), "sink did not start: %r" % line)
    return p, int(line.rsplit(":", 1)[1])


def stop_sink(p):
    p.send_signal(signal.SIGTERM)
    stats = p.stdout.read()
    p.wait(10)
    return stats


def send_message(c, rcpt):
    check(code(c.cmd("MAIL FROM:<buurt@example.org>")) == 250, "MAIL in TLS refused")
    check(code(c.cmd("RCPT TO:<%s>" % rcpt)) == 250, "RCPT refused")
    check(code(c.cmd("DATA")) == 354, "DATA refused")
    r = c.cmd("Subject: x\r\n\r\n..dot\r\n.")
    check(code(r) == 250, "message not accepted: %r" % r)


def main():
    tmp = tempfile.mkdtemp(prefix="bb-sink-tls.")
    cert, key = tmp + "/cert.pem", tmp + "/key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-days", "1", "-keyout", key, "-out", cert],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        print("SKIP: no openssl tool")
        shutil.rmtree(tmp)
        return 77  # ctest SKIP_RETURN_CODE
    ctx = ssl.create_default_context(cafile=cert)

    # Options that need a certificate are refused without one.
    for bad in (["--smtps"], ["--require-tls"], ["--tls-cert", cert]):
        r = subprocess.run([SINK, "--port", "0"] + bad, capture_output=True)
        check(r.returncode == 2, "%s without a key pair: exit %d" % (bad, r.returncode))

    # STARTTLS, required, with AUTH.
    sink, port = start_sink(tmp, "--tls-cert", cert, "--tls-key", key, "--require-tls",
                            "--auth", "bb:geheim")
    c = Conn(port, ctx)
    check(code(c.reply()) == 220, "no greeting")
    ehlo = c.cmd("EHLO client.example")
    check("250-STARTTLS" in ehlo, "STARTTLS not offered: %r" % ehlo)
    check(not any("AUTH" in l for l in ehlo), "AUTH offered in plaintext: %r" % ehlo)
    check(code(c.cmd("AUTH PLAIN AGJiAGdlaGVpbQ==")) == 538, "AUTH in plaintext not 538")
    check(code(c.cmd("MAIL FROM:<buurt@example.org>")) == 530, "MAIL in plaintext not 530")
    # A MAIL pipelined behind STARTTLS in plaintext must not survive the
    # upgrade: had the sink kept it, it would answer it in plaintext or feed
    # it to OpenSSL as the start of the handshake, which would then fail.
    c.send("STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
    check(code(c.reply()) == 220, "STARTTLS not 220")
    check(c.buf == b"", "sink answered the injected command in plaintext")
    c.starttls()
    check(code(c.cmd("MAIL FROM:<buurt@example.org>")) == 503, "session not reset by STARTTLS")
    ehlo = c.cmd("EHLO client.example")
    check(code(ehlo) == 250 and "250-AUTH PLAIN LOGIN" in ehlo, "no AUTH in TLS: %r" % ehlo)
    check(not any("STARTTLS" in l for l in ehlo), "STARTTLS offered inside TLS")
    check(code(c.cmd("STARTTLS")) == 503, "second STARTTLS not 503")
    check(code(c.cmd("MAIL FROM:<buurt@example.org>")) == 530, "MAIL without AUTH not 530")
    check(code(c.cmd("AUTH PLAIN AGJiAGZvdXQ=")) == 535, "wrong password not 535")
    # AUTH LOGIN: user bb, password geheim
    check(code(c.cmd("AUTH LOGIN")) == 334, "AUTH LOGIN")
    check(code(c.cmd("YmI=")) == 334, "AUTH LOGIN user")
    check(code(c.cmd("Z2VoZWlt")) == 235, "AUTH LOGIN password")
    send_message(c, "lezer@example.net")
    check(code(c.cmd("QUIT")) == 221, "QUIT")
    c.close()
    stats = stop_sink(sink)
    check("tls=1 auth_failed=1" in stats, "stats: %r" % stats)
    with open(tmp + "/sink.log") as f:
        log = f.read().splitlines()
    check(len(log) == 1 and log[0].startswith("message=1 tls=TLSv1.") and " user=bb " in log[0],
          "log: %r" % log)
    with open(tmp + "/1.eml", "rb") as f:
        eml = f.read()
    check(b"injected" not in eml and eml.endswith(b"\r\n.dot\r\n"), "1.eml: %r" % eml)

    # --smtps: TLS from the first byte; no STARTTLS; AUTH PLAIN inside.
    os.unlink(tmp + "/sink.log")
    sink, port = start_sink(tmp, "--tls-cert", cert, "--tls-key", key, "--smtps",
                            "--auth", "bb:geheim")
    c = Conn(port, ctx, implicit=True)
    check(code(c.reply()) == 220, "no greeting over TLS")
    ehlo = c.cmd("EHLO client.example")
    check("250-AUTH PLAIN LOGIN" in ehlo and not any("STARTTLS" in l for l in ehlo),
          "smtps EHLO: %r" % ehlo)
    check(code(c.cmd("STARTTLS")) == 503, "STARTTLS inside smtps not 503")
    check(code(c.cmd("AUTH PLAIN AGJiAGdlaGVpbQ==")) == 235, "AUTH PLAIN in smtps")
    send_message(c, "lezer@example.net")
    c.close()
    stop_sink(sink)
    with open(tmp + "/sink.log") as f:
        log = f.read()
    check(log.startswith("message=1 tls=TLSv1.") and " user=bb " in log, "smtps log: %r" % log)

    # Without TLS options nothing changed: AUTH offered in plaintext, no
    # STARTTLS (454), the log says tls=no.
    os.unlink(tmp + "/sink.log")
    sink, port = start_sink(tmp, "--user", "bb", "--password", "geheim")
    c = Conn(port)
    check(code(c.reply()) == 220, "no greeting")
    ehlo = c.cmd("EHLO client.example")
    check("250-AUTH PLAIN LOGIN" in ehlo and not any("STARTTLS" in l for l in ehlo),
          "plain EHLO: %r" % ehlo)
    check(code(c.cmd("STARTTLS")) == 454, "STARTTLS without TLS not 454")
    check(code(c.cmd("AUTH PLAIN AGJiAGdlaGVpbQ==")) == 235, "AUTH PLAIN in plaintext")
    send_message(c, "lezer@example.net")
    c.close()
    stop_sink(sink)
    with open(tmp + "/sink.log") as f:
        log = f.read()
    check(log.startswith("message=1 tls=no user=bb "), "plain log: %r" % log)

    shutil.rmtree(tmp)
    print("ok: STARTTLS, --require-tls, --smtps, AUTH gating and --log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
