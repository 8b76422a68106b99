"""The same policy in Rust, Python and JavaScript, side by side in one run.

The template policy (a request without the configured header is refused
with 401) as each language's `sidecar policy new` makes it. For each:
  - component size;
  - load time and peak memory of `sidecar config check` on a config with
    that policy alone (compile, link, `configure`, snapshot), cold (an empty
    compile cache) and warm (the cache filled by the cold run);
  - end to end: one sidecar with a route per language and instance mode
    (fresh, and `instances = "reuse"`), each measured with wrk (one
    connection, requests one after another, so the figure is a request's
    latency), in rounds that alternate the routes; the sidecar's RSS after.

Usage (scripts/bench-languages.sh builds everything and calls this):
  python3 scripts/bench_languages.py SIDECAR RUST.wasm PYTHON.wasm JS.wasm
Environment: BENCH_SECONDS (per route and round, default 5), BENCH_ROUNDS
(default 2). The table is printed and written to target/bench-languages.md.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def check(sidecar, conf):
    """`sidecar config check` once: (wall seconds, peak RSS in MiB)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sidecar, "config", "check", conf],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    if status != 0:
        sys.exit(f"sidecar config check {conf} failed:\n{out}")
    return elapsed, usage.ru_maxrss / 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(listen, builds, cache, modes=("fresh", "reuse")):
    lines = [f'listen = "{listen}"', "", "[admin]", 'listen = "off"', "",
             "[wasm]", f'compile_cache = "{cache}"', ""]
    for lang, wasm in builds:
        for mode in modes:
            name = f"{lang}-{mode}"
            lines += [
                "[[route]]",
                f'name = "{name}"',
                f'prefix = "/{name}"',
                f'policies = ["{name}"]',
                "",
                f"[policy.{name}]",
                f'wasm = "{wasm}"',
                f'instances = "{mode}"',
                "memory_mb = 64",
                "deadline_ms = 500",
                f"[policy.{name}.config]",
                'header = "x-api-key"',
                "",
            ]
    return "\n".join(lines)


def wait_ready(url, proc, within=300):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("the sidecar exited while starting (see its output above)")
        try:
            urllib.request.urlopen(url, timeout=1)
        except urllib.error.HTTPError:
            return  # answered: the policy's 401
        except OSError:
            time.sleep(0.2)
            continue
        return
    sys.exit(f"the sidecar did not answer {url} within {within} s")


def wrk(url):
    """One wrk run on one connection: (median ms, p99 ms, requests/s)."""
    out = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{SECONDS}s", "--latency", url],
        check=True, capture_output=True, text=True,
    ).stdout

    def ms(label):
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if "Non-2xx or 3xx responses" not in out:
        sys.exit(f"{url}: expected the policy's 401s:\n{out}")
    return ms("50%"), ms("99%"), rps


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    sidecar, rust, python, js = sys.argv[1:5]
    builds = [("rust", rust), ("python", python), ("js", js)]
    work = tempfile.mkdtemp(prefix="bench-languages-")
    rows = {lang: {"size": os.path.getsize(wasm)} for lang, wasm in builds}

    for lang, wasm in builds:
        cache = os.path.join(work, f"cache-{lang}")
        conf = os.path.join(work, f"check-{lang}.toml")
        with open(conf, "w") as f:
            f.write(config("127.0.0.1:0", [(lang, wasm)], cache, modes=("fresh",)))
        cold, cold_rss = check(sidecar, conf)
        if not os.listdir(cache):
            sys.exit(f"{lang}: the cold check left nothing in the compile cache {cache}")
        warm, warm_rss = check(sidecar, conf)
        rows[lang].update(cold=cold, cold_rss=cold_rss, warm=warm, warm_rss=warm_rss)

    port = free_port()
    conf = os.path.join(work, "sidecar.toml")
    with open(conf, "w") as f:
        f.write(config(f"127.0.0.1:{port}", builds, os.path.join(work, "cache-serve")))
    proc = subprocess.Popen([sidecar, "run", "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for lang, _ in builds:
            for mode in ("fresh", "reuse"):
                wait_ready(f"{base}/{lang}-{mode}/", proc)
        results = {}
        for _ in range(ROUNDS):
            for lang, _ in builds:
                for mode in ("fresh", "reuse"):
                    results.setdefault((lang, mode), []).append(wrk(f"{base}/{lang}-{mode}/"))
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)

    def span(values, fmt):
        lo, hi = min(values), max(values)
        return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"

    def median(lang, mode):
        return [r[0] for r in results[(lang, mode)]]

    table = ["| | Rust | Python | JavaScript |", "|---|---|---|---|"]

    def row(label, cell):
        table.append(f"| {label} | " + " | ".join(cell(lang) for lang, _ in builds) + " |")

    row("component size", lambda l: f"{rows[l]['size'] / 1e6:.2f} MB" if rows[l]["size"] > 1e6 else f"{rows[l]['size'] / 1e3:.0f} KB")
    row("`config check` (load: compile, configure, snapshot), cold cache", lambda l: f"{rows[l]['cold']:.2f} s, {rows[l]['cold_rss']:.0f} MiB peak")
    row("the same, from the compile cache", lambda l: f"{rows[l]['warm']:.2f} s, {rows[l]['warm_rss']:.0f} MiB peak")
    for mode, label in (("fresh", "fresh instance"), ("reuse", "`instances = \"reuse\"`")):
        row(f"request end to end, {label}: median (p99)",
            lambda l, m=mode: span(median(l, m), "{:.3f}") + " ms ("
            + span([r[1] for r in results[(l, m)]], "{:.2f}") + ")")
        row(f"…ratio to Rust ({mode})",
            lambda l, m=mode: f"×{sum(median(l, m)) / sum(median('rust', m)):.1f}")
    table.append(f"\nThe sidecar serving all six routes: {rss:.0f} MiB RSS after the runs. "
                 f"wrk -t1 -c1, {SECONDS} s per route, {ROUNDS} rounds alternating the routes.")
    text = "\n".join(table)
    print(text)
    os.makedirs("target", exist_ok=True)
    with open("target/bench-languages.md", "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
