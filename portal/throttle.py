"""Failed-sign-in throttling per account and per client IP, with exponential lockout.

Counters live in process by default and in Redis when ``REDIS_URL`` is set, so every worker
sees the same lockouts. Request-rate limits (failed or not) are flask-limiter's job; this
module only counts failures, which is what makes guessing expensive.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from portal.errors import TooManyAttempts

# Failures are forgotten this long after the last failure plus the longest lockout, so a
# lockout that has run out still escalates if the guessing goes on.
FAILURE_MEMORY_SECONDS = 900


class ThrottleStore(Protocol):
    def get(self, key: str) -> tuple[int, float]: ...
    def add_failure(self, key: str, ttl: int) -> int: ...
    def lock(self, key: str, until: float, ttl: int) -> None: ...
    def reset(self, key: str) -> None: ...
    def add_member(self, key: str, member: str, ttl: int) -> tuple[bool, int]: ...
    def members(self, keys: list[str]) -> list[int]: ...


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._data: dict[str, list[float]] = {}  # key -> [count, locked_until, expires_at]
        self._sets: dict[str, tuple[set[str], float]] = {}  # key -> (members, expires_at)

    def _live(self, key: str) -> list[float] | None:
        entry = self._data.get(key)
        if entry and entry[2] <= self._clock():
            del self._data[key]
            return None
        return entry

    def get(self, key: str) -> tuple[int, float]:
        with self._lock:
            entry = self._live(key)
            return (int(entry[0]), entry[1]) if entry else (0, 0.0)

    def add_failure(self, key: str, ttl: int) -> int:
        with self._lock:
            entry = self._live(key) or [0, 0.0, 0.0]
            entry[0] += 1
            entry[2] = self._clock() + ttl
            self._data[key] = entry
            return int(entry[0])

    def lock(self, key: str, until: float, ttl: int) -> None:
        with self._lock:
            entry = self._live(key) or [0, 0.0, 0.0]
            entry[1] = until
            entry[2] = max(entry[2], self._clock() + ttl)
            self._data[key] = entry

    def reset(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def add_member(self, key: str, member: str, ttl: int) -> tuple[bool, int]:
        """Add ``member`` to the set at ``key``: whether it was new, and the set's size."""
        with self._lock:
            now = self._clock()
            entry = self._sets.get(key)
            if entry is None or entry[1] <= now:
                entry = self._sets[key] = (set(), now + ttl)
                if len(self._sets) > 10000:  # forget expired sets now and then
                    for stale in [k for k, (_, until) in self._sets.items() if until <= now]:
                        del self._sets[stale]
            added = member not in entry[0]
            entry[0].add(member)
            return added, len(entry[0])

    def members(self, keys: list[str]) -> list[int]:
        """The sizes of the sets at ``keys`` (0 for none or expired)."""
        with self._lock:
            now = self._clock()
            return [len(entry[0]) if entry and entry[1] > now else 0
                    for entry in (self._sets.get(key) for key in keys)]


class RedisStore:
    def __init__(self, client, prefix: str = "trellis:throttle:") -> None:
        self._redis = client
        self._prefix = prefix

    def get(self, key: str) -> tuple[int, float]:
        count, until = self._redis.hmget(self._prefix + key, "count", "until")
        return int(count or 0), float(until or 0.0)

    def add_failure(self, key: str, ttl: int) -> int:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(self._prefix + key, "count", 1)
        pipe.expire(self._prefix + key, ttl)
        count, _ = pipe.execute()
        return int(count)

    def lock(self, key: str, until: float, ttl: int) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._prefix + key, "until", repr(until))
        pipe.expire(self._prefix + key, ttl)
        pipe.execute()

    def reset(self, key: str) -> None:
        self._redis.delete(self._prefix + key)

    def add_member(self, key: str, member: str, ttl: int) -> tuple[bool, int]:
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(self._prefix + key, member)
        pipe.expire(self._prefix + key, ttl)
        pipe.scard(self._prefix + key)
        added, _, size = pipe.execute()
        return bool(added), int(size)

    def members(self, keys: list[str]) -> list[int]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.scard(self._prefix + key)
        return [int(size) for size in pipe.execute()]


@dataclass(frozen=True)
class Lockout:
    scope: str  # "account" or "ip"
    seconds: int


class LoginThrottle:
    def __init__(self, store: ThrottleStore, *, account_free: int, ip_free: int,
                 base_seconds: int, max_seconds: int, ip_accounts: int = 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ip_accounts = ip_accounts  # distinct failing accounts that flag an IP (risk.py)
        self.account_free = account_free
        self.ip_free = ip_free
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.clock = clock

    @staticmethod
    def account_key(email: str) -> str:
        return "acct:" + hashlib.sha256(email.encode()).hexdigest()[:40]

    @staticmethod
    def ip_key(ip: str) -> str:
        return "ip:" + ip

    def check(self, email: str, ip: str) -> None:
        """Raise ``TooManyAttempts`` while the account or the IP is locked."""
        now = self.clock()
        waits = [until - now for key in (self.account_key(email), self.ip_key(ip))
                 for _, until in [self.store.get(key)] if until > now]
        if waits:
            raise TooManyAttempts(int(max(waits)) + 1)

    def record_failure(self, email: str, ip: str) -> Lockout | None:
        """Count a failure; return the lockout it started, if any."""
        started = None
        for scope, key, free in (("account", self.account_key(email), self.account_free),
                                 ("ip", self.ip_key(ip), self.ip_free)):
            count = self.store.add_failure(key, FAILURE_MEMORY_SECONDS + self.max_seconds)
            if count >= free:
                seconds = min(self.max_seconds, self.base_seconds * 2 ** (count - free))
                self.store.lock(key, self.clock() + seconds,
                                FAILURE_MEMORY_SECONDS + seconds)
                if started is None or seconds > started.seconds:
                    started = Lockout(scope, seconds)
        return started

    def record_success(self, email: str) -> None:
        self.store.reset(self.account_key(email))
