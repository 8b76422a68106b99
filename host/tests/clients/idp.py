"""A small identity provider for the auth tests: keys made by `cryptography`,
tokens signed by PyJWT, the key set served as a JWKS over HTTP.

CLI:  idp.py [--max-age SECS] [--issuer URL]

Listens on 127.0.0.1 on a port the OS picks and prints one line
`READY <port>` on stdout. The issuer defaults to http://127.0.0.1:<port>.
Keys: one per algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256,
ES384, EdDSA), each with a `kid` and an `alg` in the JWKS.

  GET  /jwks                   the public keys, `cache-control: max-age=SECS`
                               (default 300)
  GET  /token?alg=RS256&sub=alice[&aud=A][&exp_in=3600][&nbf_in=0]
       [&iss=URL][&scope=a b][&email=E][&kid=K][&jku=URL][&embed_jwk=1]
       [&hs256_with_public_key=1]
                               a token signed with the current key for `alg`
                               (text/plain). `kid` overrides the header's
                               kid; `jku` adds a jku header; `embed_jwk`
                               embeds the public key as `jwk`;
                               `hs256_with_public_key` signs HS256 with the
                               RSA key's public PEM as the secret (the
                               RS/HS confusion attack).
  POST /rotate[?drop_old=1]    new keys for every algorithm (new kids); the
                               old ones stay published unless drop_old
  POST /garbage?on=1|0         serve `not json` at /jwks (on) or the keys (off)
  GET  /stats                  {"jwks": <GET /jwks count>, "other": <count of
                               requests to any other path>} as JSON
Exits 0 on SIGTERM.
"""

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


def new_key(alg):
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(alg, kid, key):
    public = key.public_key()
    if alg.startswith(("RS", "PS")):
        jwk = json.loads(RSAAlgorithm.to_jwk(public))
    elif alg.startswith("ES"):
        jwk = json.loads(ECAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(OKPAlgorithm.to_jwk(public))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.current = {}  # alg -> (kid, private key)
        self.published = []  # public JWKs
        self.garbage = False
        self.counts = {"jwks": 0, "other": 0}
        self.rotate(drop_old=True)

    def rotate(self, drop_old):
        with self.lock:
            if drop_old:
                self.published = []
            for alg in ALGS:
                kid = f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
                key = new_key(alg)
                self.current[alg] = (kid, key)
                self.published.append(public_jwk(alg, kid, key))


STATE = State()
ARGS = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def reply(self, status, body, content_type="application/json", headers=()):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/jwks":
            with STATE.lock:
                STATE.counts["jwks"] += 1
                body = "not json" if STATE.garbage else json.dumps({"keys": STATE.published})
            self.reply(200, body, headers=[("cache-control", f"public, max-age={ARGS.max_age}")])
            return
        with STATE.lock:
            STATE.counts["other"] += 1
        if url.path == "/stats":
            with STATE.lock:
                self.reply(200, json.dumps(STATE.counts))
        elif url.path == "/token":
            self.reply(200, token(q), "text/plain")
        else:
            self.reply(404, '{"error":"not_found"}')

    def do_POST(self):
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with STATE.lock:
            STATE.counts["other"] += 1
        if url.path == "/rotate":
            STATE.rotate(drop_old=q.get("drop_old") == "1")
            self.reply(200, "{}")
        elif url.path == "/garbage":
            with STATE.lock:
                STATE.garbage = q.get("on") == "1"
            self.reply(200, "{}")
        else:
            self.reply(404, '{"error":"not_found"}')


def token(q):
    alg = q.get("alg", "RS256")
    now = int(time.time())
    claims = {
        "sub": q.get("sub", "alice"),
        "iss": q.get("iss", ARGS.issuer),
        "iat": now,
        "exp": now + int(q.get("exp_in", "3600")),
    }
    if "aud" in q:
        claims["aud"] = q["aud"]
    if "nbf_in" in q:
        claims["nbf"] = now + int(q["nbf_in"])
    for name in ("scope", "email"):
        if name in q:
            claims[name] = q[name]
    with STATE.lock:
        kid, key = STATE.current["RS256" if alg == "HS256" else alg]
    if q.get("hs256_with_public_key") == "1":
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # PyJWT refuses a PEM as an HMAC secret; sign by hand, as an
        # attacker would.
        import base64, hashlib, hmac

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = b64(json.dumps(claims).encode())
        sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64(sig)}"
    headers = {"kid": q.get("kid", kid)}
    if "jku" in q:
        headers["jku"] = q["jku"]
    if q.get("embed_jwk") == "1":
        # The attacker's own key, embedded: a verifier trusting it accepts.
        attacker = new_key(alg)
        headers["jwk"] = public_jwk(alg, headers["kid"], attacker)
        return jwt.encode(claims, attacker, algorithm=alg, headers=headers)
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-age", type=int, default=300)
    parser.add_argument("--issuer")
    ARGS = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    if not ARGS.issuer:
        ARGS.issuer = f"http://127.0.0.1:{port}"
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY {port}", flush=True)
    server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
