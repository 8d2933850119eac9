"""The global sign-in throttle: what it adds to every sign-in.

- success path (``check`` then ``record_success``, what every sign-in does) with the global
  throttle on, against the same throttle with it off (per-account and per-IP lockouts
  only): CPU per sign-in (``time.process_time``) and wall time, and the store calls made
  (each is one round trip in Redis: the calls are pipelined);
- failure path (``check`` then ``record_failure``) likewise;
- in process, and in Redis when ``REDIS_URL`` is set (keys under a throwaway prefix).

The machine is shared: read the load average printed next to the figures.

    .venv/bin/python bench/throttle.py [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import parse_args

from portal.throttle import LoginThrottle, MemoryStore, RedisStore

GOALS = {"success_round_trips_max": 2, "memory_added_cpu_us_max": 20,
         "redis_added_cpu_us_max": 100}


class Counting:
    """A store that counts the calls made to it (one Redis round trip each)."""

    def __init__(self, store) -> None:
        self.store, self.calls = store, 0

    def __getattr__(self, name):
        method = getattr(self.store, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return method(*args, **kwargs)
        return counted


def run(store, global_on: bool, n: int, fail: bool) -> tuple[float, float, float]:
    """CPU us, wall us and store calls per sign-in."""
    counting = Counting(store)
    t = LoginThrottle(counting, account_free=10 ** 6, ip_free=10 ** 6, base_seconds=60,
                      max_seconds=3600, global_failures=10 ** 9 if global_on else 0)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        email, ip = f"user{i % 500}@bench.test", f"192.0.{i % 7}.{i % 250}"
        t.check(email, ip)
        if fail:
            t.record_failure(email, ip)
        else:
            t.record_success(email, ip)
    return ((time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6,
            counting.calls / n)


def main() -> None:
    args = parse_args(__doc__)
    n = 2000 if args.quick else 20000
    stores = [("memory", lambda: MemoryStore(), None)]
    url = os.environ.get("REDIS_URL")
    client = None
    if url:
        import redis
        client = redis.Redis.from_url(url)
        prefix = f"bench:{uuid.uuid4().hex}:"
        stores.append(("redis", lambda: RedisStore(client, prefix), prefix))
    load_before = os.getloadavg()[0]
    rows, figures = [], {}
    for name, make, _ in stores:
        for path in ("success", "failure"):
            off = run(make(), False, n, path == "failure")
            on = run(make(), True, n, path == "failure")
            rows.append((f"{name} {path}", on, off))
            figures[f"{name}_{path}_cpu_us"] = round(on[0], 2)
            figures[f"{name}_{path}_baseline_cpu_us"] = round(off[0], 2)
            figures[f"{name}_{path}_wall_us"] = round(on[1], 2)
            figures[f"{name}_{path}_round_trips"] = round(on[2], 2)
    for _, _, prefix in stores:
        if prefix:
            for key in client.scan_iter(prefix + "*"):
                client.delete(key)
    load = max(load_before, os.getloadavg()[0])
    print(f"{n} sign-ins per row, load average {load:.2f}")
    print(f"{'path':18} {'global on (CPU / wall / calls)':34} {'global off':30} CPU ratio")
    for label, on, off in rows:
        print(f"{label:18} {on[0]:7.1f} us / {on[1]:7.1f} us / {on[2]:.1f}       "
              f"{off[0]:7.1f} us / {off[1]:7.1f} us / {off[2]:.1f}   "
              f"x{on[0] / max(off[0], 0.001):.2f}")
    figures["load_average"] = round(load, 2)
    met = (figures["memory_success_round_trips"] <= GOALS["success_round_trips_max"]
           and figures["memory_success_cpu_us"] - figures["memory_success_baseline_cpu_us"]
           <= GOALS["memory_added_cpu_us_max"])
    if url:
        met = met and (figures["redis_success_cpu_us"] - figures["redis_success_baseline_cpu_us"]
                       <= GOALS["redis_added_cpu_us_max"])
    print(json.dumps({"figures": figures, "goals": GOALS, "goals_met": met}))


if __name__ == "__main__":
    main()
