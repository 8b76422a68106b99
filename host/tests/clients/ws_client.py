"""A real WebSocket client (websockets, asyncio API) for the proxy's tests.

CLI:  ws_client.py URL [--ca CAFILE] [--server-name NAME]
                       [--header 'name: value' ...] [--count N] [--headers]

URL is ws://host:port/path or wss://...; with wss, --ca names the PEM file
of the CA to trust (default: the system's) and --server-name overrides the
name checked against the certificate (default: URL's host). Each --header is
sent with the opening handshake. Proxy environment variables are ignored.

Against ws_server.py: sends N (default 3) text messages "m0" .. "m<N-1>"
and one 64 KiB binary message, one at a time, and checks each echo
("echo:m<i>", the same bytes); with --headers it then sends "!headers" and
reports the handshake headers the server saw. Then closes (code 1000).
Each step has a 10 s timeout.

Prints ONE JSON line on stdout:
  {"ok": true, "echoes": ["echo:m0", ...], "binary_ok": true
   [, "headers": {name: value}]}                          exit 0
  {"ok": false, "status": <HTTP status>, "body": str}     exit 0
      the handshake was refused (e.g. 401 from the proxy)
  {"ok": false, "echoes": [...], "binary_ok": bool, "error": str}   exit 1
      an echo was wrong
Anything else (connection refused, TLS error, timeout, closed early) exits
non-zero with a traceback.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

TIMEOUT = 10.0
BINARY_SIZE = 64 * 1024


def header(s):
    name, sep, value = s.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'name: value', got {s!r}")
    return name.strip(), value.strip()


async def run(args):
    kwargs = {}
    if args.url.startswith("wss:"):
        kwargs["ssl"] = ssl.create_default_context(cafile=args.ca)
        if args.server_name:
            kwargs["server_hostname"] = args.server_name
    try:
        ws = await connect(
            args.url,
            additional_headers=args.header,
            proxy=None,
            open_timeout=TIMEOUT,
            max_size=16 * 1024 * 1024,
            **kwargs,
        )
    except InvalidStatus as e:
        body = (e.response.body or b"").decode("utf-8", "replace")
        return {"ok": False, "status": e.response.status_code, "body": body}, 0

    out = {"ok": True, "echoes": [], "binary_ok": False}
    errors = []
    async with ws:
        for i in range(args.count):
            await ws.send(f"m{i}")
            echo = await asyncio.wait_for(ws.recv(), TIMEOUT)
            out["echoes"].append(echo if isinstance(echo, str) else repr(echo))
            if echo != f"echo:m{i}":
                errors.append(f"message {i}: sent 'm{i}', got {echo!r:.80}")
        payload = os.urandom(BINARY_SIZE)
        await ws.send(payload)
        echo = await asyncio.wait_for(ws.recv(), TIMEOUT)
        out["binary_ok"] = echo == payload
        if not out["binary_ok"]:
            got = f"{len(echo)} bytes" if isinstance(echo, bytes) else f"text {echo!r:.80}"
            errors.append(f"binary: sent {BINARY_SIZE} bytes, got {got} back, not the same")
        if args.headers:
            await ws.send("!headers")
            reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if isinstance(reply, str) and reply.startswith("headers:"):
                out["headers"] = json.loads(reply[len("headers:"):])
            else:
                errors.append(f"!headers: got {reply!r:.80}")
    if errors:
        out["ok"] = False
        out["error"] = "; ".join(errors)
        return out, 1
    return out, 0


def main():
    ap = argparse.ArgumentParser(description="WebSocket echo check")
    ap.add_argument("url")
    ap.add_argument("--ca", help="PEM CA file to trust for wss://")
    ap.add_argument("--server-name", help="TLS name to verify (wss://)")
    ap.add_argument("--header", type=header, action="append", default=[],
                    help="handshake header 'name: value' (repeatable)")
    ap.add_argument("--count", type=int, default=3, help="text messages (default 3)")
    ap.add_argument("--headers", action="store_true",
                    help="also report the handshake headers the server saw")
    args = ap.parse_args()
    out, code = asyncio.run(run(args))
    print(json.dumps(out, sort_keys=True), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
