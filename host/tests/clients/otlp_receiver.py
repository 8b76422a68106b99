"""An OTLP/HTTP receiver for the telemetry tests: it decodes what the sidecar
exports with the OpenTelemetry project's own protobuf classes
(`opentelemetry-proto`) and keeps it for the test to read back as JSON.

CLI:  otlp_receiver.py

Listens on 127.0.0.1 on a port the OS picks and prints one line
`READY <port>` on stdout.

  POST /v1/traces   an ExportTraceServiceRequest (application/x-protobuf)
  POST /v1/logs     an ExportLogsServiceRequest (application/x-protobuf)
                    Both answer 200 with an empty Export*ServiceResponse,
                    or 503 while failing (see /fail).
  GET  /spans       every span received, as a JSON list of
                    {"trace_id", "span_id", "parent_span_id" (hex, "" for a
                    root), "name", "kind" (SERVER, CLIENT, INTERNAL...),
                    "status" (UNSET, OK, ERROR), "status_message",
                    "attributes" {key: value}, "service" (service.name),
                    "scope", "trace_state", "start", "end" (unix nanos)}
  GET  /logs        every log record received, as a JSON list of
                    {"trace_id", "span_id", "severity", "body",
                    "attributes", "service", "time"}
  GET  /stats       {"trace_requests": N, "log_requests": N, "refused": N,
                     "content_types": [...]}
  POST /fail?on=1|0 answer 503 to exports (on) or accept them (off)
Exits 0 on SIGTERM.
"""

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

lock = threading.Lock()
spans = []
logs = []
stats = {"trace_requests": 0, "log_requests": 0, "refused": 0, "content_types": []}
failing = False


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def service(resource):
    return attributes(resource.attributes).get("service.name")


def take_traces(body):
    req = trace_service_pb2.ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        svc = service(rs.resource)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": trace_pb2.Span.SpanKind.Name(s.kind).replace("SPAN_KIND_", ""),
                        "status": trace_pb2.Status.StatusCode.Name(s.status.code).replace(
                            "STATUS_CODE_", ""
                        ),
                        "status_message": s.status.message,
                        "attributes": attributes(s.attributes),
                        "service": svc,
                        "scope": ss.scope.name,
                        "trace_state": s.trace_state,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                    }
                )
    return out, trace_service_pb2.ExportTraceServiceResponse()


def take_logs(body):
    req = logs_service_pb2.ExportLogsServiceRequest()
    req.ParseFromString(body)
    out = []
    for rl in req.resource_logs:
        svc = service(rl.resource)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                out.append(
                    {
                        "trace_id": r.trace_id.hex(),
                        "span_id": r.span_id.hex(),
                        "severity": r.severity_text,
                        "body": value(r.body),
                        "attributes": attributes(r.attributes),
                        "service": svc,
                        "time": r.time_unix_nano,
                    }
                )
    return out, logs_service_pb2.ExportLogsServiceResponse()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = urlparse(self.path).path
        with lock:
            data = {"/spans": spans, "/logs": logs, "/stats": stats}.get(path)
            text = None if data is None else json.dumps(data)
        if text is None:
            self.reply(404, b"not found", "text/plain")
        else:
            self.reply(200, text.encode(), "application/json")

    def do_POST(self):
        global failing
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if url.path == "/fail":
            failing = parse_qs(url.query).get("on", ["1"])[0] == "1"
            self.reply(200, b"ok", "text/plain")
            return
        take = {"/v1/traces": take_traces, "/v1/logs": take_logs}.get(url.path)
        if take is None:
            self.reply(404, b"not found", "text/plain")
            return
        with lock:
            stats["content_types"].append(self.headers.get("content-type", ""))
            if failing:
                stats["refused"] += 1
        if failing:
            self.reply(503, b"failing on purpose", "text/plain")
            return
        try:
            items, response = take(body)
        except Exception as e:  # a body that is not what it says
            self.reply(400, str(e).encode(), "text/plain")
            return
        with lock:
            if url.path == "/v1/traces":
                spans.extend(items)
                stats["trace_requests"] += 1
            else:
                logs.extend(items)
                stats["log_requests"] += 1
        self.reply(200, response.SerializeToString(), "application/x-protobuf")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
