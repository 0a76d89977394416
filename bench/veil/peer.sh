#!/usr/bin/env bash
# Veil as a peer of the shared benchmark harness (../../shared/bench):
#   BENCH_PEER_DIRS=$PWD/bench ../shared/bench/run.sh veil nginx caddy
# usage: peer.sh setup|version|start
#
# One Veil process (pinned to CPU 0 by the harness, its embedded PostgreSQL
# with it), request logging and the IP-decision stage on, as in production.
# Its internal CA is the bench CA, so clients verify the chain as usual; the
# certificate for www.bench.test is issued on the first handshake, with an
# ECDSA P-256 or RSA-2048 key as the run asks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "${BENCH_LIB:-$here/../../../shared/bench/lib}/common.sh"
venv="$BENCH_TMP/venv-veil"
seed="$BENCH_TMP/veil-seed"
host=${BENCH_HOST:-www.bench.test}
upstream=${BENCH_UPSTREAM_PORT:-18080}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

case "$1" in
setup)
    # Veil from this checkout, in a virtualenv of its own.
    if [[ ! -x "$venv/bin/twistd" || "$(cat "$venv/.veil-commit" 2>/dev/null)" != "$(git -C "$repo" rev-parse HEAD)" ]]; then
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q --upgrade pip >&2
        "$venv/bin/pip" install -q "$repo[embedded]" >&2
        git -C "$repo" rev-parse HEAD > "$venv/.veil-commit"
    fi
    # A data directory with the site in it (no certificate yet), copied for every start.
    rm -rf "$seed" && mkdir -p "$seed"
    dash=$(free_port)
    (cd "$seed" && exec env VEIL_DATA_DIR="$seed/veil-data" VEIL_DASHBOARD_PORT=$dash \
        VEIL_EDGE_PORT=$(free_port) VEIL_HTTP_PORT=$(free_port) \
        "$venv/bin/twistd" --nodaemon --pidfile= veil) >"$seed/setup.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 120); do
        curl -fsS "http://127.0.0.1:$dash/ready" >/dev/null 2>&1 && break
        sleep 0.25
    done
    VEIL_DATA_DIR="$seed/veil-data" "$venv/bin/veil" sites add "$host" \
        --origin "http://127.0.0.1:$upstream" --verified >&2
    kill -TERM "$pid"
    wait "$pid" || true  # Veil stops its PostgreSQL before it exits
    grep -q "Veil stopped" "$seed/setup.log" ;;
version)
    "$venv/bin/python" - <<'PY'
import OpenSSL, twisted, veil
from OpenSSL import SSL
print(f"Veil {veil.__version__}, Twisted {twisted.__version__}, pyOpenSSL {OpenSSL.__version__}"
      f" ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})")
PY
    ;;
start)
    cp -a "$seed/veil-data" "$BENCH_RUN/veil-data"
    mkdir -p "$BENCH_RUN/veil-data/ca"
    cp "$(dirname "$BENCH_CERT")/ca.crt" "$BENCH_RUN/veil-data/ca/ca.crt"
    install -m 0600 "$(dirname "$BENCH_CERT")/ca.key" "$BENCH_RUN/veil-data/ca/ca.key"
    if [[ "$BENCH_KEYTYPE" == rsa ]]; then kt=rsa-2048; else kt=ecdsa-p256; fi
    cd "$BENCH_RUN"
    export VEIL_DATA_DIR="$BENCH_RUN/veil-data" VEIL_EDGE_PORT="$BENCH_PORT" \
        VEIL_HTTP_PORT=$(free_port) VEIL_DASHBOARD_PORT=$(free_port) VEIL_TLS_KEY_TYPE=$kt
    exec "$venv/bin/twistd" --nodaemon --pidfile= veil ;;
*)  echo "usage: $0 setup|version|start" >&2; exit 2 ;;
esac
