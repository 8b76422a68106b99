#!/usr/bin/env python3
"""End-to-end load benchmark: the sidecar side by side with its real peers,
in one run (see BENCHMARKS.md).

Started by scripts/bench-load.sh, which installs wrk, h2load, nginx, Envoy
and Traefik, builds the sidecar, its policies and the two peer JWT plugins
(bench/peers/) first, and passes their paths in the environment. Measures,
with the same wrk settings and the same request for each (GET
/user-service/profile with the admin user's bearer token, the path rewritten
to /profile for the upstream, user-service):

  direct            wrk -> user-service (GET /profile)
  nginx             nginx, 1 worker, upstream keep-alive
  envoy             Envoy, --concurrency 1, HTTP/1.1 keep-alive upstream
                    cluster, route prefix /user-service/ rewritten to /
  envoy-wasm        the same + bench/peers/proxy-wasm-jwt as an
                    envoy.filters.http.wasm filter on the v8 runtime
  traefik           Traefik 3, file provider, one router
                    PathPrefix(`/user-service`) + stripPrefix, one service;
                    GOMAXPROCS=1 in its environment (it runs on one CPU)
  traefik-wasm      the same + bench/peers/http-wasm-jwt as a local wasm
                    plugin (http-wasm) middleware
  sidecar           the sidecar, no policies
  sidecar-auth      the sidecar, the auth policy alone
  sidecar-miss      logging + auth + cache, every request a cache miss
                    (a new URL per request)
  sidecar-hit       the same, every request a cache hit (one URL)
  sidecar-reuse     the miss path with `instances = "reuse"`
  sidecar-auth-traced  sidecar-auth with OpenTelemetry traces on, 100%
                    sampled, exported over OTLP/HTTP to a local receiver
                    that reads and discards them (CPU 0, with wrk)
  sidecar-traced    sidecar-miss, traced the same way

and over HTTP/2 (cleartext, prior knowledge: h2c), driven by h2load instead
of wrk (one thread, the same connection counts, BENCH_H2_STREAMS concurrent
streams on each connection), each proxy still speaking HTTP/1.1 with
keep-alive to user-service:

  nginx-h2          nginx, 1 worker, `listen ... http2` (nginx < 1.25.1) or
                    `http2 on` (later), upstream keep-alive, no limit on
                    requests per connection (h2load does not reconnect)
  sidecar-h2        the sidecar, no policies (its own process)
  sidecar-auth-h2   the sidecar, the auth policy alone (its own process)

wrk and h2load run pinned to CPU 0; each proxy and user-service run on CPU 1.
Every row is checked before it is measured: 200 with the token and "admin"
in the body; the JWT rows (envoy-wasm, traefik-wasm, sidecar-auth,
sidecar-auth-h2) must also answer 401 without a token, with a tampered token
and with an expired one, refuse a token that is not UTF-8 and still answer
200 after it, and Envoy's stats must show the filter's VM on the v8 runtime.
The HTTP/2 rows are checked with curl --http2-prior-knowledge, and every
answer must have come over HTTP/2. A failed check stops the run.

For each row it reports requests/s, p50, p99, errors (wrk: non-2xx and
socket errors; h2load: failed, i.e. non-2xx/3xx or reset, and timed-out
requests), the proxy's CPU time per request (utime + stime of the whole
process, all threads, from /proc/PID/stat, over the measured run, divided by
the requests completed; nginx: master + worker), the proxy's peak RSS so far
(VmHWM; nginx: the worker), and the ratios to nginx (for the HTTP/2 rows: to
nginx-h2) and to direct; then whether the targets are met (sidecar >= nginx,
auth alone >= 3x each JWT peer, p99 within 0.5 ms of nginx's, peak RSS <=
64 MB, no errors), the sidecar's idle RSS, and its start-up time with a warm
compile cache. h2load's p50 and p99 are computed from its per-request log
(--log-file): Debian's build (1.52) has no percentile option.
Everything it starts, it stops (also on error); every wait is bounded; it
talks to loopback only; its temporary directory is removed.

Environment:
  BENCH_SECONDS   seconds per measured run (default 10; 2 s of warm-up first)
  BENCH_CONNS     connection counts (default "32 64")
  BENCH_PROFILE   cargo profile whose binaries are measured (default
                  "release"; "dist" adds thin LTO)
  BENCH_ONLY      comma-separated subset of the rows above (default: all),
                  e.g. BENCH_ONLY=nginx,envoy-wasm,sidecar-auth
  BENCH_H2_STREAMS  h2load's concurrent streams per connection, -m (default 10)
  BENCH_BASELINE  another build of the sidecar binary (an earlier commit's):
                  adds the rows baseline, baseline-auth and baseline-miss,
                  the same configs served by it, to compare in one run
  CARGO_TARGET_DIR  where the measured binaries are (default target/)
  BENCH_ENVOY, BENCH_TRAEFIK                  the real binaries (set by
                                              bench-load.sh)
  BENCH_PROXY_WASM_JWT, BENCH_HTTP_WASM_JWT   the peer plugins' .wasm files
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.environ.get("BENCH_PROFILE", "release")
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target", PROFILE)
WASM = os.path.join(ROOT, "plugins", "target", "wasm32-wasip2", "release")
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNS = [int(c) for c in os.environ.get("BENCH_CONNS", "32 64").split()]
H2_STREAMS = int(os.environ.get("BENCH_H2_STREAMS", "10"))
WARMUP_SECONDS = 2
LOADGEN_CPU = "0"
SERVER_CPU = "1"
SECRET = "Secreto"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# key -> label, in the order measured and shown.
ROWS = {
    "direct": "direct",
    "nginx": "nginx (1 worker, keep-alive)",
    "nginx-h2": "nginx, HTTP/2 (h2c)",
    "envoy": "Envoy 1.40 (1 worker)",
    "envoy-wasm": "Envoy + proxy-wasm JWT (v8)",
    "traefik": "Traefik 3 (GOMAXPROCS=1)",
    "traefik-wasm": "Traefik + http-wasm JWT",
    "sidecar": "sidecar, no policies",
    "sidecar-h2": "sidecar, no policies, HTTP/2 (h2c)",
    "sidecar-auth": "sidecar, auth alone",
    "sidecar-auth-h2": "sidecar, auth alone, HTTP/2 (h2c)",
    "sidecar-miss": "sidecar, logging+auth+cache, cache miss",
    "sidecar-hit": "sidecar, logging+auth+cache, cache hit",
    "sidecar-reuse": "sidecar, same, miss, instances = reuse",
    "sidecar-auth-traced": "sidecar, auth alone, traced (100%)",
    "sidecar-traced": "sidecar, logging+auth+cache, miss, traced (100%)",
    # Only with BENCH_BASELINE: another build of the sidecar, side by side.
    "baseline": "baseline sidecar, no policies",
    "baseline-auth": "baseline sidecar, auth alone",
    "baseline-miss": "baseline sidecar, logging+auth+cache, miss",
}
BASELINE_ROWS = ("baseline", "baseline-auth", "baseline-miss")
JWT_ROWS = ("envoy-wasm", "traefik-wasm", "sidecar-auth", "sidecar-auth-h2", "baseline-auth",
            "sidecar-auth-traced")
# Rows driven by h2load over HTTP/2 (h2c, prior knowledge) instead of wrk.
H2_ROWS = ("nginx-h2", "sidecar-h2", "sidecar-auth-h2")
# The sidecar rows: key -> (process kind, policies, instances). A kind is one
# process and config; the HTTP/2 rows get their own, so that each peak RSS is
# its protocol's.
SIDECAR_KINDS = {
    "sidecar": ("none", [], "fresh"),
    "sidecar-h2": ("none-h2", [], "fresh"),
    "sidecar-auth": ("auth", ["auth"], "fresh"),
    "sidecar-auth-h2": ("auth-h2", ["auth"], "fresh"),
    "sidecar-miss": ("full", ["logging", "auth", "cache"], "fresh"),
    "sidecar-hit": ("full", ["logging", "auth", "cache"], "fresh"),
    "sidecar-reuse": ("reuse", ["logging", "auth", "cache"], "reuse"),
    "sidecar-auth-traced": ("auth-traced", ["auth"], "fresh"),
    "sidecar-traced": ("full-traced", ["logging", "auth", "cache"], "fresh"),
}
# Process kinds that export traces (to the receiver `otlp_sink` starts).
TRACED_KINDS = ("auth-traced", "full-traced")
# Rows whose requests each go to a new URL (a cache miss every time).
UNIQUE_URL_ROWS = ("sidecar-miss", "sidecar-reuse", "baseline-miss", "sidecar-traced")

procs = []


def selected_rows():
    only = os.environ.get("BENCH_ONLY", "").strip()
    if not os.environ.get("BENCH_BASELINE"):
        if any(k.strip() in BASELINE_ROWS for k in only.split(",")):
            raise SystemExit("error: BENCH_ONLY: the baseline rows need BENCH_BASELINE")
        if not only:
            return [k for k in ROWS if k not in BASELINE_ROWS]
    if not only:
        return list(ROWS)
    wanted = [k.strip() for k in only.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in ROWS]
    if unknown:
        raise SystemExit(f"error: BENCH_ONLY: unknown rows {unknown}; known: {', '.join(ROWS)}")
    return [k for k in ROWS if k in wanted]


_otlp_port = None


def otlp_sink():
    """A local OTLP/HTTP receiver for the traced rows, started once: it reads
    each export and answers 200, counting spans' bytes only (decoding them
    would measure Python, not the sidecar). Pinned to CPU 0, with wrk."""
    global _otlp_port
    if _otlp_port is None:
        _otlp_port = free_port()
        code = (
            "import http.server as h\n"
            "class H(h.BaseHTTPRequestHandler):\n"
            "    protocol_version = 'HTTP/1.1'\n"
            "    def log_message(self, *a): pass\n"
            "    def do_POST(self):\n"
            "        self.rfile.read(int(self.headers.get('content-length', '0')))\n"
            "        self.send_response(200)\n"
            "        self.send_header('content-type', 'application/x-protobuf')\n"
            "        self.send_header('content-length', '0')\n"
            "        self.end_headers()\n"
            f"h.ThreadingHTTPServer(('127.0.0.1', {_otlp_port}), H).serve_forever()\n"
        )
        start(["taskset", "-c", "0", sys.executable, "-c", code])
    return _otlp_port


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, env=None, log=None, cwd=None):
    """Starts a server on the server CPU; its output goes to `log` (a path) if given."""
    full_env = dict(os.environ, **(env or {}))
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        p = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU] + cmd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=cwd,
        )
    finally:
        if log:
            out.close()
    p.log = log
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def log_tail(p, lines=30):
    if not getattr(p, "log", None) or not os.path.exists(p.log):
        return ""
    with open(p.log, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def get(url, headers=None, timeout=2):
    """GET; returns (status, headers, body) for any HTTP status."""
    req = urllib.request.Request(url)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_raw(url, authorization):
    """GET with an `authorization` value of raw bytes; returns the status."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    try:
        conn.putrequest("GET", parts.path)
        conn.putheader("Authorization", authorization)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def get_h2(url, headers=None, timeout=2):
    """GET over HTTP/2 with prior knowledge (curl); returns (status, headers,
    body) like get(), the headers holding only the HTTP version curl saw, as
    ":version" ("2" for HTTP/2). Header values may be bytes."""
    cmd = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", str(timeout),
           "-o", "-", "-w", "\n%{http_code} %{http_version}"]
    for name, value in (headers or {}).items():
        cmd += ["-H", name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())]
    out = subprocess.run(cmd + [url], capture_output=True, timeout=timeout + 5)
    body, _, status_line = out.stdout.rpartition(b"\n")
    status, _, version = status_line.decode().partition(" ")
    if out.returncode != 0 or status == "000":
        raise OSError(f"curl --http2-prior-knowledge {url}: exit {out.returncode}: "
                      f"{out.stderr.decode(errors='replace').strip()}")
    return int(status), {":version": version}, body


def bearer(token):
    return {"Authorization": "Bearer " + token}


def wait_ready(url, token=None, limit=30.0, proc=None, h2=False):
    """Polls until `url` answers 200 (over HTTP/2 if `h2`); returns the
    seconds it took."""
    start_t = time.monotonic()
    while time.monotonic() - start_t < limit:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: {proc.args[3:]} exited ({proc.returncode}) before "
                             f"{url} answered:\n{log_tail(proc)}")
        try:
            if (get_h2 if h2 else get)(url, bearer(token) if token else None, timeout=1)[0] == 200:
                return time.monotonic() - start_t
        except OSError:
            pass
        time.sleep(0.01 if h2 else 0.002)
    tail = log_tail(proc) if proc is not None else ""
    raise SystemExit(f"error: {url} did not answer 200 within {limit} s\n{tail}")


def proc_status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    """utime + stime of the whole process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: the fields after it are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def children(pid):
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return kids


# --- configurations --------------------------------------------------------


def sidecar_config(path, port, upstream, policies, instances="fresh", otlp=None):
    names = ", ".join(f'"{p}"' for p in policies)
    telemetry = f"""
[telemetry]
endpoint = "http://127.0.0.1:{otlp}"
sampler = "always_on"
""" if otlp else ""
    text = f"""listen = "127.0.0.1:{port}"
{telemetry}
[admin]
listen = "off"

[[route]]
name = "user-service"
prefix = "/user-service"
upstream = "http://127.0.0.1:{upstream}"
rewrite = "/"
policies = [{names}]

[policy.logging]
wasm = "{WASM}/logging.wasm"
failure = "open"
instances = "{instances}"

[policy.auth]
wasm = "{WASM}/auth.wasm"
instances = "{instances}"
[policy.auth.config]
secret = "{SECRET}"
subject_header = "x-authenticated-user"

[policy.cache]
wasm = "{WASM}/cache.wasm"
failure = "open"
instances = "{instances}"
[policy.cache.config]
ttl_secs = 300
identity_header = "x-authenticated-user"
"""
    with open(path, "w") as f:
        f.write(text)


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise SystemExit(f"error: cannot tell nginx's version from `nginx -v`: {out!r}")
    return tuple(int(x) for x in m.groups())


def nginx_config(tmp, port, upstream, h2=False):
    """nginx's config; with `h2`, its listener speaks cleartext HTTP/2 with
    prior knowledge (`http2 on` from nginx 1.25.1, `listen ... http2` before)
    and keeps a connection open however many requests it has served: nginx
    closes one after keepalive_requests (1000 by default; HTTP/2 too since
    1.19.7), and h2load, unlike wrk, does not reconnect, so its clients would
    stop one by one."""
    name = "nginx-h2" if h2 else "nginx"
    path = os.path.join(tmp, f"{name}.conf")
    listen = f"listen 127.0.0.1:{port};"
    if h2:
        listen = (f"listen 127.0.0.1:{port};\n    http2 on;" if nginx_version() >= (1, 25, 1)
                  else f"listen 127.0.0.1:{port} http2;")
        listen += "\n    keepalive_requests 1000000000;"
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fastcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  upstream users {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    {listen}
    location /user-service/ {{
      proxy_pass http://users/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return path


def envoy_config(path, port, admin_port, upstream, wasm=None):
    """Envoy's bootstrap (JSON): one listener, one route, one cluster."""
    http_filters = []
    if wasm:
        http_filters.append({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "jwt",
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": json.dumps({"secret": SECRET}),
                    },
                    "fail_open": False,
                    "vm_config": {
                        "vm_id": "jwt",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm}},
                    },
                },
            },
        })
    http_filters.append({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
    address = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
    config = {
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": address(port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "codec_type": "HTTP1",
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{
                                "match": {"prefix": "/user-service/"},
                                "route": {"cluster": "users", "prefix_rewrite": "/"},
                            }],
                        }]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": [{
                "name": "users",
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": {
                    "cluster_name": "users",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(upstream)}}]}],
                },
                # HTTP/1.1 to the upstream; Envoy pools and keeps its
                # connections alive.
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http_protocol_options": {}},
                    },
                },
                "circuit_breakers": {"thresholds": [{
                    "max_connections": 4096, "max_pending_requests": 4096, "max_requests": 4096,
                }]},
            }],
        },
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=1)


TRAEFIK_MODULE = "bench.local/http-wasm-jwt"


def traefik_config(workdir, port, upstream, wasm=None):
    """Traefik's static and dynamic config (YAML) in `workdir`, and for the
    plugin the local-plugin layout Traefik reads from its working directory:
    plugins-local/src/<moduleName>/{.traefik.yml, plugin.wasm}."""
    os.makedirs(workdir)
    dynamic = os.path.join(workdir, "dynamic.yml")
    static = os.path.join(workdir, "traefik.yml")
    plugins = ""
    middlewares = "[strip]"
    plugin_middleware = ""
    if wasm:
        plugin_dir = os.path.join(workdir, "plugins-local", "src", TRAEFIK_MODULE)
        os.makedirs(plugin_dir)
        shutil.copyfile(wasm, os.path.join(plugin_dir, "plugin.wasm"))
        with open(os.path.join(plugin_dir, ".traefik.yml"), "w") as f:
            f.write(f"""displayName: HS256 JWT (benchmark peer)
type: middleware
runtime: wasm
summary: Verifies HS256 bearer tokens like the sidecar's auth policy.
testData:
  secret: {SECRET}
""")
        plugins = f"""experimental:
  localPlugins:
    jwt:
      moduleName: {TRAEFIK_MODULE}
"""
        middlewares = "[jwt, strip]"
        plugin_middleware = f"""    jwt:
      plugin:
        jwt:
          secret: {SECRET}
"""
    with open(static, "w") as f:
        f.write(f"""global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
entryPoints:
  web:
    address: "127.0.0.1:{port}"
providers:
  file:
    filename: {dynamic}
    watch: false
{plugins}""")
    with open(dynamic, "w") as f:
        f.write(f"""http:
  routers:
    users:
      rule: "PathPrefix(`/user-service`)"
      entryPoints: [web]
      service: users
      middlewares: {middlewares}
  middlewares:
    strip:
      stripPrefix:
        prefixes: ["/user-service"]
{plugin_middleware}  services:
    users:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{upstream}"
""")
    return static


# --- wrk ----------------------------------------------------------------


UNIQUE_PATHS_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/user-service/profile?n=" .. counter)
end
"""


def wrk(url, conns, seconds, token, lua=None):
    cmd = ["taskset", "-c", LOADGEN_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s",
           "--latency", "-H", f"Authorization: Bearer {token}"]
    if lua:
        cmd += ["-s", lua]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"error: wrk failed: {out.stderr}")
    return parse_wrk(out.stdout)


def h2load(url, conns, seconds, token, log):
    """h2load over HTTP/2 with prior knowledge (http:// URL), one thread,
    BENCH_H2_STREAMS streams per connection; `log` is its per-request log
    (--log-file), read for the percentiles and removed."""
    cmd = ["taskset", "-c", LOADGEN_CPU, "h2load", "-t1", f"-c{conns}", f"-m{H2_STREAMS}",
           f"-D{seconds}", "-H", f"authorization: Bearer {token}", "--log-file", log]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"error: h2load failed ({out.returncode}): {out.stderr}{out.stdout}")
    try:
        return parse_h2load(out.stdout, log)
    finally:
        os.remove(log)


def parse_h2load(text, log):
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not m or not counts:
        raise SystemExit(f"error: cannot read h2load's output:\n{text}")
    total, started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    # Microseconds to the end of each response that came (status -1: a
    # failed stream, left out of the latencies as wrk leaves out errors).
    times = []
    with open(log) as f:
        for line in f:
            fields = line.split("\t")
            if len(fields) >= 3 and fields[1] != "-1":
                times.append(int(fields[2]))
    if not times:
        raise SystemExit(f"error: h2load completed no request:\n{text}")
    times.sort()
    pct = lambda q: times[max(0, -(-len(times) * q // 100) - 1)] / 1000
    return {"rps": float(m.group(1)), "requests": done, "p50": pct(50), "p99": pct(99),
            # failed: non-2xx/3xx answers and reset or errored streams
            # (errored is a part of it).
            "errors": failed + timeout}


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in ", text).group(1))
    p50 = to_ms(re.search(r"\n\s+50%\s+(\S+)", text).group(1))
    p99 = to_ms(re.search(r"\n\s+99%\s+(\S+)", text).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": rps, "requests": requests, "p50": p50, "p99": p99, "errors": errors}


# --- tokens ----------------------------------------------------------------


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_hs256(claims, secret=SECRET):
    signed = b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64url(sig)


def tampered(token):
    """The same token with one signature character changed (not the last,
    whose low bits may not count)."""
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]


# --- the run ---------------------------------------------------------------


def main():
    rows = selected_rows()
    needs = {"taskset"}
    if any(r not in H2_ROWS for r in rows):
        needs.add("wrk")
    if any(r in H2_ROWS for r in rows):
        needs |= {"h2load", "curl"}
    if "nginx" in rows or "nginx-h2" in rows:
        needs.add("nginx")
    for tool in sorted(needs):
        if not shutil.which(tool):
            raise SystemExit(f"error: {tool} not found (scripts/bench-load.sh installs it)")
    peers = {
        "envoy": ("BENCH_ENVOY", None),
        "envoy-wasm": ("BENCH_ENVOY", "BENCH_PROXY_WASM_JWT"),
        "traefik": ("BENCH_TRAEFIK", None),
        "traefik-wasm": ("BENCH_TRAEFIK", "BENCH_HTTP_WASM_JWT"),
    }
    for row, variables in peers.items():
        for var in variables:
            if row in rows and var and not os.path.isfile(os.environ.get(var, "")):
                raise SystemExit(f"error: {var} is not set to a file (scripts/bench-load.sh sets it)")

    baseline = os.environ.get("BENCH_BASELINE")
    if any(r in BASELINE_ROWS for r in rows) and not (
            os.path.isfile(baseline) and os.access(baseline, os.X_OK)):
        raise SystemExit(f"error: BENCH_BASELINE={baseline} is not an executable file")

    # A SIGTERM stops the run like Ctrl-C does: through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="bench-load-")
    try:
        run(rows, tmp)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def run(rows, tmp):
    cache_env = {"XDG_CACHE_HOME": os.path.join(tmp, "cache")}
    lua = os.path.join(tmp, "unique.lua")
    with open(lua, "w") as f:
        f.write(UNIQUE_PATHS_LUA)

    us_port = free_port()
    us = start([f"{BIN}/user-service"],
               {"USER_SERVICE_ADDR": f"127.0.0.1:{us_port}", "JWT_SECRET": SECRET,
                "RUST_LOG": "warn"},
               log=os.path.join(tmp, "user-service.log"))
    wait_ready(f"http://127.0.0.1:{us_port}/healthz", proc=us)
    req = urllib.request.Request(
        f"http://127.0.0.1:{us_port}/login",
        data=json.dumps({"username": "admin", "password": "password"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    token = json.load(urllib.request.urlopen(req, timeout=5))["token"]

    # key -> {"url", "lua", "pids": () -> [pid, …] whose CPU counts,
    #         "rss_pid": () -> pid whose VmHWM counts}
    targets = {}
    url = lambda port: f"http://127.0.0.1:{port}/user-service/profile"

    if "direct" in rows:
        targets["direct"] = {"url": f"http://127.0.0.1:{us_port}/profile", "proc": None}

    for key in ("nginx", "nginx-h2"):
        if key not in rows:
            continue
        h2 = key in H2_ROWS
        port = free_port()
        p = start(["nginx", "-p", tmp, "-c", nginx_config(tmp, port, us_port, h2)],
                  log=os.path.join(tmp, f"{key}.log"))
        wait_ready(url(port), token, proc=p, h2=h2)
        kids = children(p.pid)
        if len(kids) != 1:
            raise SystemExit(f"error: {key} has {len(kids)} worker processes, expected 1")
        targets[key] = {"url": url(port), "proc": p,
                        "pids": [p.pid, kids[0]], "rss_pid": kids[0]}

    envoy_admin = {}
    for base_id, key in enumerate(("envoy", "envoy-wasm"), start=11):
        if key not in rows:
            continue
        port, admin = free_port(), free_port()
        cfg = os.path.join(tmp, f"{key}.json")
        wasm = os.environ["BENCH_PROXY_WASM_JWT"] if key == "envoy-wasm" else None
        envoy_config(cfg, port, admin, us_port, wasm)
        p = start([os.environ["BENCH_ENVOY"], "-c", cfg, "--concurrency", "1",
                   "--base-id", str(base_id), "--disable-hot-restart", "--log-level", "warn"],
                  log=os.path.join(tmp, f"{key}.log"))
        wait_ready(url(port), token, proc=p)
        targets[key] = {"url": url(port), "proc": p}
        envoy_admin[key] = admin

    for key in ("traefik", "traefik-wasm"):
        if key not in rows:
            continue
        port = free_port()
        workdir = os.path.join(tmp, key)
        wasm = os.environ["BENCH_HTTP_WASM_JWT"] if key == "traefik-wasm" else None
        static = traefik_config(workdir, port, us_port, wasm)
        p = start([os.environ["BENCH_TRAEFIK"], f"--configFile={static}"],
                  {"GOMAXPROCS": "1"}, log=os.path.join(tmp, f"{key}.log"), cwd=workdir)
        wait_ready(url(port), token, proc=p)
        targets[key] = {"url": url(port), "proc": p}

    sidecar_rows = [r for r in rows if r in SIDECAR_KINDS]
    sidecars = {}  # kind -> (port, config path)
    for row in sidecar_rows:
        kind, policies, instances = SIDECAR_KINDS[row]
        if kind not in sidecars:
            port = free_port()
            cfg = os.path.join(tmp, f"sidecar-{kind}.toml")
            otlp = otlp_sink() if kind in TRACED_KINDS else None
            sidecar_config(cfg, port, us_port, policies, instances, otlp)
            sidecars[kind] = (port, cfg)

    # Start-up to ready with compiled policies cached on disk: one start to
    # fill the cache, then three timed ones.
    startup = []
    if sidecar_rows:
        port = free_port()
        cfg = os.path.join(tmp, "sidecar-startup.toml")
        sidecar_config(cfg, port, us_port, ["logging", "auth", "cache"])
        for i in range(4):
            p = start([f"{BIN}/sidecar", "run", "--config", cfg], cache_env,
                      log=os.path.join(tmp, "sidecar-startup.log"))
            took = wait_ready(url(port), token, proc=p)
            if i > 0:
                startup.append(took)
            stop(p)
            procs.remove(p)

    sidecar_procs = {}
    for kind, (port, cfg) in sidecars.items():
        p = start([f"{BIN}/sidecar", "run", "--config", cfg], cache_env,
                  log=os.path.join(tmp, f"sidecar-{kind}.log"))
        wait_ready(url(port), token, proc=p, h2=kind.endswith("-h2"))
        sidecar_procs[kind] = p
    for row in sidecar_rows:
        kind = SIDECAR_KINDS[row][0]
        targets[row] = {"url": url(sidecars[kind][0]), "proc": sidecar_procs[kind]}
    # The same configs served by the baseline binary (BENCH_BASELINE).
    baseline_procs = {}
    for row in [r for r in rows if r in BASELINE_ROWS]:
        kind, policies, instances = SIDECAR_KINDS["sidecar" + row[len("baseline"):]]
        if kind not in baseline_procs:
            port = free_port()
            cfg = os.path.join(tmp, f"baseline-{kind}.toml")
            sidecar_config(cfg, port, us_port, policies, instances)
            p = start([os.environ["BENCH_BASELINE"], "run", "--config", cfg], cache_env,
                      log=os.path.join(tmp, f"baseline-{kind}.log"))
            wait_ready(url(port), token, proc=p)
            baseline_procs[kind] = (port, p)
        port, p = baseline_procs[kind]
        targets[row] = {"url": url(port), "proc": p}
    time.sleep(0.5)
    idle = {kind: proc_status_kb(p.pid, "VmRSS") for kind, p in sidecar_procs.items()}

    for key, t in targets.items():
        t["lua"] = lua if key in UNIQUE_URL_ROWS else None
        if t["proc"] is not None and "pids" not in t:
            t["pids"] = [t["proc"].pid]
            t["rss_pid"] = t["proc"].pid

    check_rows(rows, targets, token, envoy_admin)

    h2_log = os.path.join(tmp, "h2load.log")
    results = {}
    for conns in CONNS:
        for key in rows:
            t = targets[key]
            if key in H2_ROWS:
                load = lambda seconds: h2load(t["url"], conns, seconds, token, h2_log)
            else:
                load = lambda seconds: wrk(t["url"], conns, seconds, token, t["lua"])
            load(WARMUP_SECONDS)
            if t["proc"] is not None and t["proc"].poll() is not None:
                raise SystemExit(f"error: {key} exited during warm-up:\n{log_tail(t['proc'])}")
            before = sum(cpu_ticks(pid) for pid in t["pids"]) if t["proc"] else 0
            r = load(SECONDS)
            if t["proc"] is not None:
                if t["proc"].poll() is not None:
                    raise SystemExit(f"error: {key} exited under load:\n{log_tail(t['proc'])}")
                ticks = sum(cpu_ticks(pid) for pid in t["pids"]) - before
                r["cpu_us"] = ticks / CLK_TCK * 1e6 / max(r["requests"], 1)
                r["peak_kb"] = proc_status_kb(t["rss_pid"], "VmHWM")
            results[(conns, key)] = r
            cpu = f"{r['cpu_us']:6.1f} µs CPU/req" if "cpu_us" in r else ""
            print(f"  {conns:>3} conns  {ROWS[key]:<42} {r['rps']:>9.0f} req/s  {cpu}",
                  file=sys.stderr)

    report = render(rows, results, idle, startup)
    print(report)
    out = os.path.join(ROOT, "target", "bench-load.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(report + "\n")
    print(f"\n(also written to {out})", file=sys.stderr)


def check_rows(rows, targets, token, envoy_admin):
    """Each row must do what its name says before it is measured."""
    expired = sign_hs256({"sub": "admin", "username": "admin", "exp": int(time.time()) - 3600})
    for key in rows:
        u = targets[key]["url"]
        if key in H2_ROWS:
            def fetch(u, hdrs=None, key=key):
                """Over HTTP/2 only: an answer in HTTP/1.x fails the check."""
                try:
                    status, headers, body = get_h2(u, hdrs)
                except OSError as e:
                    raise SystemExit(f"error: check failed: {key}: {e}")
                if headers[":version"] != "2":
                    raise SystemExit(f"error: check failed: {key}: answered in HTTP/"
                                     f"{headers[':version']}, not HTTP/2")
                return status, headers, body
            fetch_raw = lambda u, value: fetch(u, {"Authorization": value})[0]
        else:
            fetch, fetch_raw = get, get_raw
        status, headers, body = fetch(u, bearer(token))
        if status != 200 or b"admin" not in body:
            raise SystemExit(f"error: check failed: {key}: with the token: {status} {body[:200]!r}")
        if key in JWT_ROWS:
            for what, hdrs in [("no token", None), ("a tampered token", bearer(tampered(token))),
                               ("an expired token", bearer(expired))]:
                status, _, body = fetch(u, hdrs)
                if status != 401 or b"code" not in body:
                    raise SystemExit(f"error: check failed: {key}: with {what}: expected 401 "
                                     f"with a JSON body, got {status} {body[:200]!r}")
            # A value that is not UTF-8 is refused, and the plugin keeps
            # working after it (proxy-wasm's text getter would trap on it).
            status = fetch_raw(u, b"Bearer \xff\xfe")
            if status != 401:
                raise SystemExit(f"error: check failed: {key}: a non-UTF-8 token: {status}")
            status, _, body = fetch(u, bearer(token))
            if status != 200 or b"admin" not in body:
                raise SystemExit(f"error: check failed: {key}: after a non-UTF-8 token: "
                                 f"{status} {body[:200]!r}")
    for key, admin in envoy_admin.items():
        _, _, stats = get(f"http://127.0.0.1:{admin}/stats?filter=wasm")
        v8 = re.search(rb"wasm\.envoy\.wasm\.runtime\.v8\.active: (\d+)", stats)
        active = int(v8.group(1)) if v8 else 0
        if key == "envoy-wasm" and active < 1:
            raise SystemExit(f"error: check failed: envoy-wasm: no active v8 VM in Envoy's stats:\n"
                             f"{stats.decode(errors='replace')}")
        if key == "envoy" and active:
            raise SystemExit("error: check failed: plain Envoy runs a wasm VM")
    if "sidecar-hit" in rows:
        u = targets["sidecar-hit"]["url"]
        _, headers, _ = get(u, bearer(token))
        if headers.get("x-cache") != "hit":
            raise SystemExit(f"error: check failed: cache hit path: x-cache = {headers.get('x-cache')}")
    if "sidecar-miss" in rows:
        u = targets["sidecar-miss"]["url"]
        _, headers, _ = get(u + "?n=check", bearer(token))
        if headers.get("x-cache") != "miss":
            raise SystemExit(f"error: check failed: cache miss path: x-cache = {headers.get('x-cache')}")
    print(f"checked: {', '.join(rows)}", file=sys.stderr)


def render(rows, results, idle, startup):
    lines = [
        f"binaries: {os.path.relpath(BIN, ROOT)}; "
        f"wrk -t1, {SECONDS} s per run after {WARMUP_SECONDS} s of warm-up; wrk on CPU {LOADGEN_CPU}, "
        f"proxy and upstream on CPU {SERVER_CPU}; GET /user-service/profile with a bearer token "
        "(direct: GET /profile).",
        "CPU/req: the proxy process's utime+stime (all threads; nginx: master + worker) over the "
        "measured run ÷ requests completed. Peak RSS: VmHWM so far (nginx: the worker).",
    ]
    if any(r in H2_ROWS for r in rows):
        lines.append(
            f"HTTP/2 rows (h2c, prior knowledge; HTTP/1.1 keep-alive to the upstream): h2load -t1 "
            f"-m{H2_STREAMS} ({H2_STREAMS} concurrent streams per connection, so {H2_STREAMS}× the "
            f"requests in flight of the wrk rows), same connections, duration, warm-up and pinning; "
            f"p50/p99 from h2load's --log-file (per-request times); errors: failed + timed out; "
            f"× nginx is against nginx-h2.")
    lines.append("")
    ratio = lambda a, b: f"{a / b:.2f}" if b else "—"
    for conns in CONNS:
        nginx = results.get((conns, "nginx"), {}).get("rps")
        nginx_h2 = results.get((conns, "nginx-h2"), {}).get("rps")
        direct = results.get((conns, "direct"), {}).get("rps")
        lines += [
            f"**{conns} connections**",
            "",
            "| path | req/s | p50 | p99 | errors | CPU/req | peak RSS | × nginx | × direct |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key in rows:
            r = results[(conns, key)]
            cpu = f"{r['cpu_us']:.1f} µs" if "cpu_us" in r else "—"
            rss = f"{r['peak_kb'] / 1024:.1f} MB" if "peak_kb" in r else "—"
            lines.append(
                f"| {ROWS[key]} | {r['rps']:.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | {r['errors']} "
                f"| {cpu} | {rss} | {ratio(r['rps'], nginx_h2 if key in H2_ROWS else nginx)} "
                f"| {ratio(r['rps'], direct)} |"
            )
        lines.append("")

    lines += targets_section(rows, results)

    if idle:
        lines += [
            "| sidecar | idle RSS | peak RSS under load |",
            "|---|---|---|",
        ]
        peak = {}
        for (conns, key), r in results.items():
            if key in SIDECAR_KINDS:
                kind = SIDECAR_KINDS[key][0]
                peak[kind] = max(peak.get(kind, 0), r["peak_kb"])
        for kind, label in [("none", "no policies"), ("none-h2", "no policies, HTTP/2 load"),
                            ("auth", "auth alone"), ("auth-h2", "auth alone, HTTP/2 load"),
                            ("full", "logging+auth+cache"), ("reuse", "logging+auth+cache, reuse")]:
            if kind in idle:
                top = f"{peak[kind] / 1024:.1f} MB" if kind in peak else "—"
                lines.append(f"| {label} | {idle[kind] / 1024:.1f} MB | {top} |")
        lines.append("")
    if startup:
        lines.append(
            "start-up to first proxied 200 (3 policies, compile cache warm): "
            + ", ".join(f"{s * 1000:.0f} ms" for s in startup)
            + f" (median {statistics.median(startup) * 1000:.0f} ms)"
        )
    return "\n".join(lines)


def targets_section(rows, results):
    """The targets, each with the measured figure and met / not met."""
    lines = ["**targets**", "", "| conns | target | measured | |", "|---|---|---|---|"]
    verdict = lambda ok: "met" if ok else "**not met**"

    def throughput(conns, row, ref, factor):
        a, b = results.get((conns, row)), results.get((conns, ref))
        if not a or not b:
            return
        got = a["rps"] / b["rps"]
        lines.append(f"| {conns} | {ROWS[row]} ≥ {factor:g}× {ROWS[ref]} req/s "
                     f"| {got:.2f}× | {verdict(got >= factor)} |")

    sidecar_latency_rows = ("sidecar", "sidecar-auth", "sidecar-miss", "sidecar-hit")
    for conns in CONNS:
        throughput(conns, "sidecar", "nginx", 1.0)
        throughput(conns, "sidecar-auth", "traefik-wasm", 3.0)
        throughput(conns, "sidecar-auth", "envoy-wasm", 3.0)
        throughput(conns, "sidecar-miss", "nginx", 1.0)
        nginx = results.get((conns, "nginx"))
        for row in sidecar_latency_rows:
            r = results.get((conns, row))
            if r and nginx:
                lines.append(f"| {conns} | {ROWS[row]}: p99 ≤ nginx p99 + 0.5 ms "
                             f"| {r['p99']:.2f} ms vs {nginx['p99']:.2f} + 0.5 ms "
                             f"| {verdict(r['p99'] <= nginx['p99'] + 0.5)} |")
        for row in rows:
            r = results[(conns, row)]
            if row.startswith("sidecar") and "peak_kb" in r:
                mb = r["peak_kb"] / 1024
                lines.append(f"| {conns} | {ROWS[row]}: peak RSS ≤ 64 MB | {mb:.1f} MB "
                             f"| {verdict(mb <= 64)} |")
        errors = {row: results[(conns, row)]["errors"] for row in rows}
        failed = [f"{ROWS[row]}: {n}" for row, n in errors.items() if n]
        lines.append(f"| {conns} | 0 errors, every row | "
                     f"{'; '.join(failed) if failed else '0'} | {verdict(not failed)} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
