#!/usr/bin/env bash
# Veil's TLS edge benchmarks (see bench/README.md):
#   bench/edge/run.sh                          A, B and C; 3 runs per B/C figure (~8 min)
#   bench/edge/run.sh --only A,B --runs 1      some scenarios, fewer runs
#   bench/edge/run.sh report                   print the latest table again
# Installs what is missing (Debian packages through apt-get; Veil's Python
# environment), makes the bench certificates, builds the Go client, then runs
# edgebench.py.  Every server it starts is stopped by its PID, also when the
# run is interrupted (trap below).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_TMP=${BENCH_TMP:-/tmp/veil-bench}
shared=${BENCH_SHARED:-$(cd "$repo/.." && pwd)/shared/bench}
work="$BENCH_TMP/edge"
mkdir -p "$work" "$BENCH_TMP/bin"

if [[ "${1:-}" == report ]]; then
    cat "$work/latest.md" 2>/dev/null || { echo "no results yet in $work" >&2; exit 1; }
    exit 0
fi
if [[ $(nproc) -lt 2 ]]; then echo "needs at least 2 CPUs (server on CPU 0, client on CPU 1)" >&2; exit 1; fi
if [[ $(id -u) -ne 0 ]]; then echo "needs root (apt-get; Veil's embedded PostgreSQL runs as postgres)" >&2; exit 1; fi

apt_need() {  # install the Debian packages that are missing (services are not started)
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 || {
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
        }
    fi
}
apt_need caddy nginx-light golang-go pebble openssl util-linux procps coreutils python3-venv

# Veil's Python: the repository's .venv if it has what Veil needs, else a venv of
# our own with Veil's dependencies.  Veil itself always runs from this checkout
# (PYTHONPATH), so the commit measured is `git rev-parse HEAD`.
py="$repo/.venv/bin/python"
if ! PYTHONPATH="$repo" "$py" -c 'import twisted, psycopg, OpenSSL, cryptography, veil.tap' 2>/dev/null; then
    venv="$BENCH_TMP/venv-edge"
    if [[ ! -x "$venv/bin/twistd" ]]; then
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install -q "$repo[embedded]" >&2
    fi
    py="$venv/bin/python"
fi

# The bench certificates (shared harness): a local CA and *.bench.test leaves.
if [[ ! -s "$BENCH_TMP/certs/ecdsa.pem" ]]; then
    bash "$shared/certs.sh" >/dev/null
fi

# The Go client (stdlib only).
if [[ ! -x "$BENCH_TMP/bin/hsbench" || "$here/hsbench.go" -nt "$BENCH_TMP/bin/hsbench" ]]; then
    (cd "$here" && GOCACHE="$BENCH_TMP/gocache" GOPATH="$BENCH_TMP/gopath" GO111MODULE=off \
        go build -o "$BENCH_TMP/bin/hsbench" hsbench.go)
fi

hard=$(ulimit -Hn)
if [[ $hard == unlimited || $hard -gt 65536 ]]; then hard=65536; fi
ulimit -n "$hard"

# Stop, by PID, anything the harness started and did not stop (it records each
# process as "pid start-time name" in $work/pids; the start time guards against
# a reused PID).
pids="$work/pids"
: > "$pids"
harness=
cleanup() {
    trap - EXIT INT TERM HUP
    if [[ -n "$harness" ]] && kill -0 "$harness" 2>/dev/null; then
        kill -TERM "$harness" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$harness" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$harness" 2>/dev/null || true
    fi
    local pid start name now
    while read -r pid start name; do
        [[ -n "$pid" && -r "/proc/$pid/stat" ]] || continue
        now=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f20)
        [[ "$now" == "$start" ]] || continue
        echo "stopping leftover $name (pid $pid)" >&2
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done < "$pids"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

cd "$here"
PYTHONPATH="$repo" "$py" "$here/edgebench.py" "$@" &
harness=$!
rc=0
wait "$harness" || rc=$?
harness=
exit "$rc"
