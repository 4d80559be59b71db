"""Stand-in push provider for test_worker_push: one HTTP/2 cleartext server
(prior knowledge, asyncio + h2) playing three of Google's and Apple's
endpoints on 127.0.0.1:

  POST /token                                  Google's OAuth2 token endpoint
  POST /v1/projects/{project}/messages:send    FCM HTTP v1
  POST /3/device/{token}                       APNs

Usage: push_provider.py PORTFILE LOGFILE, with $BB_PUSH_PROVIDER_CONFIG
naming a JSON file: {"rsa_public_key": PEM file, "ec_public_key": PEM
file, "client_email", "project_id", "team_id", "key_id", "topic"}, and
optionally "tls_cert"/"tls_key" (PEM files: then TLS with ALPN h2, as
the real providers; else HTTP/2 cleartext with prior knowledge) and
"goaway": true (end every connection after its first request, which
curl 7.88's prior-knowledge connection reuse needs: curl#10634). Writes
its port to PORTFILE and one JSON line per request to LOGFILE: conn (the
connection's number), stream, method, path, headers (lower case), body,
status, and what it checked ("auth": the access token or provider JWT
used).

Every signature and claim is checked for real: the OAuth assertion
(RS256) against the service account's public key, the APNs provider token
(ES256, raw r||s) against the .p8 key's public half; FCM requests need a
bearer token this server issued.

Behaviour by device token (FCM message.token, APNs path):
  gone-*        404 UNREGISTERED / 410 Unregistered
  busy-*        429 (Retry-After: 1) the first time, then 200
  flaky-*       503 the first time, then 200
  bad-*         400 INVALID_ARGUMENT / 400 BadDeviceToken
  badtoken-*    400 INVALID_ARGUMENT naming message.token (FCM only)
  wrongtopic-*  400 DeviceTokenNotForTopic (APNs only)
  stale-*       the first time: 401 UNAUTHENTICATED and the access token
                revoked / 403 ExpiredProviderToken and that JWT refused
                from then on
  others        200
"""
import os
import sys

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
except ImportError:
    # The PATH's python3 may lack h2; Debian's has it (deploy/deps.sh).
    if sys.executable != "/usr/bin/python3":
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    raise

import asyncio
import base64
import itertools
import json
import ssl
import time
import urllib.parse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"

with open(os.environ["BB_PUSH_PROVIDER_CONFIG"]) as f:
    CONF = json.load(f)
with open(CONF["rsa_public_key"], "rb") as f:
    RSA_KEY = serialization.load_pem_public_key(f.read())
with open(CONF["ec_public_key"], "rb") as f:
    EC_KEY = serialization.load_pem_public_key(f.read())

LOG = sys.argv[2]
PORT = 0
SCHEME = "https" if CONF.get("tls_cert") else "http"
issued = set()       # access tokens handed out
seen = set()         # tokens whose scripted first failure has happened
expired = set()      # APNs provider tokens refused from now on
conn_ids = itertools.count(1)
token_ids = itertools.count(1)
message_ids = itertools.count(1)


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def check_jws(jws, alg):
    """The header and claims of a compact JWS whose signature verifies, or
    raises ValueError."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    sig = b64url_decode(parts[2])
    signed = (parts[0] + "." + parts[1]).encode()
    if header.get("alg") != alg:
        raise ValueError("alg")
    try:
        if alg == "RS256":
            RSA_KEY.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(sig) != 64:
                raise ValueError("ES256 signature is not 64 bytes")
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                       int.from_bytes(sig[32:], "big"))
            EC_KEY.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ValueError("signature")
    return header, claims


def first_time(key):
    if key in seen:
        return False
    seen.add(key)
    return True


def oauth(headers, body):
    form = urllib.parse.parse_qs(body.decode())
    if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
        return 400, {}, {"error": "unsupported_grant_type"}, ""
    try:
        _, claims = check_jws(form.get("assertion", [""])[0], "RS256")
    except (ValueError, KeyError) as e:
        return 400, {}, {"error": "invalid_grant", "error_description": str(e)}, ""
    now = time.time()
    ok = (claims.get("iss") == CONF["client_email"] and claims.get("scope") == FCM_SCOPE
          and claims.get("aud") == "%s://127.0.0.1:%d/token" % (SCHEME, PORT)
          and abs(claims.get("iat", 0) - now) < 300
          and claims.get("exp") == claims.get("iat", 0) + 3600)
    if not ok:
        return 400, {}, {"error": "invalid_grant", "error_description": "claims"}, ""
    tok = "ya29.stand-in-%d" % next(token_ids)
    issued.add(tok)
    return 200, {}, {"access_token": tok, "expires_in": 3600, "token_type": "Bearer"}, tok


def fcm_error(code, status, message, error_code=None, token_field=False):
    details = []
    if error_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": error_code})
    if token_field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "message.token",
                                             "description": "Invalid registration token"}]})
    return {"error": {"code": code, "message": message, "status": status, "details": details}}


def fcm(path, headers, body):
    auth = headers.get("authorization", "")
    tok = auth[7:] if auth.startswith("Bearer ") else ""
    if tok not in issued:
        return 401, {}, fcm_error(401, "UNAUTHENTICATED", "bad credentials"), tok
    if path != "/v1/projects/%s/messages:send" % CONF["project_id"]:
        return 404, {}, fcm_error(404, "NOT_FOUND", "no such project"), tok
    try:
        device = json.loads(body)["message"]["token"]
    except (ValueError, KeyError, TypeError):
        return 400, {}, fcm_error(400, "INVALID_ARGUMENT", "bad JSON"), tok
    if device.startswith("gone-"):
        return 404, {}, fcm_error(404, "NOT_FOUND", "Requested entity was not found.",
                                  "UNREGISTERED"), tok
    if device.startswith("busy-") and first_time(device):
        return 429, {"retry-after": "1"}, fcm_error(429, "RESOURCE_EXHAUSTED", "quota",
                                                    "QUOTA_EXCEEDED"), tok
    if device.startswith("flaky-") and first_time(device):
        return 503, {}, fcm_error(503, "UNAVAILABLE", "try later", "UNAVAILABLE"), tok
    if device.startswith("badtoken-"):
        return 400, {}, fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a "
                                  "valid FCM registration token", "INVALID_ARGUMENT", True), tok
    if device.startswith("bad-"):
        return 400, {}, fcm_error(400, "INVALID_ARGUMENT", "Invalid value",
                                  "INVALID_ARGUMENT"), tok
    if device.startswith("stale-") and first_time(device):
        issued.discard(tok)  # as if it had expired
        return 401, {}, fcm_error(401, "UNAUTHENTICATED", "token expired"), tok
    return 200, {}, {"name": "projects/%s/messages/%d" % (CONF["project_id"],
                                                          next(message_ids))}, tok


def apns(path, headers, body):
    auth = headers.get("authorization", "")
    jwt = auth[7:] if auth.startswith("bearer ") else ""
    try:
        header, claims = check_jws(jwt, "ES256")
        if header.get("kid") != CONF["key_id"] or claims.get("iss") != CONF["team_id"]:
            raise ValueError("kid or iss")
        if abs(claims.get("iat", 0) - time.time()) > 3600:
            return 403, {}, {"reason": "ExpiredProviderToken"}, jwt
    except (ValueError, KeyError):
        return 403, {}, {"reason": "InvalidProviderToken"}, jwt
    if headers.get("apns-topic") != CONF["topic"]:
        return 400, {}, {"reason": "BadTopic"}, jwt
    if headers.get("apns-push-type") != "alert":
        return 400, {}, {"reason": "InvalidPushType"}, jwt
    try:
        json.loads(body)
    except ValueError:
        return 400, {}, {"reason": "PayloadEmpty"}, jwt
    device = path[len("/3/device/"):]
    if jwt in expired:
        return 403, {}, {"reason": "ExpiredProviderToken"}, jwt
    if device.startswith("stale-") and first_time(device):
        expired.add(jwt)  # as if it were older than an hour
        return 403, {}, {"reason": "ExpiredProviderToken"}, jwt
    if device.startswith("gone-"):
        return 410, {}, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}, jwt
    if device.startswith("busy-") and first_time(device):
        return 429, {"retry-after": "1"}, {"reason": "TooManyRequests"}, jwt
    if device.startswith("flaky-") and first_time(device):
        return 503, {}, {"reason": "ServiceUnavailable"}, jwt
    if device.startswith("bad-"):
        return 400, {}, {"reason": "BadDeviceToken"}, jwt
    if device.startswith("wrongtopic-"):
        return 400, {}, {"reason": "DeviceTokenNotForTopic"}, jwt
    return 200, {"apns-id": headers.get("apns-id", "")}, None, jwt


def answer(method, path, headers, body):
    if method != "POST":
        return 405, {}, None, ""
    if path == "/token":
        return oauth(headers, body)
    if path.startswith("/v1/projects/"):
        return fcm(path, headers, body)
    if path.startswith("/3/device/"):
        return apns(path, headers, body)
    return 404, {}, None, ""


async def serve(reader, writer):
    conn_id = next(conn_ids)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    streams = {}
    closing = False
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if closing:
                continue  # after our GOAWAY: read until the client closes
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    streams[ev.stream_id] = [dict(ev.headers), bytearray()]
                elif isinstance(ev, h2.events.DataReceived):
                    streams[ev.stream_id][1] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    hdrs, body = streams.pop(ev.stream_id)
                    method, path = hdrs.get(":method"), hdrs.get(":path")
                    status, extra, reply, auth = answer(method, path, hdrs, bytes(body))
                    with open(LOG, "a") as f:
                        f.write(json.dumps({"conn": conn_id, "stream": ev.stream_id,
                                            "method": method, "path": path,
                                            "headers": {k.lower(): v for k, v in hdrs.items()},
                                            "body": body.decode("utf-8", "replace"),
                                            "status": status, "auth": auth}) + "\n")
                    out = json.dumps(reply).encode() if reply is not None else b""
                    rh = [(":status", str(status)), ("content-length", str(len(out)))]
                    if out:
                        rh.append(("content-type", "application/json"))
                    rh += list(extra.items())
                    conn.send_headers(ev.stream_id, rh, end_stream=not out)
                    if out:
                        conn.send_data(ev.stream_id, out, end_stream=True)
                    if CONF.get("goaway"):
                        conn.close_connection(last_stream_id=ev.stream_id)
                        closing = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    break
            writer.write(conn.data_to_send())
            await writer.drain()
    except (OSError, h2.exceptions.ProtocolError) as e:
        print("push_provider: connection %d: %r" % (conn_id, e), file=sys.stderr)
    finally:
        writer.close()


async def main():
    global PORT
    tls = None
    if CONF.get("tls_cert"):
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(CONF["tls_cert"], CONF["tls_key"])
        tls.set_alpn_protocols(["h2"])
    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    PORT = srv.sockets[0].getsockname()[1]
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(PORT))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    async with srv:
        await srv.serve_forever()


asyncio.run(main())
