#!/usr/bin/env bash
# Start the bare ASGI reference app on Hypercorn, one worker, TLS, on 127.0.0.1.
#
#   PORT=8445 TLS_CERT=server.crt TLS_KEY=server.key CLIENT_CA=client-certs.pem \
#       bench/peers/bare_hypercorn/run.sh
#
# PORT       default 8445; 0 picks a free port (the "ready" line names it)
# TLS_MODE   verify (default): Hypercorn's own SSL context, verify_mode CERT_OPTIONAL,
#            ca_certs=CLIENT_CA; a client certificate is requested and must be in CLIENT_CA.
#            accept-any: tokensmith's own TLS policy and accept-any client-certificate callback.
# PYTHON     default: the repository's .venv/bin/python (Hypercorn 0.18 is installed there)
#
# Prints "ready https://127.0.0.1:PORT" on stdout when listening. The python process replaces
# this shell (exec), so its pid is this script's pid: SIGTERM/SIGINT it to stop.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
PYTHON="${PYTHON:-$repo/.venv/bin/python}"
export PYTHONUNBUFFERED=1
exec "$PYTHON" "$here/app.py"
