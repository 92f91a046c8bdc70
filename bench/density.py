#!/usr/bin/env python3
"""What each hosted app costs: 1, 10 and 50 copies of hello in one server.

Each copy is the same build with a custom section naming it appended, so
every app has a digest, a compile and a memory image of its own, as
distinct tenants' apps do. For each count it reports:

- the time from starting `wsgi-wasm run --config` to its first listener,
  with every app's code already in the compile cache (a second start);
- the server's PSS when idle after one request to every app, and per app;
- the same after compiling, for the first start (reported, not compared).

Traffic goes to 127.0.0.1 only: one GET per app.

    bench/run.sh first (it builds the binary), then python3 bench/density.py
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WSGI_WASM = REPO / "target" / "release" / "wsgi-wasm"
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (wasm_for builds hello as the benchmark does)

COUNTS = [1, 10, 50]


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


def get(port, host):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{host}: {data[:200]!r}")


def start(config, cache):
    port = bench.free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(WSGI_WASM), "run", "--config", str(config), "--http", f"127.0.0.1:{port}", "--cache-dir", str(cache),
         "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stderr:
        if "listening on" in line:
            return proc, port, time.monotonic() - started
    raise RuntimeError(f"server exited with {proc.wait()}")


def measure(n, hello, work, cache):
    apps = work / f"apps-{n}"
    apps.mkdir(exist_ok=True)
    lines = ["[defaults]", "memory = 64", ""]
    for i in range(n):
        wasm = apps / f"hello-{i}.wasm"
        if not wasm.exists():
            tagged(hello, wasm, i)
        lines += [f"[apps.hello{i}]", f'wasm = "{wasm}"', f'hosts = ["hello{i}.test"]', ""]
    config = work / f"density-{n}.toml"
    config.write_text("\n".join(lines))
    results = {}
    for phase in ("first start (compiles)", "from the compile cache"):
        proc, port, took = start(config, cache)
        try:
            for i in range(n):
                get(port, f"hello{i}.test")
            time.sleep(0.5)
            results[phase] = (took, pss_kib(proc.pid))
        finally:
            os.killpg(proc.pid, 15)
            proc.wait()
    return results


def main():
    hello = bench.wasm_for("hello")
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        print("| apps | start, cached (s) | PSS idle (MiB) | PSS per app (MiB) | first start (s) |")
        print("|---|---|---|---|---|")
        for n in COUNTS:
            r = measure(n, hello, work, cache)
            cold_s, _ = r["first start (compiles)"]
            warm_s, pss = r["from the compile cache"]
            print(f"| {n} | {warm_s:.2f} | {pss / 1024:.0f} | {pss / 1024 / n:.1f} | {cold_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
