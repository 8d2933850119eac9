"""Sampled decision log: a share of the decision API's decisions (and, if asked, every deny)
written to the audit trail as ``authz.decision`` events.

The request path only draws a random number and appends to a bounded in-memory queue; a
daemon thread writes the queue to the audit trail once a second, in one transaction and one
chain-head update per batch (``audit.record_many``). When the queue is full (the database is
slow or down), further entries are dropped and counted rather than slowing decisions down;
the count is logged and written with the next batch. Operators read the events with
``trellis policy decisions`` or ``trellis audit export``.
"""

from __future__ import annotations

import atexit
import json
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from portal import audit
from portal.db import Database
from portal.models import Organization

ACTION = "authz.decision"
CONTEXT = audit.Context(actor="trellis:decision-log")
MAX_QUEUE = 20_000
MAX_BATCH = 2_000
MAX_VALUE_CHARS = 2_000  # subject/object/context attributes larger than this are cut
log = logging.getLogger("trellis.policy")


class DecisionLog:
    def __init__(self, db: Database, sample: float = 0.0, denies: bool = False, *,
                 interval: float = 1.0, rng: Callable[[], float] = random.random) -> None:
        self.db, self.sample, self.denies = db, sample, denies
        self.interval, self.rng = interval, rng
        self.enabled = sample > 0 or denies
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    def wants(self, allowed: bool) -> bool:
        """Whether this decision is to be logged (cheap: on the hot path)."""
        return (self.denies and not allowed) or (self.sample > 0 and self.rng() < self.sample)

    def add(self, decision_id: str, subject: dict, org: str, obj: dict, action: str,
            context: dict, decision, caller: str) -> None:
        # Only references here (the caller does not change them afterwards); copying,
        # serializing and cutting happen on the writer thread.
        entry = {"decision_id": decision_id, "org": org, "subject": subject,
                 "object": obj, "action": action[:200], "context": context,
                 "allowed": decision.allowed,
                 "rule": list(decision.rule) if decision.rule else None,
                 "reason": decision.reason or None, "policy_version": decision.version,
                 "caller": caller}
        with self._lock:
            if len(self._queue) >= MAX_QUEUE:
                self.dropped += 1
                return
            self._queue.append(entry)
            if self._thread is None:
                self._start()

    def flush(self) -> int:
        """Write what is queued now; returns how many events were written."""
        written = 0
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                dropped, self.dropped = self.dropped, 0
            if not batch and not dropped:
                return written
            try:
                self._write(batch, dropped)
            except Exception as exc:  # the database is away: keep the entries for next time
                log.warning("cannot write %d sampled decisions to the audit trail: %s",
                            len(batch), exc)
                with self._lock:
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > MAX_QUEUE:
                        self._queue.pop()
                        dropped += 1
                    self.dropped += dropped
                return written
            written += len(batch)
            self.written += len(batch)

    def _write(self, batch: list[dict[str, Any]], dropped: int) -> None:
        for entry in batch:
            for key in ("subject", "object", "context"):
                entry[key] = _cut(entry[key])
        with self.db.transaction() as session:
            slugs = {entry["org"] for entry in batch}
            query = sa.select(Organization.slug, Organization.id).where(
                Organization.slug.in_(slugs))
            ids = {slug: org_id for slug, org_id in session.execute(query)}
            events = [{"action": ACTION, "target": f"user:{entry['subject'].get('id')}",
                       "organization_id": ids.get(entry["org"]),
                       "outcome": "success" if entry["allowed"] else "failure",
                       "reason": "" if entry["allowed"] else (entry["reason"] or "denied"),
                       "details": entry} for entry in batch]
            if dropped:
                log.warning("%d sampled decisions were dropped (queue full)", dropped)
                events.append({"action": "authz.decision_log.dropped",
                               "details": {"dropped": dropped}})
            audit.record_many(session, CONTEXT, events)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let the writer die
                log.exception("decision log writer failed")


def _cut(values: dict) -> dict:
    """Attributes as given, unless their JSON is too large to keep whole."""
    text = json.dumps(values, default=str, sort_keys=True)
    if len(text) <= MAX_VALUE_CHARS:
        return json.loads(text)
    return {"id": values.get("id"), "type": values.get("type"),
            "truncated": text[:MAX_VALUE_CHARS]}
