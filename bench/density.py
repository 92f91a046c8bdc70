#!/usr/bin/env python3
"""What each hosted app costs: 1, 10, 50 and 500 copies of hello in one server.

Each copy is the same build with a custom section naming it appended, so
every app has a digest, a compile and a memory image of its own, as
distinct tenants' apps do. For each count it reports:

- the first start, with an empty compile cache: the time from starting
  `wsgi-wasm run --config` to its first listener, and the server's PSS
  after one request to every app (the compiler's leftovers included);
- the same for a second start, every app's code in the compile cache, and
  the PSS per app, at rest;
- for each of the two servers, how long a new app takes to serve: a Flask
  app (another build, so its own snapshot module, as a new tenant's upload
  has) is added to the config and the server sent SIGHUP; the time runs
  from the signal to the new app's first 200. CPython's libraries are
  compiled once, into the cache, by the first app of the first start;
  every later app, and the new one, compiles only its own modules.

Traffic goes to 127.0.0.1 only: one GET per app, and the new app's polls.

Each app takes its `app.wasm` and its compiled code on disk, about 52 MB
for hello: 500 apps need about 26 GB free where `tempfile` writes (set
TMPDIR to choose). A count that would not fit is refused before it starts,
saying how much it needs; `--counts` chooses the counts.

    bench/run.sh first (it builds the binary), then python3 bench/density.py
    python3 bench/density.py --counts 1,10,50
"""

import argparse
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WSGI_WASM = REPO / "target" / "release" / "wsgi-wasm"
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (wasm_for builds hello as the benchmark does)

COUNTS = "1,10,50,500"

# The compiled code of an app, against the size of its `app.wasm` (hello:
# 20.3 MB of code and memory image for 31.8 MB; CPython's compiled
# libraries, 20 MB once, are left out), rounded up: what a count needs on
# disk.
CODE_PER_WASM_BYTE = 0.7


def leb128(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tagged(src, dest, i):
    """`src` with a custom section `density-i` appended: a distinct app."""
    name = b"density"
    payload = leb128(len(name)) + name + str(i).encode()
    dest.write_bytes(src.read_bytes() + b"\x00" + leb128(len(payload)) + payload)


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss")


def get(port, host, path="/"):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{host}: {data[:200]!r}")


def start(config, cache):
    """Starts the server; returns it, its port, and the seconds until its
    first listener. A thread reads its log from then on: a server whose log
    pipe nobody reads would block on a line once the pipe is full."""
    port = bench.free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(WSGI_WASM), "run", "--config", str(config), "--http", f"127.0.0.1:{port}", "--cache-dir", str(cache),
         "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    proc.lines = queue.Queue()
    threading.Thread(target=read_log, args=(proc,), daemon=True).start()
    wait_for_line(proc, "listening on")
    return proc, port, time.monotonic() - started


def read_log(proc):
    """Queues each line of the server's log, then None at its end."""
    for line in proc.stderr:
        proc.lines.put(line)
    proc.lines.put(None)


def wait_for_line(proc, text):
    """Reads the server's log up to the first line with `text`."""
    while (line := proc.lines.get()) is not None:
        if text in line:
            return
    raise RuntimeError(f"server exited with {proc.wait()} before logging {text!r}")


def app_lines(name, wasm):
    return [f"[apps.{name}]", f'wasm = "{wasm}"', f'hosts = ["{name}.test"]', ""]


def serves(port, host):
    try:
        get(port, host, "/api/items/42")
        return True
    except (OSError, RuntimeError):
        return False


def new_app_seconds(proc, port, config, lines, wasm, name):
    """Adds `wasm` as app `name` to `config`, sends SIGHUP, and returns the
    seconds until it answers 200 (polled every 20 ms, for at most 120 s)."""
    config.write_text("\n".join(lines + app_lines(name, wasm)))
    signalled = time.monotonic()
    os.kill(proc.pid, signal.SIGHUP)
    while time.monotonic() - signalled < 120:
        if serves(port, f"{name}.test"):
            return time.monotonic() - signalled
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not serve within 120 s of SIGHUP")


def measure(n, hello, flask, work):
    """One count's figures, from an empty compile cache of its own (the
    counts' apps share bytes: hello-0 is the same app in every count)."""
    apps, cache = work / f"apps-{n}", work / f"cache-{n}"
    apps.mkdir()
    lines = ["[defaults]", "memory = 64", ""]
    for i in range(n):
        wasm = apps / f"hello-{i}.wasm"
        tagged(hello, wasm, i)
        lines += app_lines(f"hello{i}", wasm)
    config = work / f"density-{n}.toml"
    results = {}
    for phase in ("first", "cached"):
        config.write_text("\n".join(lines))
        proc, port, took = start(config, cache)
        try:
            for i in range(n):
                get(port, f"hello{i}.test")
            time.sleep(0.5)
            pss = pss_kib(proc.pid)
            new = apps / f"new-{phase}.wasm"
            tagged(flask, new, 1000 + n * 10 + len(results))
            added = new_app_seconds(proc, port, config, lines, new, "added")
            results[phase] = (took, pss, added)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait()
    shutil.rmtree(apps)
    shutil.rmtree(cache)
    return results


def check_disk(n, hello, work):
    """Refuses a count whose apps and compiled code would not fit on the
    disk under `work`, before any of it is written."""
    need = int(n * hello.stat().st_size * (1 + CODE_PER_WASM_BYTE))
    free = shutil.disk_usage(work).free
    if need > free:
        sys.exit(f"{n} apps need about {need / 1e9:.0f} GB under {work}, and {free / 1e9:.0f} GB are free: "
                 "free some, set TMPDIR to a larger disk, or leave the count out of --counts")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default=COUNTS, help=f"app counts, comma-separated (default {COUNTS})")
    counts = [int(c) for c in ap.parse_args().counts.split(",")]
    hello = bench.wasm_for("hello")
    flask = bench.wasm_for("flask_json")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("| apps | first start (s) | its PSS (MiB) | then a new app (s) "
              "| cached start (s) | PSS idle (MiB) | per app (MiB) | then a new app (s) |")
        print("|---|---|---|---|---|---|---|---|")
        for n in counts:
            check_disk(n, hello, work)
            r = measure(n, hello, flask, work)
            cold_s, cold_pss, cold_new = r["first"]
            warm_s, pss, warm_new = r["cached"]
            print(f"| {n} | {cold_s:.1f} | {cold_pss / 1024:.0f} | {cold_new:.2f} "
                  f"| {warm_s:.2f} | {pss / 1024:.0f} | {pss / 1024 / n:.1f} | {warm_new:.2f} |", flush=True)


if __name__ == "__main__":
    main()
