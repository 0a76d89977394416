#!/usr/bin/env bash
# Where Veil's time goes under the shared harness's load, for one peer process on CPU 0.
#
#   bench/veil/profile.sh cost S1 [LABEL]    instructions per request under callgrind
#   bench/veil/profile.sh spy S1 OUT.txt     py-spy samples (collapsed stacks) under load
#   bench/veil/profile.sh calls S1 OUT.prof  cProfile (twistd --profile) under light load
#   bench/veil/profile.sh turns S1 [OUT.txt] reactor turns and request-log writes under load
#   (S1: keep-alive GET /1k; S3: GET /64k; S2: a new TLS connection per request)
#
# Veil runs from this working tree (PYTHONPATH), in the harness's virtualenv, on a copy
# of the harness's seed data directory: run the harness once for Veil first
# (BENCH_PEER_DIRS=$PWD/bench ../shared/bench/run.sh veil --only S1 --runs 1), so that
# the certificates, the origin's files, the virtualenv and the seed exist.
#
# PROFILE_KEEP=DIR keeps the callgrind files of "cost" in DIR.
# "turns" records every reactor turn (events, wall and CPU time) and every request-log
# batch write (bench/veil/turns/), reports wrk's p99 and where the slow turns fall.
# Diagnostics for it: PROFILE_PG_CPU=N moves the embedded cluster to CPU N after the
# warm-up; PROFILE_NO_DB_WRITE=1 prepares each batch but does not send it (rows lost).
# "cost" is the figure to compare changes with: callgrind counts instructions, which
# do not depend on what else the machine is doing (the same count twice to 0.1%), while
# throughput on a shared VM moves by 10-25% from one minute to the next.  It counts
# user-space instructions of the Veil process only (not the kernel, not PostgreSQL).
set -euo pipefail
mode=${1:?usage: profile.sh cost|spy|calls S1|S2|S3 [LABEL|OUT]}
scenario=${2:-S1}
arg=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
T=${BENCH_TMP:-/tmp/veil-bench}
venv=$T/venv-veil
origin_run=$T/run/upstream
for need in "$venv/bin/twistd" "$T/veil-seed/veil-data" "$T/certs/ca.crt" "$origin_run/nginx.conf"; do
    [[ -e $need ]] || { echo "missing $need: run the shared harness for veil once" >&2; exit 1; }
done
case $scenario in S1) path=/1k ;; S3) path=/64k ;; S2) path= ;;
    *) echo "scenario: S1, S2 or S3" >&2; exit 2 ;; esac

free_ports() {
    local port p
    for port in 18443 18080 18081 18082; do
        for p in $(ss -ltnp | grep ":$port " | grep -o "pid=[0-9]*" | cut -d= -f2 | sort -u); do
            kill -KILL "$p" 2>/dev/null || true
        done
    done
}
free_ports
run=$(mktemp -d "${TMPDIR:-/tmp}/veil-profile.XXXXXX")
cleanup() {
    set +e
    if [[ -n ${veil:-} ]]; then
        kill -TERM "$veil" 2>/dev/null  # Veil stops its PostgreSQL, then exits
        for _ in $(seq 1 120); do kill -0 "$veil" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$veil" 2>/dev/null
    fi
    [[ -n ${origin:-} ]] && kill -TERM "$origin" 2>/dev/null
    pkill -KILL -f "$run/veil-data/postgres" 2>/dev/null
    free_ports
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

taskset -c 1 nginx -p "$origin_run" -e "$run/origin-error.log" -c "$origin_run/nginx.conf" &
origin=$!
cp -a "$T/veil-seed/veil-data" "$run/veil-data"
cp "$T/certs/ca.crt" "$run/veil-data/ca/ca.crt"
install -m 0600 "$T/certs/ca.key" "$run/veil-data/ca/ca.key"
export PYTHONPATH=$repo VEIL_DATA_DIR=$run/veil-data VEIL_EDGE_PORT=18443 VEIL_HTTP_PORT=18081 \
    VEIL_DASHBOARD_PORT=18082
twistd=("$venv/bin/python" "$venv/bin/twistd" --nodaemon --pidfile=)
case $mode in
cost)  (cd "$run" && exec taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
           --callgrind-out-file="$run/cg.out" "${twistd[@]}" veil) > "$run/veil.log" 2>&1 & ;;
calls) (cd "$run" && exec taskset -c 0 "${twistd[@]}" --profile="$arg" --profiler=cprofile \
           --savestats veil) > "$run/veil.log" 2>&1 & ;;
spy)   (cd "$run" && exec taskset -c 0 "${twistd[@]}" veil) > "$run/veil.log" 2>&1 & ;;
turns) (cd "$run" && PYTHONPATH=$PYTHONPATH:$here/turns PROFILE_TURNS_OUT=$run/turns.txt \
           exec taskset -c 0 "${twistd[@]}" veil) > "$run/veil.log" 2>&1 & ;;
*)     echo "mode: cost, spy, calls or turns" >&2; exit 2 ;;
esac
veil=$!
for _ in $(seq 1 600); do
    curl -s -o /dev/null --cacert "$T/certs/ca.crt" --resolve www.bench.test:18443:127.0.0.1 \
        https://www.bench.test:18443/1k && break
    sleep 0.5
done

echo "127.0.0.1 www.bench.test" > "$T/hosts"
conns=50
[[ $mode == spy || $mode == turns ]] || conns=10  # slowed down 20-50x: fewer connections keep it responsive
wrk_for() {  # seconds [wrk options]; wrk's report on $path
    env NSS_WRAPPER_HOSTS="$T/hosts" LD_PRELOAD=libnss_wrapper.so taskset -c 1 \
        wrk -t1 -c"$conns" -d"${1}s" "${@:2}" "https://www.bench.test:18443$path"
}
load() {  # seconds; prints the number of requests (or connections) completed
    if [[ $scenario == S2 ]]; then
        GOMAXPROCS=1 taskset -c 1 "$T/bin/tlsconn" -addr 127.0.0.1:18443 -sni www.bench.test \
            -c "$conns" -d "${1}s" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["conns"])'
    else
        wrk_for "$1" | awk '/requests in/{print $1}'
    fi
}
load 4 > /dev/null  # warm-up
if [[ -n ${PROFILE_PG_CPU:-} ]]; then
    postmaster=$(pgrep -f -- "-D $run/veil-data/postgres" | head -1)
    for p in $postmaster $(pgrep -P "$postmaster"); do
        taskset -p -c "$PROFILE_PG_CPU" "$p" > /dev/null
    done
fi
case $mode in
cost)
    callgrind_control -i on "$veil" > /dev/null
    requests=$(load 20)
    callgrind_control -d "$veil" > /dev/null
    callgrind_control -i off "$veil" > /dev/null
    total=$(grep -h "^summary:" "$run"/cg.out* | awk '{s += $2} END {print s}')
    echo "${arg:-$scenario}: $requests requests, $((total / requests)) instructions per request"
    if [[ -n ${PROFILE_KEEP:-} ]]; then  # keep the callgrind files for callgrind_annotate
        cp "$run"/cg.out* "$PROFILE_KEEP"/ && echo "callgrind files in $PROFILE_KEEP"
    fi
    ;;
spy)
    spy_bin=$(command -v py-spy || true)
    if [[ -z $spy_bin ]]; then  # not on this machine: a virtualenv of its own
        [[ -x $T/venv-py-spy/bin/py-spy ]] || { python3 -m venv "$T/venv-py-spy" &&
            "$T/venv-py-spy/bin/pip" install -q py-spy; } >&2
        spy_bin=$T/venv-py-spy/bin/py-spy
    fi
    (taskset -c 1 "$spy_bin" record -r 200 -d 10 --nonblocking -f raw -o "$arg" -p "$veil" \
        > /dev/null 2>&1) &
    spy=$!
    echo "$(load 10) requests in 10 s; samples in $arg"
    wait "$spy"
    ;;
turns)
    [[ $scenario != S2 ]] || { echo "turns: S1 or S3" >&2; exit 2; }
    wrk_for 15 --latency | awk '/ 99%/{p99=$2} /Requests\/sec/{rps=$2} END {print rps " req/s, p99 " p99}'
    kill -TERM "$veil"; wait "$veil" || true; veil=
    [[ -z $arg ]] || cp "$run/turns.txt" "$arg"
    python3 "$here/turns/summary.py" "$run/turns.txt"
    ;;
calls)
    echo "$(load 5) requests; stopping Veil to write $arg"
    kill -TERM "$veil"; wait "$veil" || true; veil=
    ;;
esac
