#!/usr/bin/env python3
"""End-to-end load benchmark, side by side in one run (see BENCHMARKS.md).

Started by scripts/bench-load.sh, which installs wrk and nginx and builds
everything first. Measures, with the same wrk settings for each:

  direct                  wrk -> user-service
  nginx                   wrk -> nginx (1 worker, upstream keep-alive) -> user-service
  sidecar, no policies    wrk -> sidecar -> user-service
  sidecar, 3 policies     logging + auth + cache, cache hit (one URL) and
                          cache miss (a new URL per request)
  the same, reused        the miss path with `instances = "reuse"`

wrk runs pinned to CPU 0; the proxies and user-service share CPU 1. Every
request is a GET /profile with the admin user's bearer token. It reports
requests/s, p50, p99, errors (non-2xx and socket errors), the ratios to
nginx and to direct, the sidecar's idle and peak RSS, and its start-up time
with a warm compile cache. Everything it starts, it stops; every loop is
bounded in time; it talks to loopback only.

Environment: BENCH_SECONDS (default 10) per measured run, BENCH_CONNS
(default "32 64"), BENCH_PROFILE (default "release": the cargo profile whose
binaries are measured; "dist" adds thin LTO).
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.environ.get("BENCH_PROFILE", "release")
BIN = os.path.join(ROOT, "target", PROFILE)
WASM = os.path.join(ROOT, "plugins", "target", "wasm32-wasip2", "release")
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNS = [int(c) for c in os.environ.get("BENCH_CONNS", "32 64").split()]
WARMUP_SECONDS = 2
LOADGEN_CPU = "0"
SERVER_CPU = "1"

procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, env=None, stdout=subprocess.DEVNULL):
    """Starts a server on the server CPU."""
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU] + cmd,
        env=full_env,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )
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


def get(url, token=None, timeout=2):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


def wait_ready(url, token=None, limit=30.0):
    """Polls until `url` answers 200; returns the seconds it took."""
    start_t = time.monotonic()
    while time.monotonic() - start_t < limit:
        try:
            if get(url, token, timeout=1)[0] == 200:
                return time.monotonic() - start_t
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"error: {url} did not answer 200 within {limit} s")


def rss_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def sidecar_config(path, port, upstream, policies, instances="fresh"):
    names = ", ".join(f'"{p}"' for p in policies)
    text = f"""listen = "127.0.0.1:{port}"

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
secret = "Secreto"
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


def nginx_config(tmp, port, upstream):
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  upstream users {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location /user-service/ {{
      proxy_pass http://users/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    return path


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


def to_ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = to_ms(re.search(r"\n\s+50%\s+(\S+)", text).group(1))
    p99 = to_ms(re.search(r"\n\s+99%\s+(\S+)", text).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors}


def main():
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"error: {tool} not found (scripts/bench-load.sh installs it)")
    tmp = tempfile.mkdtemp(prefix="bench-load-")
    cache_env = {"XDG_CACHE_HOME": os.path.join(tmp, "cache")}
    lua = os.path.join(tmp, "unique.lua")
    with open(lua, "w") as f:
        f.write(UNIQUE_PATHS_LUA)
    try:
        run(tmp, cache_env, lua)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp, cache_env, lua):
    us_port = free_port()
    start([f"{BIN}/user-service"], {"USER_SERVICE_ADDR": f"127.0.0.1:{us_port}"})
    wait_ready(f"http://127.0.0.1:{us_port}/healthz")
    req = urllib.request.Request(
        f"http://127.0.0.1:{us_port}/login",
        data=json.dumps({"username": "admin", "password": "password"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    token = json.load(urllib.request.urlopen(req, timeout=5))["token"]

    ng_port = free_port()
    start(["nginx", "-p", tmp, "-c", nginx_config(tmp, ng_port, us_port)])

    sidecars = {}
    for key, policies, instances in [
        ("none", [], "fresh"),
        ("full", ["logging", "auth", "cache"], "fresh"),
        ("reuse", ["logging", "auth", "cache"], "reuse"),
    ]:
        port = free_port()
        cfg = os.path.join(tmp, f"sidecar-{key}.toml")
        sidecar_config(cfg, port, us_port, policies, instances)
        sidecars[key] = (port, cfg)

    # Start-up to ready with compiled policies cached on disk: one start to
    # fill the cache, then three timed ones.
    port, cfg = sidecars["full"]
    startup = []
    for i in range(4):
        p = start([f"{BIN}/sidecar", "run", "--config", cfg], cache_env)
        took = wait_ready(f"http://127.0.0.1:{port}/user-service/profile", token)
        if i > 0:
            startup.append(took)
        stop(p)
        procs.remove(p)

    pids = {}
    for key, (port, cfg) in sidecars.items():
        p = start([f"{BIN}/sidecar", "run", "--config", cfg], cache_env)
        wait_ready(f"http://127.0.0.1:{port}/user-service/profile", token)
        pids[key] = p.pid
    time.sleep(0.5)
    idle = {key: rss_kb(pid, "VmRSS") for key, pid in pids.items()}

    url = lambda port: f"http://127.0.0.1:{port}/user-service/profile"
    scenarios = [
        ("direct", f"http://127.0.0.1:{us_port}/profile", None),
        ("nginx (1 worker, keep-alive)", url(ng_port), None),
        ("sidecar, no policies", url(sidecars["none"][0]), None),
        ("sidecar, logging+auth+cache, cache hit", url(sidecars["full"][0]), None),
        ("sidecar, logging+auth+cache, cache miss", url(sidecars["full"][0]), lua),
        ("sidecar, same, miss, instances = reuse", url(sidecars["reuse"][0]), lua),
    ]

    # Each path must do what its name says before it is measured.
    for name, u, _ in scenarios:
        status, headers, body = get(u, token)
        assert status == 200 and b"admin" in body, f"{name}: {status} {body[:200]!r}"
    _, headers, _ = get(url(sidecars["full"][0]), token)
    assert headers.get("x-cache") == "hit", f"cache hit path: x-cache = {headers.get('x-cache')}"
    _, headers, _ = get(url(sidecars["full"][0]) + "?n=check", token)
    assert headers.get("x-cache") == "miss", f"cache miss path: x-cache = {headers.get('x-cache')}"

    results = {}
    for conns in CONNS:
        for name, u, script in scenarios:
            wrk(u, conns, WARMUP_SECONDS, token, script)
            results[(conns, name)] = wrk(u, conns, SECONDS, token, script)
            r = results[(conns, name)]
            print(f"  {conns:>3} conns  {name:<42} {r['rps']:>9.0f} req/s", file=sys.stderr)
    peak = {key: rss_kb(pid, "VmHWM") for key, pid in pids.items()}

    lines = [
        f"binaries: target/{PROFILE}; "
        f"wrk -t1, {SECONDS} s per run after {WARMUP_SECONDS} s of warm-up; wrk on CPU {LOADGEN_CPU}, "
        f"servers on CPU {SERVER_CPU}; GET /profile with a bearer token.",
        "",
    ]
    for conns in CONNS:
        nginx = results[(conns, scenarios[1][0])]["rps"]
        direct = results[(conns, scenarios[0][0])]["rps"]
        lines += [
            f"**{conns} connections**",
            "",
            "| path | req/s | p50 | p99 | errors | × nginx | × direct |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, _, _ in scenarios:
            r = results[(conns, name)]
            lines.append(
                f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | {r['errors']} "
                f"| {r['rps'] / nginx:.2f} | {r['rps'] / direct:.2f} |"
            )
        lines.append("")
    lines += [
        "| sidecar | idle RSS | peak RSS under load |",
        "|---|---|---|",
    ]
    for key, label in [("none", "no policies"), ("full", "logging+auth+cache"),
                       ("reuse", "logging+auth+cache, reuse")]:
        lines.append(f"| {label} | {idle[key] / 1024:.1f} MB | {peak[key] / 1024:.1f} MB |")
    lines += [
        "",
        "start-up to first proxied 200 (3 policies, compile cache warm): "
        + ", ".join(f"{s * 1000:.0f} ms" for s in startup)
        + f" (median {statistics.median(startup) * 1000:.0f} ms)",
    ]
    report = "\n".join(lines)
    print(report)
    out = os.path.join(ROOT, "target", "bench-load.md")
    with open(out, "w") as f:
        f.write(report + "\n")
    print(f"\n(also written to {out})", file=sys.stderr)


if __name__ == "__main__":
    main()
