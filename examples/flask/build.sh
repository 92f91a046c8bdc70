#!/usr/bin/env bash
# Builds app.wasm from app.py and requirements.txt. Uses WSGI_WASM if set, else
# the release binary of this checkout (built first if needed).
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${WSGI_WASM:-}" ]; then
  cargo build --release --quiet --manifest-path ../../Cargo.toml
  WSGI_WASM=../../target/release/wsgi-wasm
fi
# The warm-up requests run at build time, so every sandbox starts with
# Flask's routing and the Jinja template already compiled.
exec "$WSGI_WASM" build app:app --path . -r requirements.txt --warmup / --warmup /api/books -o app.wasm
