"""
Live Python objects by type, on demand, for C{bench/veil/staying.sh --objects}:
put this directory on C{PYTHONPATH} and set C{STAYING_OBJECTS_OUT}; each
C{SIGUSR2} then writes, on the main (reactor) thread, the number of objects the
cyclic collector tracks (containers: dicts, lists, instances...; not those
frozen at start-up) in all and by type, as JSON, to that file.  A diagnostic:
counting takes the reactor for a moment, so ask between load runs.
"""

from __future__ import annotations

import os

_OUT = os.environ.get("STAYING_OBJECTS_OUT")


def _install(out: str) -> None:
    import gc
    import json
    import signal
    from collections import Counter

    def dump(signum: int, frame: object) -> None:
        counts = Counter(type(o).__qualname__ for o in gc.get_objects())
        body = {"total": sum(counts.values()), "by_type": dict(counts.most_common(60)),
                "gc_counts": gc.get_count(), "frozen": gc.get_freeze_count()}
        temporary = out + ".tmp"
        with open(temporary, "w") as f:
            json.dump(body, f)
        os.replace(temporary, out)

    signal.signal(signal.SIGUSR2, dump)


if _OUT:
    _install(_OUT)
