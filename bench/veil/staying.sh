#!/usr/bin/env bash
# Staying power: does Veil's S1 throughput hold over minutes of load?
#
#   bench/veil/staying.sh [--minutes N] [--conns C] [--seconds S] [--objects] [--json OUT]
#
# Starts one Veil from this working tree on CPU 0 (its embedded PostgreSQL with it,
# request logging on), before the shared harness's nginx origin on CPU 1, as
# profile.sh does (bench/veil/lib.sh makes what is missing: certificates, virtualenv,
# seed), warms it up for 5 s, then runs S1-shaped load (wrk -t1 -cC, keep-alive GET /1k
# over HTTPS, CPU 1) as N consecutive runs of S seconds (default 10 runs of 60 s).
# After each run it prints req/s, p50/p99, the request log's rows and sizes (heap and
# each index, every partition), the rollups' size and dead rows, autovacuum/autoanalyze
# runs, WAL and checkpoints, Veil's RSS and CPU, its cluster's CPU, and the writer's
# backlog and mean batch time (from /metrics); then the verdict, last run's req/s over
# the first's, against 0.90 (exit status 1 below it).  --objects also prints the Python
# object types that grew most (Veil dumps them on SIGUSR2, between runs).
# Needs a quiet machine for figures of record: run it with nothing else on either CPU.
set -euo pipefail
minutes=10 conns=50 seconds=60 objects= json=
while (($#)); do
    case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --objects) objects=1; shift ;;
    --json) json=$(realpath -m "$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (--minutes N, --conns C, --seconds S, --objects, --json OUT)" >&2
       exit 2 ;;
    esac
done
[[ $minutes =~ ^[1-9][0-9]*$ && $conns =~ ^[1-9][0-9]*$ && $seconds =~ ^[1-9][0-9]*$ ]] || {
    echo "--minutes, --conns and --seconds take positive integers" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
path=/1k
veil_bench_start
if [[ -n $objects ]]; then
    PYTHONPATH=$PYTHONPATH:$here/objects STAYING_OBJECTS_OUT=$run/objects.json veil_bench_launch --
else
    veil_bench_launch --
fi
veil_bench_wait
wrk_for 5 > /dev/null  # warm-up: the certificate is issued, the origin pool fills
echo "Veil $(git -C "$repo" rev-parse --short HEAD) on CPU 0, wrk -t1 -c$conns on CPU 1," \
    "$minutes runs of $seconds s, $(date -u '+%Y-%m-%d %H:%M UTC')"
"$venv/bin/python" "$here/staying.py" --pid "$veil" --data "$veil_data" \
    --url "https://www.bench.test:$VEIL_PORT$path" --hosts "$run/hosts" \
    --metrics "http://127.0.0.1:18082/metrics" --minutes "$minutes" --seconds "$seconds" \
    --conns "$conns" ${objects:+--objects "$run/objects.json"} ${json:+--json "$json"}
