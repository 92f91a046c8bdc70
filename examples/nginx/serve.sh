#!/usr/bin/env bash
# Builds the Flask example, serves it over uwsgi (TCP and a Unix socket), and
# puts a private nginx in front of it on http://127.0.0.1:8080/.
# Needs Debian's nginx (apt-get install nginx). Ctrl-C stops both.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/../flask/build.sh"
mkdir -p "$here/logs" "$here/tmp"
"$here/../../target/release/wsgi-wasm" run "$here/../flask/app.wasm" \
    --uwsgi 127.0.0.1:3031 --uwsgi "unix:$here/app.sock" --uwsgi-mode 666 &
server=$!
trap 'kill $server 2>/dev/null; kill $(cat "$here/tmp/nginx.pid" 2>/dev/null) 2>/dev/null' EXIT
cd "$here" && nginx -p "$here" -c nginx.conf
