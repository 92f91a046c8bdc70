#!/usr/bin/env bash
# Builds app.wasm from app.py. Uses WSGI_WASM if set, else
# the release binary of this checkout (built first if needed).
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${WSGI_WASM:-}" ]; then
  cargo build --release --quiet --manifest-path ../../Cargo.toml
  WSGI_WASM=../../target/release/wsgi-wasm
fi
exec "$WSGI_WASM" build app:app --path . --warmup / -o app.wasm
