#!/usr/bin/env python3
"""Where a loaded server's CPU goes, guest functions named.

Starts `wsgi-wasm run APP.wasm --perf-map --no-access-log` on a free
loopback port, loads it with `wrk -t2 -c32` (both cores, as users run it),
samples it with `perf record` and prints the share of the samples per group
(the guest, the reset, instantiating, the kernel, ...) and the hottest
functions. With `--nginx` the server speaks uwsgi behind Debian's nginx
(one worker, as `bench/run.sh --mode nginx` runs it) and wrk loads nginx
with `-t1 -c32`; only the wsgi-wasm process is sampled.

    bench/profile.py bench/build/flask_json-plain.wasm --path /api/items/42
    bench/profile.py bench/build/hello-plain.wasm --nginx

`--perf-map` has wasmtime write /tmp/perf-PID.map with the address of each
compiled function, named `wasm[MODULE]::function[INDEX]`, and its name when
wasmtime kept the name section; otherwise this script names them from the
`name` sections of the component's core modules (libpython has one). It
needs `perf` (Debian's linux-perf) and `wrk`. On a VM without hardware
counters, perf samples by timer, which is enough here.
"""

import argparse
import bisect
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import WSGI_WASM, free_port, start_nginx, stop, wait_ready

# First match wins; the rest is "the host: other".
GROUPS = [
    ("the guest: the interpreter loop", r"^wasm\d*:_PyEval_EvalFrameDefault$"),
    ("the guest: random.seed() of a fresh instance", r"^wasm\d*:random_seed$|chacha20"),
    ("the guest: the rest", r"^wasm\d*:|^wasm\["),
    ("the reset: copying written pages back", r"__memmove"),
    ("the reset: the kernel's PAGEMAP_SCAN", r"pagemap_scan|vm_normal_page|walk_pgd_range|walk_p[mu4]d_range"),
    ("lazy function-table entries", r"lazy_table|get_func_ref|get_table_with_lazy_init"),
    (
        "instantiating",
        r"build_imports|Instance::new|instantiate|OwnedImports|ModuleRegistry::register"
        r"|ComponentInstance::instance|component_instance_mut|global_ptr|options_memory",
    ),
    ("the kernel: the rest", r"\[kernel"),
]


def leb128(data, i):
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def sections(data, start, end):
    """(id, payload start, payload end) of each section in data[start:end]."""
    i = start
    while i < end:
        sid = data[i]
        size, i = leb128(data, i + 1)
        yield sid, i, i + size
        i += size


def function_names(wasm):
    """{(core module index, function index): name} from each module's `name` section."""
    data = Path(wasm).read_bytes()
    if data[:4] != b"\0asm":
        sys.exit(f"{wasm}: not a WebAssembly component")
    modules = [(s, e) for sid, s, e in sections(data, 8, len(data)) if sid == 1]
    names = {}
    for k, (start, end) in enumerate(modules):
        for sid, a, z in sections(data, start + 8, end):
            if sid != 0:
                continue
            n, j = leb128(data, a)
            if data[j : j + n] != b"name":
                continue
            j += n
            while j < z:
                sub = data[j]
                size, j = leb128(data, j + 1)
                if sub == 1:  # function names
                    count, q = leb128(data, j)
                    for _ in range(count):
                        index, q = leb128(data, q)
                        length, q = leb128(data, q)
                        names[(k, index)] = data[q : q + length].decode(errors="replace")
                        q += length
                j += size
    return names


def record(args, workdir):
    """Runs the server under load and perf; returns (perf.data, perf map, wrk's output)."""

    listener = "--uwsgi" if args.nginx else "--http"

    def start(*flags):
        port = free_port()
        cmd = [str(WSGI_WASM), "run", args.wasm, listener, f"127.0.0.1:{port}", "--no-access-log", *flags]
        proc = subprocess.Popen(cmd + args.run_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, proc)
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        return proc, port

    # A first start compiles the app into the cache if it is not there yet:
    # a start that compiles maps the compiler's copy of the code as well,
    # and the perf map would list both.
    first, _ = start()
    first.terminate()
    first.wait()
    server, port = start("--perf-map")
    nginx = None
    try:
        if args.nginx:
            nginx, port = start_nginx(port)
            wait_ready(port, nginx)
        url = f"http://127.0.0.1:{port}{args.path}"
        threads = "-t1" if args.nginx else "-t2"
        subprocess.run(["wrk", threads, "-c32", "-d3", url], capture_output=True, check=True)
        load = subprocess.Popen(
            ["wrk", threads, "-c32", f"-d{args.seconds + 2}", url], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1)
        data = workdir / "perf.data"
        subprocess.run(
            ["perf", "record", "-q", "-F", "4999", "-p", str(server.pid), "-o", str(data), "--", "sleep", str(args.seconds)],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        out, _ = load.communicate()
        perf_map = workdir / "perf.map"
        shutil.move(f"/tmp/perf-{server.pid}.map", perf_map)
        return data, perf_map, out
    finally:
        if nginx:
            stop(nginx)
        server.terminate()
        server.wait()


def symbolize(wasm, data, perf_map):
    """Counter of samples by function name."""
    names = function_names(wasm)
    code = {}
    for line in perf_map.read_text().splitlines():
        addr, size, name = line.split(" ", 2)
        code[int(addr, 16)] = (int(size, 16), name)
    starts = sorted(code)
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "ip,sym,dso"], capture_output=True, text=True, check=True
    ).stdout
    counts = collections.Counter()
    for line in script.splitlines():
        fields = line.split(None, 1)
        if not fields:
            continue
        ip = int(fields[0], 16)
        i = bisect.bisect_right(starts, ip) - 1
        if i >= 0 and ip < starts[i] + code[starts[i]][0]:
            name = code[starts[i]][1]
            # wasmtime names a function from the name section when it has
            # kept it, and only by its indices otherwise.
            m = re.fullmatch(r"wasm\[(\d+)\]::function\[(\d+)\](?:::(.*))?", name)
            if m:
                k, f = int(m.group(1)), int(m.group(2))
                name = f"wasm{k}:{m.group(3) or names.get((k, f), f'function[{f}]')}"
            else:
                # A module compiled on its own (CPython's libraries, shared
                # by every app) is listed by its functions' own names.
                name = f"wasm:{name}"
        else:
            rest = fields[1] if len(fields) > 1 else "[unknown]"
            name = re.sub(r"\+0x[0-9a-f]+", "", rest).strip()
        counts[name] += 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wasm", help="the app.wasm to serve")
    ap.add_argument("--path", default="/", help="the path wrk requests (GET)")
    ap.add_argument("--seconds", type=int, default=10, help="seconds sampled")
    ap.add_argument("--top", type=int, default=30, help="functions listed")
    ap.add_argument("--nginx", action="store_true", help="serve uwsgi behind nginx, as the seeds' stack does")
    ap.add_argument("run_args", nargs="*", help="more `wsgi-wasm run` flags, after --")
    args = ap.parse_args()
    for tool in ("perf", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install {'linux-perf' if tool == 'perf' else tool})")
    if not WSGI_WASM.is_file():
        sys.exit(f"{WSGI_WASM} is missing: cargo build --release")
    with tempfile.TemporaryDirectory() as tmp:
        data, perf_map, out = record(args, Path(tmp))
        counts = symbolize(args.wasm, data, perf_map)
    total = sum(counts.values())
    rate = re.search(r"Requests/sec:\s+(\S+)", out)
    print(f"{total} samples; wrk: {rate.group(1) if rate else '?'} requests/s")
    groups = collections.Counter()
    for name, n in counts.items():
        group = next((g for g, rx in GROUPS if re.search(rx, name)), "the host: the rest")
        groups[group] += n
    for group, n in groups.most_common():
        print(f"{100 * n / total:6.1f}%  {group}")
    print()
    for name, n in counts.most_common(args.top):
        print(f"{100 * n / total:6.2f}%  {name[:140]}")


if __name__ == "__main__":
    main()
