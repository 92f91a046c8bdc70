#!/usr/bin/env python3
"""Measures wsgi-wasm against the WSGI servers people run today, in one run.

Three modes, all by default:

- **both cores** (what users get): every server as users run it on this
  machine, unpinned, with its defaults: wsgi-wasm `run` with no flag,
  Gunicorn sync `-w 2`, Gunicorn gthread `-w 2 --threads 4`, uWSGI with 2
  processes, Granian `--workers 2`; `wrk -t2 -c32` beside them.
- **one core** (controlled): every server on CPU 0 with one worker and no
  access log, wrk on CPU 1.
- **behind nginx** (the seeds' stack): Debian's nginx, one worker, started
  by the benchmark on loopback, `uwsgi_pass` to wsgi-wasm `--uwsgi ADDR
  --no-access-log` and to uWSGI `--socket ADDR --processes 2 --master
  --disable-logging`; both cores, `wrk -t1 -c32` against nginx, ratios to
  uWSGI. Only those two servers run in this mode.

The `io_wait` app waits 50 ms per request (a database or API call) and is
measured with 64 connections: 1,280 req/s is what the waits allow.

wsgi-wasm runs each app twice: built with no flags, and built with
`--warmup` of its route. Servers are interleaved round by round, so a drift
in the machine's speed hits all of them alike, and each figure is the
median over the rounds. Traffic goes to 127.0.0.1 only, for a bounded time.

    bench/run.sh [--rounds N] [--duration SECONDS] [--mode both|one|nginx|all] [--servers a,b] [--apps x,y]

Prints a table per mode (requests/s, p50, p99, PSS under load, peak RSS,
the server's CPU per request, nginx's too behind it, and the ratio to
gunicorn sync, or to uWSGI behind nginx) and writes
bench/results/latest.json. CPU per request is the user and system time the
process tree used over the run, divided by the requests wrk counted.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
WSGI_WASM = REPO / "target" / "release" / "wsgi-wasm"
BUILD = HERE / "build"
SERVER_CPU, CLIENT_CPU = "0", "1"

# name -> (module:callable, path, method, body bytes)
APPS = {
    "hello": ("hello:app", "/", "GET", 0),
    "flask_json": ("flask_json:app", "/api/items/42", "GET", 0),
    "echo_64k": ("echo:app", "/", "POST", 64 * 1024),
    "io_wait": ("io_wait:app", "/", "GET", 0),
}

# app -> wrk's connections, when not 32: enough for the waits to overlap.
CONNECTIONS = {"io_wait": 64}

# app -> the `--warmup` request its component is built with.
WARMUP = {"hello": "/", "flask_json": "/api/items/1", "echo_64k": "POST /", "io_wait": "/"}

SERVERS = ["wsgi-wasm", "wsgi-wasm-warmup", "gunicorn-sync", "gunicorn-gthread", "uwsgi", "granian"]
MODES = ["both", "one", "nginx"]
# The servers measured behind nginx: the seeds' stack is nginx → uwsgi.
NGINX_SERVERS = ["wsgi-wasm", "uwsgi"]
NGINX = "/usr/sbin/nginx"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def wasm_for(app, warm=True):
    module = APPS[app][0]
    out = BUILD / (f"{app}.wasm" if warm else f"{app}-plain.wasm")
    sources = [HERE / "apps", REPO / "guest-sdk", WSGI_WASM]
    newest = max(p.stat().st_mtime for src in sources for p in ([src] if src.is_file() else src.rglob("*")))
    if not out.exists() or out.stat().st_mtime < newest:
        BUILD.mkdir(exist_ok=True)
        cmd = [str(WSGI_WASM), "build", module, "--path", str(HERE / "apps"), "-o", str(out)]
        # The warm build warms its route at build time, as the README tells
        # users to: the route's first-request work and bytecode
        # specialization happen once, not in every sandbox. Flask's warms
        # another item than the one measured. The plain build is what a
        # user gets with no flag (the automatic warm-up only).
        if warm:
            cmd += ["--warmup", WARMUP[app]]
        if app == "flask_json":
            cmd += ["--requirements", str(HERE / "apps" / "requirements.txt")]
        subprocess.run(cmd, check=True)
    return out


# app -> its component, built (and its code compiled into the cache) once
# before the first round, so that no round measures a build or a compile.
WASMS = {}


def prepare_wasm(app, server):
    WASMS[(app, server)] = wasm_for(app, warm=server == "wsgi-wasm-warmup")
    port = free_port()
    proc = subprocess.Popen(server_cmd(server, app, port, "one"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port, proc)
    finally:
        stop(proc)


def server_cmd(server, app, port, mode):
    if mode == "both":
        return both_cores_cmd(server, app, port)
    if mode == "nginx":
        return behind_nginx_cmd(server, app, port)
    module = APPS[app][0]
    py = VENV / "bin"
    pin = ["taskset", "-c", SERVER_CPU]
    # No server writes an access log: Gunicorn and Granian log none by
    # default, uWSGI is given --disable-logging, wsgi-wasm --no-access-log.
    if server.startswith("wsgi-wasm"):
        return pin + [str(WSGI_WASM), "run", str(WASMS[(app, server)]), "--http", f"127.0.0.1:{port}", "--no-access-log"]
    if server == "gunicorn-sync":
        return pin + [str(py / "gunicorn"), "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{port}", "--chdir", str(HERE / "apps"), module]
    if server == "gunicorn-gthread":
        return pin + [str(py / "gunicorn"), "-w", "1", "-k", "gthread", "--threads", "8", "-b", f"127.0.0.1:{port}", "--chdir", str(HERE / "apps"), module]
    if server == "uwsgi":
        mod, call = module.split(":")
        # --http11-socket: plain HTTP with keep-alive, no router process.
        return pin + [str(py / "uwsgi"), "--http11-socket", f"127.0.0.1:{port}", "--processes", "1",
                      "--chdir", str(HERE / "apps"), "--module", mod, "--callable", call, "--disable-logging", "--master"]
    if server == "granian":
        return pin + [str(py / "granian"), "--interface", "wsgi", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
                      "--working-dir", str(HERE / "apps"), module]
    raise ValueError(server)


def both_cores_cmd(server, app, port):
    """The server as a user runs it on a two-core machine: defaults, no pin.

    Gunicorn and Granian write no access log by default; uWSGI and
    wsgi-wasm do (to /dev/null here), as users get them.
    """
    module = APPS[app][0]
    py = VENV / "bin"
    bind = f"127.0.0.1:{port}"
    if server.startswith("wsgi-wasm"):
        return [str(WSGI_WASM), "run", str(WASMS[(app, server)]), "--http", bind]
    if server == "gunicorn-sync":
        return [str(py / "gunicorn"), "-w", "2", "-b", bind, "--chdir", str(HERE / "apps"), module]
    if server == "gunicorn-gthread":
        return [str(py / "gunicorn"), "-w", "2", "-k", "gthread", "--threads", "4", "-b", bind,
                "--chdir", str(HERE / "apps"), module]
    if server == "uwsgi":
        mod, call = module.split(":")
        return [str(py / "uwsgi"), "--http11-socket", bind, "--processes", "2", "--master",
                "--chdir", str(HERE / "apps"), "--module", mod, "--callable", call]
    if server == "granian":
        return [str(py / "granian"), "--interface", "wsgi", "--workers", "2", "--host", "127.0.0.1",
                "--port", str(port), "--working-dir", str(HERE / "apps"), module]
    raise ValueError(server)


def behind_nginx_cmd(server, app, port):
    """The server speaking uwsgi on `port`, as behind nginx in production:
    both cores, no request log (as the issue's measurement ran them)."""
    module = APPS[app][0]
    addr = f"127.0.0.1:{port}"
    if server.startswith("wsgi-wasm"):
        return [str(WSGI_WASM), "run", str(WASMS[(app, server)]), "--uwsgi", addr, "--no-access-log"]
    if server == "uwsgi":
        mod, call = module.split(":")
        return [str(VENV / "bin" / "uwsgi"), "--socket", addr, "--processes", "2", "--master", "--disable-logging",
                "--chdir", str(HERE / "apps"), "--module", mod, "--callable", call]
    raise ValueError(server)


def start_nginx(upstream_port):
    """Debian's nginx on a free loopback port, one worker, `uwsgi_pass` to
    `upstream_port`, in a directory of its own; returns (process, port)."""
    port = free_port()
    d = BUILD / f"nginx-{port}"
    d.mkdir(parents=True, exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = f"""daemon off;
master_process on;
worker_processes 1;
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{upstream_port}; }}
  }}
}}
"""
    (d / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, port


def tree_pids(pid):
    """A process and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split())
        except OSError:
            pass
    return out


def tree_pss_mib(pid):
    """PSS summed over a process and its descendants: shared pages counted once."""
    total = 0
    for p in tree_pids(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            total += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
        except (OSError, AttributeError):
            pass
    return total / 1024


def tree_peak_rss_mib(pid):
    """Peak RSS (VmHWM) summed over a process and its descendants."""
    total = 0
    for p in tree_pids(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
        except (OSError, AttributeError):
            pass
    return total / 1024


def tree_cpu_seconds(pid):
    """User and system CPU summed over a process (all its threads) and its
    descendants, in seconds."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            # The fields after the command's closing parenthesis; utime and
            # stime are the 14th and 15th of the whole line.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url, method, body_len, duration, mode, connections=32, during=None):
    """Runs wrk; `during()` is called once, halfway through the load."""
    script = None
    common = [f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if mode == "both":
        cmd = ["wrk", "-t2", *common]
    elif mode == "nginx":
        cmd = ["wrk", "-t1", *common]
    else:
        cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", *common]
    if method == "POST":
        script = BUILD / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = string.rep("x", {body_len})\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
        cmd += ["-s", str(script)]
    proc = subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = None
    if during:
        time.sleep(duration / 2)
        sampled = during()
    out, err = proc.communicate(timeout=duration + 60)
    if proc.returncode:
        raise RuntimeError(f"wrk failed: {err}")

    def latency(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "sampled": sampled,
    }


def run_one(server, app, duration, mode):
    port = free_port()
    # One core: wsgi-wasm logs warnings only. Both cores: as users run it.
    env = dict(os.environ, WSGI_WASM_LOG="warn") if mode == "one" else dict(os.environ)
    proc = subprocess.Popen(server_cmd(server, app, port, mode), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    nginx = None
    try:
        wait_ready(port, proc)
        if mode == "nginx":
            nginx, port = start_nginx(port)
            wait_ready(port, nginx)
        _, path, method, body_len = APPS[app]
        url = f"http://127.0.0.1:{port}{path}"
        conns = CONNECTIONS.get(app, 32)
        wrk(url, method, body_len, 1, mode, conns)  # warm-up: imports, caches, JIT of the peers
        procs = {"server": proc, "nginx": nginx} if nginx else {"server": proc}
        cpu = {name: tree_cpu_seconds(p.pid) for name, p in procs.items()}
        result = wrk(url, method, body_len, duration, mode, conns, during=lambda: tree_pss_mib(proc.pid))
        # CPU per request, from the CPU the process trees used over the run:
        # what a request costs the server (and, behind nginx, nginx).
        for name, p in procs.items():
            result[f"{name}_cpu_us"] = (tree_cpu_seconds(p.pid) - cpu[name]) * 1e6 / max(result["requests"], 1)
        result["pss_mib"] = result.pop("sampled")
        result["peak_rss_mib"] = tree_peak_rss_mib(proc.pid)
        return result
    finally:
        if nginx:
            stop(nginx)
        stop(proc)


def stop(proc):
    """Stops a server's whole process group, whether or not it still runs."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group may outlive its leader (a master's workers): make sure.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def mode_servers(mode, servers):
    """The servers a mode measures."""
    return [s for s in servers if s in NGINX_SERVERS] if mode == "nginx" else servers


def table(mode, summary, servers, apps, args):
    where, title, base_server = {
        "both": ("unpinned, each server with its defaults; wrk -t2 -c32", "Both cores", "gunicorn-sync"),
        "one": (f"server on CPU {SERVER_CPU} with one worker, wrk -t1 -c32 on CPU {CLIENT_CPU}", "One core",
                "gunicorn-sync"),
        "nginx": ("nginx (one worker) → uwsgi_pass, both cores, wrk -t1 -c32 against nginx", "Behind nginx", "uwsgi"),
    }[mode]
    lines = [f"**{title}**: {where} (io_wait: -c64); {args.duration} s x {args.rounds} rounds (median)", ""]
    nginx = " nginx CPU µs/req |" if mode == "nginx" else ""
    lines.append(f"| app | server | req/s | p50 ms | p99 ms | PSS under load MiB | peak RSS MiB | CPU µs/req |{nginx} "
                 f"vs {base_server} |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if nginx else "") + "---:|")
    for app in apps:
        base = summary[app].get(base_server, {}).get("rps")
        for server in mode_servers(mode, servers):
            m = summary[app][server]
            ratio = f"{m['rps'] / base:.2f}x" if base else "-"
            flag = f" ({m['non_2xx']} non-2xx)" if m["non_2xx"] else ""
            nginx_cpu = f" {m['nginx_cpu_us']:.0f} |" if nginx else ""
            lines.append(f"| {app} | {server} | {m['rps']:.0f}{flag} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                         f"{m['pss_mib']:.0f} | {m['peak_rss_mib']:.0f} | {m['server_cpu_us']:.0f} |{nginx_cpu} "
                         f"{ratio} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per server, app and round")
    ap.add_argument("--mode", default="all", choices=["all", *MODES])
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--apps", default=",".join(APPS))
    args = ap.parse_args()
    servers, apps = args.servers.split(","), args.apps.split(",")
    modes = MODES if args.mode == "all" else [args.mode]
    if not (1 <= args.rounds <= 10 and 1 <= args.duration <= 60):
        sys.exit("--rounds must be 1..10 and --duration 1..60")
    for app in apps:
        for server in servers:
            if server.startswith("wsgi-wasm"):
                prepare_wasm(app, server)

    samples = {(m, s, a): [] for m in modes for s in mode_servers(m, servers) for a in apps}
    for r in range(args.rounds):
        for mode in modes:
            for app in apps:
                for server in mode_servers(mode, servers):
                    res = run_one(server, app, args.duration, mode)
                    samples[(mode, server, app)].append(res)
                    print(f"round {r + 1}/{args.rounds} {mode:<4} {app:<10} {server:<17} {res['rps']:>9.0f} req/s  "
                          f"p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms", file=sys.stderr)

    summaries = {}
    for (mode, server, app), runs in samples.items():
        summaries.setdefault(mode, {}).setdefault(app, {})[server] = {
            key: statistics.median(run[key] for run in runs)
            # nginx's CPU only where nginx ran.
            for key in ("rps", "p50_ms", "p99_ms", "pss_mib", "peak_rss_mib", "server_cpu_us", "nginx_cpu_us")
            if key in runs[0]
        } | {"non_2xx": sum(run["non_2xx"] for run in runs), "rounds": len(runs)}

    text = "\n\n".join(table(mode, summaries[mode], servers, apps, args) for mode in modes)
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"args": vars(args), "results": summaries, "samples": {
        f"{m}/{s}/{a}": runs for (m, s, a), runs in samples.items()}}, indent=2))
    (out / "latest.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
