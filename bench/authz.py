"""Authorization decisions in process: the per-organization cached engine against one plain
Casbin enforcer holding every organization's rules (the baseline), on generated data.

Measures warm decision latency (p50/p99), the cold load of one organization's enforcer, and
the baseline's latency on the same requests. Grants come from memory here (the database
load is part of the cold-load figure only through the callables); the HTTP figures and the
PostgreSQL-backed load of the issue's full benchmark are not measured yet.

    .venv/bin/python bench/authz.py [--quick]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import casbin
from common import parse_args, percentile

from policies import Attrs, PolicyEngine, Sources
from policies.engine import MODEL, _LinesAdapter

POLICIES = Path(__file__).resolve().parent.parent / "policies"
GOALS = {"warm_p99_us": 200, "cold_load_ms": 20}
ROLES = ["member", "buyer", "user_manager", "auditor", "sso_manager", "org_owner"]


def generate(orgs: int, users: int, rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    grants = {}
    for n in range(orgs):
        grants[f"org{n}"] = [(f"u{n}-{u}", rng.choice(ROLES)) for u in range(users)]
    return grants


def requests_for(grants, count: int, rng: random.Random) -> list[tuple]:
    orgs = list(grants)
    out = []
    for _ in range(count):
        org = rng.choice(orgs)
        user, _ = rng.choice(grants[org])
        obj = rng.choice([{"type": "member"}, {"type": "purchase_order", "owner_org": org,
                                               "amount": rng.randint(1, 90000)}])
        action = rng.choice(["read", "manage", "approve"])
        out.append(({"id": user}, org, obj, action, {"assurance": rng.choice([1, 2])}))
    return out


def timed(fn, items) -> list[float]:
    samples = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        samples.append(time.perf_counter() - start)
    return samples



def main() -> int:
    args = parse_args(__doc__)
    orgs, users, count = (300, 20, 2000) if args.quick else (10000, 100, 20000)
    rng = random.Random(7)
    grants = generate(orgs, users, rng)
    engine = PolicyEngine(POLICIES, Sources(grants=lambda org: grants.get(org, []),
                                            platform_roles=list,
                                            org_kind=lambda org: "partner"),
                          cache_size=orgs)
    requests = requests_for(grants, count, rng)

    cold_orgs = rng.sample(list(grants), min(200, orgs))
    cold = []
    for org in cold_orgs:
        start = time.perf_counter()
        engine.decide({"id": "nobody"}, org, {"type": "member"}, "read")
        cold.append(time.perf_counter() - start)
    for item in requests:  # warm every organization used
        engine.decide(*item)
    warm = timed(lambda item: engine.decide(*item), requests)

    # Baseline: one plain enforcer with every organization's rules (sampled requests only:
    # each decision scans every rule).
    lines = []
    for org in grants:
        lines += engine.files.lines_for(org, "partner")
        lines += [["g", user, role, org] for user, role in grants[org]]
    start = time.perf_counter()
    plain = casbin.Enforcer(str(MODEL), _LinesAdapter(lines))
    plain_load = time.perf_counter() - start
    sample = requests[: (5 if args.quick else 3)]  # each baseline decision scans everything
    answers: list[bool] = []
    baseline = timed(lambda item: answers.append(plain.enforce(
        Attrs(item[0]), item[1], Attrs(item[2]), item[3], Attrs(item[4]))), sample)
    agree = answers == [engine.decide(*item).allowed for item in sample]

    w50, w99 = statistics.median(warm) * 1e6, percentile(warm, 0.99) * 1e6
    c50, c99 = statistics.median(cold) * 1e3, percentile(cold, 0.99) * 1e3
    b50 = statistics.median(baseline) * 1e6
    print(f"{orgs} organizations x {users} users ({orgs * users} grants), {count} requests")
    print(f"{'measure':<46}{'p50':>12}{'p99':>12}{'vs engine':>12}")
    print(f"{'engine, warm decision':<46}{w50:>10.0f}us{w99:>10.0f}us{1.0:>12.1f}")
    print(f"{'engine, cold load of one organization':<46}{c50:>10.2f}ms{c99:>10.2f}ms")
    print(f"{'plain Enforcer with everything (baseline)':<46}{b50:>10.0f}us{'':>12}"
          f"{b50 / w50:>12.0f}")
    print(f"{'plain Enforcer load':<46}{plain_load:>10.1f}s")
    print(f"same decisions on the sampled requests: {agree}")
    figures = {"warm_p50_us": round(w50), "warm_p99_us": round(w99),
               "cold_load_p50_ms": round(c50, 2), "cold_load_p99_ms": round(c99, 2),
               "baseline_p50_us": round(b50), "baseline_ratio": round(b50 / w50),
               "organizations": orgs, "grants": orgs * users, "same_decisions": agree,
               "quick": args.quick}
    goals_met = w99 <= GOALS["warm_p99_us"] and c99 <= GOALS["cold_load_ms"] and agree
    print(json.dumps({"benchmark": "authz", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
