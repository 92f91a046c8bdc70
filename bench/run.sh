#!/usr/bin/env bash
# The benchmark, in one command: installs what it needs (wrk and nginx from Debian, the
# peers into bench/.venv, the release build of wsgi-wasm), then runs bench.py.
# Arguments pass through, e.g. `bench/run.sh --rounds 1 --duration 5`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v taskset >/dev/null || { apt-get update -qq && apt-get install -y -qq util-linux; }
[ -x /usr/sbin/nginx ] || { apt-get update -qq && apt-get install -y -qq nginx; }
if [ ! -x "$here/.venv/bin/granian" ]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
cargo build --release --quiet --manifest-path "$here/../Cargo.toml"
exec python3 "$here/bench.py" "$@"
