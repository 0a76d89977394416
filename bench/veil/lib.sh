# Shared set-up of bench/veil/profile.sh and bench/veil/staying.sh.  Sourced, not executed.
#
# One Veil process from this working tree (PYTHONPATH) on CPU 0 with its embedded
# PostgreSQL, in front of the shared harness's nginx origin on CPU 1, with the harness's
# certificates, virtualenv and seed data directory, on the harness's ports (Veil 18443,
# origin 18080; Veil's plain HTTP 18081 and dashboard 18082).  What is missing is made
# here the way the harness makes it, without running the harness:
#   - the certificates, with the harness's certs.sh;
#   - the virtualenv $BENCH_TMP/venv-veil and the seed data directory (the site
#     www.bench.test before the origin), with bench/veil/peer.sh setup;
#   - the origin's configuration and files under $BENCH_TMP/run/upstream.
# The shared harness is found through VEIL_BENCH_HARNESS (its directory, the one with
# run.sh and lib/common.sh), else as ../shared/bench or ../../shared/bench beside the
# repository.
#
# After veil_bench_start: $run (scratch directory, removed at exit), $veil_data,
# $venv, $T, $twistd (array), $origin (the origin's pid); the caller starts Veil with
# veil_bench_launch and waits with veil_bench_wait.  wrk_for runs wrk on CPU 1.

bench_veil_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench_veil_dir/../.." && pwd)
T=${BENCH_TMP:-/tmp/veil-bench}
venv=$T/venv-veil
origin_run=$T/run/upstream
VEIL_PORT=18443
ORIGIN_PORT=18080
BENCH_PORTS=("$VEIL_PORT" "$ORIGIN_PORT" 18081 18082)

veil_bench_harness() {  # the shared harness's directory, or nothing
    local candidate
    for candidate in "${VEIL_BENCH_HARNESS:-}" "$repo/../shared/bench" "$repo/../../shared/bench"; do
        if [[ -n $candidate && -f $candidate/lib/common.sh && -f $candidate/certs.sh ]]; then
            (cd "$candidate" && pwd)
            return
        fi
    done
}

veil_bench_prepare() {  # makes what is missing (see above)
    local harness
    harness=$(veil_bench_harness)
    if [[ -z $harness ]]; then
        echo "shared harness not found: set VEIL_BENCH_HARNESS to its directory" >&2
        return 1
    fi
    local tool
    for tool in wrk nginx taskset curl; do
        command -v "$tool" > /dev/null || { echo "missing $tool (the harness installs" \
            "wrk, nginx-light and libnss-wrapper)" >&2; return 1; }
    done
    if [[ ! -s $T/certs/ca.crt || ! -s $T/certs/ecdsa.pem ]]; then
        BENCH_TMP=$T "$harness/certs.sh" >&2
    fi
    if [[ ! -x $venv/bin/twistd || ! -d $T/veil-seed/veil-data ]]; then
        echo "making $venv and the seed data directory (peer.sh setup)" >&2
        BENCH_TMP=$T BENCH_LIB=$harness/lib BENCH_UPSTREAM_PORT=$ORIGIN_PORT \
            bash "$bench_veil_dir/peer.sh" setup
    fi
    if [[ ! -s $origin_run/nginx.conf || ! -s $origin_run/www/1k ]]; then
        mkdir -p "$origin_run/www" "$origin_run/upstream-tmp"
        python3 - "$origin_run/www" <<'PY'
import sys
from pathlib import Path
line = b"veil-bench origin body, fixed bytes so that every response is the same.\n"
for name, size in (("1k", 1024), ("64k", 65536)):
    Path(sys.argv[1], name).write_bytes((line * (size // len(line) + 1))[:size])
PY
        sed -e "s|@RUN@|$origin_run|g" -e "s|@UPSTREAM_PORT@|$ORIGIN_PORT|g" \
            "$harness/upstream/nginx.conf" > "$origin_run/nginx.conf"
    fi
    if ! grep -q "location = /post" "$origin_run/nginx.conf"; then
        # S5: the origin answers the form POST with "ok", as post_bench.py's does.
        sed -i 's|^\( *\)location / {|\1location = /post { default_type text/plain; return 200 "ok\\n"; }\n&|' \
            "$origin_run/nginx.conf"
    fi
    if [[ ! -s $T/post.lua ]]; then
        # S5's request: post_bench.py's form, read from the shared harness.
        python3 - "$harness/tools" > "$T/post.lua" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1])
from post_bench import FORM
print('wrk.method = "POST"')
print('wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"')
print("wrk.body = " + json.dumps(FORM))
PY
    fi
}

veil_bench_ports_free() {  # fails, naming the holders, if a port of ours is taken
    local port busy=0
    for port in "${BENCH_PORTS[@]}"; do
        if ss -ltnH "sport = :$port" | grep -q .; then
            echo "port $port is in use: $(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' |
                sort -u | tr '\n' ' ')(stop that process first)" >&2
            busy=1
        fi
    done
    return "$busy"
}

veil_bench_cleanup() {
    set +e
    if [[ -n ${veil:-} ]]; then
        kill -TERM "$veil" 2>/dev/null  # Veil stops its PostgreSQL, then exits
        for _ in $(seq 1 120); do kill -0 "$veil" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$veil" 2>/dev/null
    fi
    [[ -n ${origin:-} ]] && kill -TERM "$origin" 2>/dev/null
    if [[ -n ${run:-} ]]; then
        local leftover
        leftover=$(pgrep -f -- "-D $run/veil-data/postgres" | head -1)
        [[ -z $leftover ]] || kill -KILL "$leftover" 2>/dev/null
        rm -rf "$run"
    fi
}

veil_bench_start() {  # prepares, starts the origin on CPU 1, copies the seed into $run
    veil_bench_prepare
    veil_bench_ports_free
    run=$(mktemp -d "${TMPDIR:-/tmp}/veil-bench-run.XXXXXX")
    trap veil_bench_cleanup EXIT
    trap 'exit 1' INT TERM
    taskset -c 1 nginx -p "$origin_run" -e "$run/origin-error.log" -c "$origin_run/nginx.conf" &
    origin=$!
    veil_data=$run/veil-data
    cp -a "$T/veil-seed/veil-data" "$veil_data"
    mkdir -p "$veil_data/ca"
    cp "$T/certs/ca.crt" "$veil_data/ca/ca.crt"
    install -m 0600 "$T/certs/ca.key" "$veil_data/ca/ca.key"
    export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} VEIL_DATA_DIR=$veil_data \
        VEIL_EDGE_PORT=$VEIL_PORT VEIL_HTTP_PORT=18081 VEIL_DASHBOARD_PORT=18082
    twistd=("$venv/bin/python" "$venv/bin/twistd" --nodaemon --pidfile=)
    echo "127.0.0.1 www.bench.test" > "$run/hosts"
}

veil_bench_launch() {  # [PREFIX...] -- [TWISTD OPTIONS...]: Veil on CPU 0, pid in $veil
    local prefix=() options=()
    while (($#)) && [[ $1 != -- ]]; do prefix+=("$1"); shift; done
    (($#)) && shift
    options=("$@")
    (cd "$run" && exec taskset -c 0 "${prefix[@]}" "${twistd[@]}" "${options[@]}" veil) \
        > "$run/veil.log" 2>&1 &
    veil=$!
}

veil_bench_wait() {  # until Veil answers /1k through the origin (up to 5 minutes)
    for _ in $(seq 1 600); do
        if curl -s -o /dev/null --cacert "$T/certs/ca.crt" \
                --resolve www.bench.test:$VEIL_PORT:127.0.0.1 "https://www.bench.test:$VEIL_PORT/1k"; then
            return 0
        fi
        kill -0 "$veil" 2>/dev/null || { echo "Veil exited:" >&2; tail -20 "$run/veil.log" >&2; return 1; }
        sleep 0.5
    done
    echo "Veil did not answer within 5 minutes" >&2
    return 1
}

wrk_for() {  # seconds [wrk options]; wrk's report on $path with $conns connections, CPU 1
    env NSS_WRAPPER_HOSTS="$run/hosts" LD_PRELOAD=libnss_wrapper.so taskset -c 1 \
        wrk -t1 -c"$conns" -d"${1}s" ${wrk_script:+-s "$wrk_script"} "${@:2}" \
        "https://www.bench.test:$VEIL_PORT$path"
}
