"""
Staying power: S1-shaped load for N minutes against a running Veil, one
60-second wrk run after another, and after each minute what the database and
the process look like.  Started by C{bench/veil/staying.sh}, which starts Veil
and the origin; run in Veil's virtualenv with this working tree on the path.

Per minute: wrk's req/s, p50 and p99; rows in C{request_log}; the total size of
its partitions and of each of its indexes (all partitions); the rollup tables'
sizes and dead rows; autovacuum and autoanalyze runs (C{pg_stat_user_tables},
all of the request log's partitions and the rollups) and the last of them;
WAL written and checkpoints; the Veil process's RSS and CPU time and its
cluster's CPU time; from C{/metrics}, the request-log writer's backlog
(requests counted by the proxy, less rows written, spooled, dropped or
rejected), its batches and their mean write time.  With C{--objects} Veil
also dumps its live Python objects by type after each minute (see
C{staying/sitecustomize.py}).  Then the verdict: last minute's req/s over the
first's, against 0.90.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

from veil.store.embedded import conninfo_for

TARGET = 0.90
CLK_TCK = os.sysconf("SC_CLK_TCK")

_DB_FACTS = """
WITH parts AS (
    SELECT relid FROM pg_partition_tree('request_log') WHERE isleaf
), idx AS (
    SELECT i.indexrelid::regclass::text AS name,
           (SELECT coalesce(sum(pg_relation_size(t.relid)), 0)
            FROM pg_partition_tree(i.indexrelid) AS t WHERE t.isleaf) AS bytes
    FROM pg_index AS i WHERE i.indrelid = 'request_log'::regclass
), stats AS (
    SELECT relname, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count, autoanalyze_count,
           last_autovacuum, last_autoanalyze,
           relid IN (SELECT relid FROM parts) AS partition
    FROM pg_stat_user_tables
    WHERE relid IN (SELECT relid FROM parts)
       OR relname IN ('request_log_5min', 'request_log_hourly', 'request_log_attacks_hourly')
)
SELECT json_build_object(
    'rows', (SELECT count(*) FROM request_log),
    'table_bytes', (SELECT coalesce(sum(pg_relation_size(relid)), 0) FROM parts),
    'total_bytes', (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM parts),
    'indexes', (SELECT json_object_agg(name, bytes) FROM idx),
    'rollups', (SELECT json_object_agg(c, pg_total_relation_size(c::regclass))
                FROM unnest(ARRAY['request_log_5min', 'request_log_hourly',
                                  'request_log_attacks_hourly']) AS c),
    'stats', (SELECT json_agg(row_to_json(stats)) FROM stats),
    'wal_lsn', pg_current_wal_lsn()::text,
    'checkpoints', (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
    'buffers_backend', (SELECT buffers_backend FROM pg_stat_bgwriter),
    'blks_read', (SELECT blks_read FROM pg_stat_database WHERE datname = current_database()),
    'shared_buffers', current_setting('shared_buffers'),
    'notify_queue', pg_notification_queue_usage()
)
"""


def lsn_bytes(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def wrk_minute(args: argparse.Namespace, seconds: int) -> dict:
    env = dict(os.environ, NSS_WRAPPER_HOSTS=args.hosts, LD_PRELOAD="libnss_wrapper.so")
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.conns}", f"-d{seconds}s", "--latency",
         args.url], check=False, env=env, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    result = {"rps": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": 0,
              "non2xx": 0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        result["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in", text):
        result["requests"] = int(m.group(1))
    for label, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        if m := re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE):
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            result[key] = float(m.group(1)) * scale
    for m in re.finditer(r"(?:connect|read|write|timeout) (\d+)", text):
        result["errors"] += int(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        result["non2xx"] = int(m.group(1))
    if out.returncode != 0 or not result["requests"] or result["errors"] or result["non2xx"]:
        result["output"] = (text + out.stderr)[-600:]
    return result


def _stat(pid: int) -> tuple[int, int]:
    """(own CPU ticks, CPU ticks of children it has waited for) of C{pid}."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_facts(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    own, _ = _stat(pid)
    # The cluster: every descendant of Veil, plus what exited ones used
    # (counted in their waiting parent's cutime).
    tree = _children()
    cluster = 0
    todo = list(tree.get(pid, ()))
    while todo:
        child = todo.pop()
        try:
            mine, waited = _stat(child)
        except OSError:
            continue
        cluster += mine + waited
        todo.extend(tree.get(child, ()))
    return {"rss_kib": rss, "veil_cpu_s": own / CLK_TCK, "cluster_cpu_s": cluster / CLK_TCK}


def system_facts() -> dict:
    """CPU 0's time by kind (seconds since boot), bytes written to disks, dirty memory."""
    cpu0 = next(line.split()[1:] for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("cpu0 "))
    user, nice, system, _idle, iowait, irq, softirq, steal = (int(v) / CLK_TCK for v in cpu0[:8])
    written = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        # Whole disks only (vda, sda, nvme0n1), not their partitions.
        if len(fields) > 9 and re.fullmatch(r"(?:[sv]d[a-z]+|nvme\d+n\d+|xvd[a-z]+)", fields[2]):
            written += int(fields[9]) * 512
    meminfo = Path("/proc/meminfo").read_text()
    dirty = int(re.search(r"^Dirty:\s+(\d+) kB", meminfo, re.MULTILINE).group(1))
    return {"cpu0_busy_s": user + nice + system + irq + softirq, "cpu0_iowait_s": iowait,
            "cpu0_steal_s": steal, "disk_written": written, "dirty_kib": dirty}


def metrics_facts(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError as e:
        return {"error": str(e)}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if base.startswith(("veil_proxy_requests_total", "veil_request_log_")):
            values[base] = values.get(base, 0.0) + float(value)
    written = values.get("veil_request_log_written_total", 0.0)
    settled = written + sum(values.get(f"veil_request_log_{k}_total", 0.0)
                            for k in ("spooled", "dropped", "rejected"))
    return {"requests": values.get("veil_proxy_requests_total", 0.0), "written": written,
            "backlog": values.get("veil_proxy_requests_total", 0.0) - settled,
            "batches": values.get("veil_request_log_batch_seconds_count"),
            "batch_seconds": values.get("veil_request_log_batch_seconds_sum")}


def db_facts(conninfo: str) -> dict:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        [facts] = conn.execute(_DB_FACTS).fetchone()
    stats = facts.pop("stats") or []
    last = lambda key: max((s[key] for s in stats if s[key]), default=None)
    facts["autovacuums"] = sum(s["autovacuum_count"] for s in stats)
    facts["autoanalyzes"] = sum(s["autoanalyze_count"] for s in stats)
    facts["autovacuums_log"] = sum(s["autovacuum_count"] for s in stats if s["partition"])
    facts["last_autovacuum"] = last("last_autovacuum")
    facts["last_autoanalyze"] = last("last_autoanalyze")
    facts["rollup_dead"] = sum(s["n_dead_tup"] for s in stats if not s["partition"])
    facts["rollup_upd"] = sum(s["n_tup_upd"] for s in stats if not s["partition"])
    facts["rollup_hot"] = sum(s["n_tup_hot_upd"] for s in stats if not s["partition"])
    return facts


def objects_facts(pid: int, path: Path, previous: int | None) -> dict | None:
    """Ask Veil (SIGUSR2, staying/sitecustomize.py) for its objects by type."""
    before = path.stat().st_mtime_ns if path.exists() else None
    os.kill(pid, signal.SIGUSR2)
    for _ in range(200):
        if path.exists() and path.stat().st_mtime_ns != before:
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        time.sleep(0.1)
    return None


def mib(n: float) -> str:
    return f"{n / 2 ** 20:.1f}"


def short_index(name: str) -> str:
    return name.removeprefix("request_log_").removesuffix("_idx").removesuffix("_pkey") or "pkey"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="Veil's process id")
    parser.add_argument("--data", required=True, help="Veil's data directory")
    parser.add_argument("--url", required=True, help="the S1 URL (https://www.bench.test:.../1k)")
    parser.add_argument("--hosts", required=True, help="NSS_WRAPPER_HOSTS file")
    parser.add_argument("--metrics", required=True, help="Veil's /metrics URL")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60, help="seconds per run (a 'minute')")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--objects", help="file Veil writes its object counts to on SIGUSR2")
    parser.add_argument("--json", help="write every minute's facts here")
    args = parser.parse_args()
    conninfo = conninfo_for(args.data)

    minutes: list[dict] = []
    start = db_facts(conninfo)
    start["process"] = process_facts(args.pid)
    start["metrics"] = metrics_facts(args.metrics)
    start["system"] = system_facts()
    previous = start
    header = ("min  req/s   p50ms  p99ms  sockerr non2xx  rows(k)  heapMiB  " + "  ".join(
        f"{short_index(n)[:9]:>9}" for n in sorted(start["indexes"] or {}))
        + "  rollKiB  rdead  av/aa  walMiB  ckpt  rssMiB  veilCPU  pgCPU  backlog  rows/b  batch_ms  us/row  req/cpu_s  cpu0:veil other iowait steal  diskMiB/s  dirtyMiB")
    print(f"shared_buffers {start['shared_buffers']}; index sizes in MiB; CPU seconds per minute",
          flush=True)
    print(header, flush=True)
    for number in range(1, args.minutes + 1):
        began = system_facts()
        began_proc = process_facts(args.pid)
        load = wrk_minute(args, args.seconds)
        metrics = metrics_facts(args.metrics)   # first, while the backlog is fresh
        proc = process_facts(args.pid)
        system = system_facts()
        # CPU 0 during the load run: what Veil and its cluster used, what
        # everything else on it used, and the time the hypervisor took.
        veil_tree = (proc["veil_cpu_s"] - began_proc["veil_cpu_s"]
                     + proc["cluster_cpu_s"] - began_proc["cluster_cpu_s"])
        cpu0 = {"veil_share": veil_tree / args.seconds,
                "other_share": max(0.0, system["cpu0_busy_s"] - began["cpu0_busy_s"]
                                   - veil_tree) / args.seconds,
                "iowait_share": (system["cpu0_iowait_s"] - began["cpu0_iowait_s"]) / args.seconds,
                "steal_share": (system["cpu0_steal_s"] - began["cpu0_steal_s"]) / args.seconds,
                "disk_mib_s": (system["disk_written"] - began["disk_written"]) / 2 ** 20
                / args.seconds, "dirty_kib": system["dirty_kib"]}
        facts = db_facts(conninfo)
        facts.update(minute=number, load=load, process=proc, metrics=metrics, cpu0=cpu0)
        if args.objects:
            facts["objects"] = objects_facts(args.pid, Path(args.objects), None)
        minutes.append(facts)
        m, pm = metrics, previous["metrics"]
        batch_ms = per_row = rows_per_batch = "-"
        if m.get("batches") is not None and pm.get("batches") is not None \
                and m["batches"] > pm["batches"]:
            batches, spent = m["batches"] - pm["batches"], m["batch_seconds"] - pm["batch_seconds"]
            rows = m["written"] - pm["written"]
            batch_ms = f"{1000 * spent / batches:.1f}"
            rows_per_batch = f"{rows / batches:.0f}"
            per_row = f"{1e6 * spent / rows:.1f}" if rows else "-"
        cpu = (proc["veil_cpu_s"] - previous["process"]["veil_cpu_s"]
               + proc["cluster_cpu_s"] - previous["process"]["cluster_cpu_s"])
        facts["requests_per_cpu_second"] = load["requests"] / cpu if cpu else 0.0
        print(f"{number:>3}  {load['rps']:>6.0f}  {load['p50_ms'] or 0:>5.2f}  "
              f"{load['p99_ms'] or 0:>5.1f}  {load['errors']:>7} {load['non2xx']:>6}  {facts['rows'] / 1000:>7.0f}  "
              f"{mib(facts['table_bytes']):>7}  "
              + "  ".join(f"{mib(facts['indexes'][n]):>9}" for n in sorted(facts["indexes"] or {}))
              + f"  {sum(facts['rollups'].values()) / 1024:>7.0f}  {facts['rollup_dead']:>5}"
              f"  {facts['autovacuums']:>2}/{facts['autoanalyzes']:<2}"
              f"  {mib(lsn_bytes(facts['wal_lsn']) - lsn_bytes(previous['wal_lsn'])):>6}"
              f"  {facts['checkpoints'] - previous['checkpoints']:>4}"
              f"  {proc['rss_kib'] / 1024:>6.1f}"
              f"  {proc['veil_cpu_s'] - previous['process']['veil_cpu_s']:>7.1f}"
              f"  {proc['cluster_cpu_s'] - previous['process']['cluster_cpu_s']:>5.1f}"
              f"  {m.get('backlog', 0):>7.0f}  {rows_per_batch:>6}  {batch_ms:>8}  {per_row:>6}"
              f"  {facts['requests_per_cpu_second']:>9.0f}"
              f"  {cpu0['veil_share']:>9.0%} {cpu0['other_share']:>5.0%} {cpu0['iowait_share']:>6.0%}"
              f" {cpu0['steal_share']:>5.0%}  {cpu0['disk_mib_s']:>9.1f}  {cpu0['dirty_kib'] / 1024:>8.0f}",
              flush=True)
        if "output" in load and number == 1:
            print(f"     wrk: {load['output']!r}", flush=True)
        if facts.get("objects"):
            growth = facts["objects"]["by_type"]
            before = (previous.get("objects") or {}).get("by_type", {})
            top = sorted(growth, key=lambda t: growth[t] - before.get(t, 0), reverse=True)[:5]
            print("     objects {total}: {top}".format(
                total=facts["objects"]["total"],
                top=", ".join(f"{t} {growth[t]} ({growth[t] - before.get(t, 0):+d})" for t in top)),
                flush=True)
        previous = facts
    last_av = minutes[-1]["last_autovacuum"]
    print(f"autovacuum runs {minutes[-1]['autovacuums']} (request_log partitions:"
          f" {minutes[-1]['autovacuums_log']}), last {last_av}; autoanalyze runs"
          f" {minutes[-1]['autoanalyzes']}, last {minutes[-1]['last_autoanalyze']};"
          f" rollup updates {minutes[-1]['rollup_upd']} ({minutes[-1]['rollup_hot']} HOT)")
    first, last = minutes[0]["load"]["rps"], minutes[-1]["load"]["rps"]
    ratio = last / first if first else 0.0
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    first_cpu = minutes[0]["requests_per_cpu_second"]
    if first_cpu:
        # On a shared machine the process gets less of its CPU from one minute
        # to the next; requests per CPU-second (Veil and its cluster) show
        # whether the work per request grew.
        print(f"requests per CPU-second (Veil and its cluster): last / first ="
              f" {minutes[-1]['requests_per_cpu_second'] / first_cpu:.3f}")
    print(f"verdict: last minute {last:.0f} req/s / first minute {first:.0f} req/s ="
          f" {ratio:.3f} (target >= {TARGET:.2f}): {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"start": start, "minutes": minutes,
                                               "ratio": ratio}, indent=1, default=str))
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
