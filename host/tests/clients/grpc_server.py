"""A real gRPC server (grpcio, plaintext HTTP/2 = h2c) for the proxy's tests.

CLI:  grpc_server.py

Listens on 127.0.0.1 on a port the OS picks, prints one line `READY <port>`
on stdout once it accepts calls, and exits 0 on SIGTERM (or SIGINT).

Service `test.Echo`, messages are raw bytes (no protobuf: generic handlers
with identity serializers), so the paths are /test.Echo/<Method>:
  Unary         request R -> b"echo:" + R, with the trailer `x-trailer: kept`
  ServerStream  request b"<n>" (ASCII integer) -> n messages b"item-0" ..
                b"item-<n-1>"
  ClientStream  requests R1..Rk -> b"joined:" + b",".join(R1..Rk)
  Fail          aborts: INVALID_ARGUMENT, details "bad input", and the
                trailer `grpc-status-details-bin` = a google.rpc.Status
                (code 3, message "bad input"), protobuf encoded by hand
  Metadata      returns the invocation metadata it received as UTF-8 JSON:
                {"name": "value"}; a repeated name's values are joined with
                ", "; binary (-bin) values are base64 (standard, padded)
"""

import base64
import json
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def rpc_status_bytes(code, message):
    """google.rpc.Status {code = 1 (int32), message = 2 (string)} encoded."""
    msg = message.encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg


class _Status(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def unary(request, context):
    context.set_trailing_metadata((("x-trailer", "kept"),))
    return b"echo:" + request


def server_stream(request, context):
    n = int(request.decode("ascii"))
    for i in range(n):
        yield f"item-{i}".encode()


def client_stream(request_iterator, context):
    return b"joined:" + b",".join(request_iterator)


def fail(request, context):
    code = grpc.StatusCode.INVALID_ARGUMENT
    details = "bad input"
    context.abort_with_status(
        _Status(
            code,
            details,
            (("grpc-status-details-bin", rpc_status_bytes(code.value[0], details)),),
        )
    )


def metadata(request, context):
    seen = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        seen[key] = f"{seen[key]}, {value}" if key in seen else value
    return json.dumps(seen, sort_keys=True).encode("utf-8")


def main():
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            # No (de)serializers: the messages are the raw bytes.
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Metadata": grpc.unary_unary_rpc_method_handler(metadata),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        handlers=(handler,),
        options=(("grpc.so_reuseport", 0),),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        sys.exit("grpc_server: could not bind 127.0.0.1:0")
    server.start()

    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    print(f"READY {port}", flush=True)
    # Event.wait with a timeout, so the signal handler gets to run.
    while not stopping.wait(0.2):
        pass
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
