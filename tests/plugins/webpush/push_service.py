"""Stand-in push service (RFC 8030) for test_worker_webpush, playing the
browser's side too: it creates the subscriptions (a P-256 key pair and an
auth secret each, with python3-cryptography), so it can open every message
it receives with an implementation of RFC 8291 independent of the plug-in's.

argv: portfile logfile. Before writing its port to portfile it writes the
subscriptions, as a JSON array of browser subscription objects
{"endpoint", "keys": {"p256dh", "auth"}}, to <dir of portfile>/subscriptions.json:
  [0] /push/1  -> 201
  [1] /gone/2  -> 410 always
  [2] /busy/3  -> 429 with Retry-After: 1 the first time, then 201
  [3] /push/4  -> 201
For each POST it decrypts the body (aes128gcm), verifies the VAPID JWT
(ES256 signature against the k= key, aud = this origin, exp within 24 h,
sub a mailto:/https: contact) and appends one JSON line to logfile: path,
status, headers (lower-case names), the decrypted payload (parsed JSON) or
decrypt_error, vapid_ok / vapid_error, the claims and k as hex. A message
that fails either check gets 400 / 401 instead of the scripted status."""
import base64
import http.server
import json
import os
import sys
import threading
import time

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hkdf(salt, ikm, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def point(key):
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)


def decrypt(body, ua_key, auth):
    """RFC 8291 §3.4 / RFC 8188 §2, one record: the plaintext."""
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    if idlen != 65 or len(body) < 21 + idlen + 17:
        raise ValueError("bad header")
    as_public = body[21:21 + idlen]
    ciphertext = body[21 + idlen:]
    if len(ciphertext) > rs:
        raise ValueError("more than one record")
    as_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    shared = ua_key.exchange(ec.ECDH(), as_key)
    ikm = hkdf(auth, shared, b"WebPush: info\x00" + point(ua_key) + as_public, 32)
    cek = hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
    end = len(padded.rstrip(b"\x00"))
    if end == 0 or padded[end - 1] != 2:
        raise ValueError("no last-record delimiter")
    return padded[:end - 1]


def check_vapid(header, origin):
    """(claims, k bytes) of a valid 'vapid t=<jwt>, k=<key>'; raises otherwise."""
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError("not vapid")
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    k = b64d(fields["k"])
    head, claims, sig = fields["t"].split(".")
    if json.loads(b64d(head)).get("alg") != "ES256":
        raise ValueError("alg")
    raw = b64d(sig)
    if len(raw) != 64:
        raise ValueError("signature length")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), k)
    pub.verify(der, (head + "." + claims).encode(), ec.ECDSA(hashes.SHA256()))
    c = json.loads(b64d(claims))
    now = time.time()
    if c.get("aud") != origin:
        raise ValueError("aud")
    if not (now < c.get("exp", 0) <= now + 86400 + 60):
        raise ValueError("exp")
    if not str(c.get("sub", "")).startswith(("mailto:", "https:")):
        raise ValueError("sub")
    return c, k


subs = {}  # path -> (private key, auth secret)
seen = set()
lock = threading.Lock()  # curl may use several connections: one thread each
origin = ""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        rec = {"path": self.path,
               "headers": {k.lower(): v for k, v in self.headers.items()},
               "body_len": len(body)}
        status = 201
        with lock:
            if self.path.startswith("/gone/"):
                status = 410
            elif self.path.startswith("/busy/") and self.path not in seen:
                seen.add(self.path)
                status = 429
        sub = subs.get(self.path)
        if sub is None:
            status = 404
        else:
            try:
                rec["payload"] = json.loads(decrypt(body, *sub))
            except (ValueError, InvalidTag) as e:
                rec["decrypt_error"] = type(e).__name__ + ": " + str(e)
                status = 400
        try:
            claims, k = check_vapid(self.headers.get("Authorization", ""), origin)
            rec.update(vapid_ok=True, claims=claims, k_hex=k.hex())
        except (ValueError, KeyError, InvalidSignature) as e:
            rec.update(vapid_ok=False, vapid_error=type(e).__name__ + ": " + str(e))
            status = 401
        rec["status"] = status
        with lock, open(sys.argv[2], "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
port = srv.server_address[1]
origin = "http://127.0.0.1:%d" % port
out = []
for path in ("/push/1", "/gone/2", "/busy/3", "/push/4"):
    key, auth = ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
    subs[path] = (key, auth)
    out.append({"endpoint": origin + path, "keys": {"p256dh": b64e(point(key)), "auth": b64e(auth)}})
subs_path = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "subscriptions.json")
with open(subs_path + ".tmp", "w") as f:
    json.dump(out, f)
os.rename(subs_path + ".tmp", subs_path)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(port))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
