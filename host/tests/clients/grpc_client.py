"""A real gRPC client (grpcio) for the proxy's tests: one call to test.Echo.

CLI:  grpc_client.py TARGET SCENARIO [--token T] [--ca CAFILE]
                     [--server-name NAME] [--meta 'name: value' ...]

TARGET is host:port. Plaintext HTTP/2 (h2c) by default; TLS (ALPN h2) when
--ca names the PEM file of the CA to trust; --server-name overrides the name
checked against the certificate (default: TARGET's host).

SCENARIO (see grpc_server.py for the server side):
  unary          Unary(b"hello")                 -> ["echo:hello"]
  server_stream  ServerStream(b"3")              -> ["item-0", "item-1", "item-2"]
  client_stream  ClientStream(b"a", b"b", b"c")  -> ["joined:a,b,c"]
  fail           Fail(b"x")                      -> INVALID_ARGUMENT "bad input"
  metadata       Metadata(b"")                   -> [JSON of the metadata seen]

Every call carries the metadata `x-test-meta: hello`, `authorization:
Bearer T` with --token, and each --meta; its deadline is 10 s. Proxy
environment variables are ignored.

Prints ONE JSON line on stdout and exits 0 whatever the status:
  {"code": "OK" or the status code's name (e.g. "INVALID_ARGUMENT",
   "UNAVAILABLE", "UNAUTHENTICATED"),
   "details": str,                    # "" when none
   "responses": [str, ...],           # messages received, UTF-8 decoded
   "trailers": {name: value},         # trailing metadata
   "initial": {name: value}}          # initial (header) metadata
Metadata values are strings; binary (-bin) values are base64 (standard,
padded); a repeated name's values are joined with ", ". An unexpected
error (not a gRPC status) exits non-zero with a traceback.
"""

import argparse
import base64
import json
import sys

import grpc

TIMEOUT = 10.0
SCENARIOS = ("unary", "server_stream", "client_stream", "fail", "metadata")


def md_dict(md):
    out = {}
    for key, value in md or ():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def header(s):
    name, sep, value = s.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'name: value', got {s!r}")
    return name.strip().lower(), value.strip()


def main():
    ap = argparse.ArgumentParser(description="one gRPC call to test.Echo")
    ap.add_argument("target", help="host:port")
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("--token", help="sends authorization: Bearer TOKEN")
    ap.add_argument("--ca", help="PEM CA file: connect with TLS")
    ap.add_argument("--server-name", help="TLS name to verify (with --ca)")
    ap.add_argument("--meta", type=header, action="append", default=[],
                    help="extra metadata 'name: value' (repeatable)")
    args = ap.parse_args()

    options = [("grpc.enable_http_proxy", 0)]
    if args.ca:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target, options=options)

    md = [("x-test-meta", "hello")]
    if args.token is not None:
        md.append(("authorization", f"Bearer {args.token}"))
    md.extend(args.meta)

    responses = []
    call = None
    with channel:
        try:
            if args.scenario in ("unary", "fail", "metadata"):
                method = {"unary": "Unary", "fail": "Fail", "metadata": "Metadata"}[args.scenario]
                request = {"unary": b"hello", "fail": b"x", "metadata": b""}[args.scenario]
                stub = channel.unary_unary(f"/test.Echo/{method}")
                response, call = stub.with_call(request, metadata=md, timeout=TIMEOUT)
                responses.append(response)
            elif args.scenario == "server_stream":
                stub = channel.unary_stream("/test.Echo/ServerStream")
                call = stub(b"3", metadata=md, timeout=TIMEOUT)
                for response in call:
                    responses.append(response)
            else:  # client_stream
                stub = channel.stream_unary("/test.Echo/ClientStream")
                response, call = stub.with_call(
                    iter([b"a", b"b", b"c"]), metadata=md, timeout=TIMEOUT)
                responses.append(response)
        except grpc.RpcError as e:
            # The error raised by a call is the call itself (grpc.Call).
            if not isinstance(e, grpc.Call):
                raise
            call = e

        out = {
            "code": call.code().name,
            "details": call.details() or "",
            "responses": [r.decode("utf-8") for r in responses],
            "trailers": md_dict(call.trailing_metadata()),
            "initial": md_dict(call.initial_metadata()),
        }
    print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
