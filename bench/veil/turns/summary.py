"""Summarise a C{profile.sh turns} recording: python3 summary.py FILE."""

from __future__ import annotations

import bisect
import sys


def main(path: str) -> None:
    turns, writes = [], []
    with open(path) as f:
        for line in f:
            kind, *fields = line.split()
            if kind == "turn":
                at, events, seconds, cpu = fields
                turns.append((float(at), int(events), float(seconds), float(cpu)))
            else:
                began, ended, rows = fields
                writes.append((float(began), float(ended), int(rows)))
    busy = sorted((t for t in turns if t[1] >= 5), key=lambda t: t[0])
    if not busy:
        sys.exit("no turns under load recorded")
    span = busy[-1][0] - busy[0][0]
    walls = sorted(t[2] for t in busy)

    def q(p: float) -> float:
        return walls[int(p * (len(walls) - 1))] * 1000

    slow = [t for t in busy if t[2] > 0.005]
    print(f"turns under load: {len(busy)} over {span:.1f} s; wall ms p50 {q(.5):.2f}"
          f" p90 {q(.9):.2f} p99 {q(.99):.2f} max {walls[-1] * 1000:.1f}")
    print(f"slow turns (> 5 ms): {len(slow)} ({100 * len(slow) / len(busy):.1f}%),"
          f" {100 * sum(t[2] for t in slow) / sum(t[2] for t in busy):.0f}% of the turns' time;"
          f" reactor thread on CPU for {100 * sum(t[3] for t in slow) / max(1e-9, sum(t[2] for t in slow)):.0f}%"
          " of their wall time")
    inside = [w for w in writes if busy[0][0] <= w[0] and w[1] <= busy[-1][0]]
    if inside:
        durations = sorted(w[1] - w[0] for w in inside)
        starts = [w[0] for w in inside]
        hit = 0
        for t in slow:
            i = bisect.bisect_right(starts, t[0]) - 1
            if i >= 0 and t[0] <= inside[i][1]:
                hit += 1
        covered = sum(durations) / span
        print(f"request-log writes: {len(inside)}, median {durations[len(durations) // 2] * 1000:.0f} ms"
              f" for {sorted(w[2] for w in inside)[len(inside) // 2]} rows, covering"
              f" {100 * covered:.0f}% of the time; slow turns inside them:"
              f" {100 * hit / max(1, len(slow)):.0f}%")


if __name__ == "__main__":
    main(sys.argv[1])
