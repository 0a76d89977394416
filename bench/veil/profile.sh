#!/usr/bin/env bash
# Where Veil's time goes under the shared harness's load, for one peer process on CPU 0.
#
#   bench/veil/profile.sh cost S1 [LABEL]    instructions per request under callgrind
#   bench/veil/profile.sh spy S1 OUT.txt     py-spy samples (collapsed stacks) under load
#   bench/veil/profile.sh calls S1 OUT.prof  cProfile (twistd --profile) under light load
#   bench/veil/profile.sh turns S1 [OUT.txt] reactor turns and request-log writes under load
#   (S1: keep-alive GET /1k; S3: GET /64k; S2: a new TLS connection per request;
#   S5: keep-alive POST of the 502-byte form of the shared tools/post_bench.py)
#
# Veil runs from this working tree (PYTHONPATH), in the harness's virtualenv, on a copy
# of the harness's seed data directory; bench/veil/lib.sh makes whatever of these is
# missing (and finds the shared harness, or VEIL_BENCH_HARNESS names it).
#
# PROFILE_KEEP=DIR keeps the callgrind files of "cost" in DIR.
# PROFILE_STEADY=1 (S1, S3, S5): "cost" measures 20 s in the middle of one wrk run,
# so that its connections' handshakes (10 of about 2.2M instructions each) fall
# outside the window, and counts the requests inside it from the callgrind
# data (two llhttp heads each); without it the per-request figure moves with
# the requests the loaded machine lets through (about 1% for S1, 3% for S3).
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
wrk_script=
case $scenario in S1) path=/1k ;; S3) path=/64k ;; S2) path= ;;
    S5) path=/post; wrk_script=${BENCH_TMP:-/tmp/veil-bench}/post.lua ;;
    *) echo "scenario: S1, S2, S3 or S5" >&2; exit 2 ;; esac
case $mode in cost|calls|spy|turns) ;; *) echo "mode: cost, spy, calls or turns" >&2; exit 2 ;; esac
source "$here/lib.sh"
veil_bench_start
case $mode in
cost)  veil_bench_launch valgrind --tool=callgrind --instr-atstart=no \
           --callgrind-out-file="$run/cg.out" -- ;;
calls) veil_bench_launch -- --profile="$arg" --profiler=cprofile --savestats ;;
spy)   veil_bench_launch -- ;;
turns) PYTHONPATH=$PYTHONPATH:$here/turns PROFILE_TURNS_OUT=$run/turns.txt veil_bench_launch -- ;;
esac
veil_bench_wait

conns=50
[[ $mode == spy || $mode == turns ]] || conns=10  # slowed down 20-50x: fewer connections keep it responsive
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
    if [[ -n ${PROFILE_STEADY:-} && $scenario != S2 ]]; then
        # One wrk run whose connections (their handshakes) are made before
        # the window measured, and the requests counted inside it.
        wrk_for 27 > /dev/null &
        loader=$!
        sleep 4
        callgrind_control -i on "$veil" > /dev/null
        sleep 20
        callgrind_control -i off "$veil" > /dev/null
        wait "$loader"
        callgrind_control -d "$veil" > /dev/null
        requests=$(python3 - "$run"/cg.out* <<'PY'
# Requests in the window: every one has two heads parsed by llhttp (the
# client's request, the origin's response).
import re, sys
heads, names, callee = 0, {}, None
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        m = re.match(r"(c?)fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if m:  # names are given once, then referred to by number
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1):
                callee = names.get(m.group(2), "")
        elif line.startswith("calls=") and callee and callee.endswith("llhttp__on_headers_complete"):
            heads += int(line[6:].split()[0])
print(heads // 2)
PY
)
    else
        callgrind_control -i on "$veil" > /dev/null
        requests=$(load 20)
        callgrind_control -d "$veil" > /dev/null
        callgrind_control -i off "$veil" > /dev/null
    fi
    total=$(grep -h "^totals:" "$run"/cg.out* | awk '{s += $2} END {printf "%.0f\n", s}')
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
    [[ $scenario != S2 ]] || { echo "turns: S1, S3 or S5" >&2; exit 2; }
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
