"""Failed-sign-in throttling per account and per client IP, with exponential lockout, and a
platform-wide throttle against distributed credential stuffing.

Counters live in process by default and in Redis when ``REDIS_URL`` is set, so every worker
sees the same lockouts. Request-rate limits (failed or not) are flask-limiter's job; this
module only counts failures, which is what makes guessing expensive.

The global throttle: every failure also counts in a platform-wide fixed window. When a window
holds ``global_failures`` or more, an *episode* starts and lasts until ``global_window``
seconds after the last over-the-limit attempt. During an episode only known-good clients may
try credentials: their network (/24 for IPv4, /56 for IPv6) had a successful sign-in within
``known_good_days`` and their IP has fewer than ``KNOWN_GOOD_MAX_FAILURES`` failures on
record. Everyone else gets ``TooManyAttempts`` with the time left, and the refusal counts in
the window too, so the episode holds while the attack goes on rather than flapping. An
attacker can therefore slow down new networks, never lock out people who signed in before.

Cost on the success path: ``check`` reads the account, IP, network and episode state in one
store round trip; ``record_success`` clears the account and marks the network in one more
(the per-account reset it replaces was one already).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from portal.errors import TooManyAttempts, describe_wait

# Failures are forgotten this long after the last failure plus the longest lockout, so a
# lockout that has run out still escalates if the guessing goes on.
FAILURE_MEMORY_SECONDS = 900
# An IP with this many failures on record is not known-good (one or two typos are forgiven).
KNOWN_GOOD_MAX_FAILURES = 3
EPISODE_KEY = "global:episode"

log = logging.getLogger(__name__)


class ThrottleStore(Protocol):
    def get(self, key: str) -> tuple[int, float]: ...
    def add_failure(self, key: str, ttl: int) -> int: ...
    def lock(self, key: str, until: float, ttl: int) -> None: ...
    def reset(self, key: str) -> None: ...
    def add_member(self, key: str, member: str, ttl: int) -> tuple[bool, int]: ...
    def members(self, keys: list[str]) -> list[int]: ...
    def read(self, keys: list[str]) -> list[tuple[int, float]]: ...
    def succeeded(self, reset_key: str, mark_key: str, mark_ttl: int) -> None: ...
    def engage(self, key: str, started: float, until: float, ttl: int) -> bool: ...
    def disengage(self, key: str, until: float) -> bool: ...
    def scan(self, prefixes: tuple[str, ...], limit: int) -> list[tuple[str, int, float]]: ...


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


    def read(self, keys: list[str]) -> list[tuple[int, float]]:
        """``get`` for several keys at once (one round trip in Redis)."""
        with self._lock:
            return [(int(entry[0]), entry[1]) if entry else (0, 0.0)
                    for entry in (self._live(key) for key in keys)]

    def succeeded(self, reset_key: str, mark_key: str, mark_ttl: int) -> None:
        """Clear ``reset_key`` and mark ``mark_key`` (count 1) for ``mark_ttl`` seconds."""
        with self._lock:
            self._data.pop(reset_key, None)
            self._data[mark_key] = [1, 0.0, self._clock() + mark_ttl]

    def engage(self, key: str, started: float, until: float, ttl: int) -> bool:
        """Extend the episode at ``key`` to ``until``; True when this call started it. The
        start time is kept in the count field."""
        with self._lock:
            entry = self._live(key)
            new = entry is None or not entry[0]
            if new:
                entry = [int(started), 0.0, 0.0]
            entry[1] = max(entry[1], until)
            entry[2] = self._clock() + ttl
            self._data[key] = entry
            return new

    def disengage(self, key: str, until: float) -> bool:
        """End the episode at ``key`` if it still ends at ``until``; True for the one caller
        that ended it (so the end is audited once)."""
        with self._lock:
            entry = self._live(key)
            if entry is None or not entry[0] or entry[1] > until:
                return False
            del self._data[key]
            return True

    def scan(self, prefixes: tuple[str, ...], limit: int) -> list[tuple[str, int, float]]:
        """Up to ``limit`` live keys starting with one of ``prefixes`` that carry a lock
        time, with their count and lock end (for the operator's list of locks)."""
        with self._lock:
            now = self._clock()
            found = [(key, int(entry[0]), entry[1]) for key, entry in self._data.items()
                     if entry[2] > now and entry[1] and key.startswith(prefixes)]
            return found[:limit]


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

    def read(self, keys: list[str]) -> list[tuple[int, float]]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self._prefix + key, "count", "until")
        return [(int(count or 0), float(until or 0.0)) for count, until in pipe.execute()]

    def succeeded(self, reset_key: str, mark_key: str, mark_ttl: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._prefix + reset_key)
        pipe.hset(self._prefix + mark_key, "count", 1)
        pipe.expire(self._prefix + mark_key, mark_ttl)
        pipe.execute()

    def engage(self, key: str, started: float, until: float, ttl: int) -> bool:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(self._prefix + key, "count", int(started))
        pipe.hget(self._prefix + key, "until")
        pipe.expire(self._prefix + key, ttl)
        new, current, _ = pipe.execute()
        if current is None or float(current) < until:
            self._redis.hset(self._prefix + key, "until", repr(until))
        return bool(new)

    def disengage(self, key: str, until: float) -> bool:
        full = self._prefix + key
        with self._redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(full)
                current = pipe.hget(full, "until")
                if current is None or float(current) > until:
                    return False
                pipe.multi()
                pipe.delete(full)
                return bool(pipe.execute()[0])
            except Exception as exc:  # WatchError: someone extended or ended it meanwhile
                if type(exc).__name__ == "WatchError":
                    return False
                raise

    def scan(self, prefixes: tuple[str, ...], limit: int) -> list[tuple[str, int, float]]:
        """SCAN (never KEYS: it does not block the server) for the prefixed keys, then read
        them in pipelined batches; keys without a lock time are left out."""
        found: list[tuple[str, int, float]] = []
        for prefix in prefixes:
            pattern = _glob_escape(self._prefix + prefix) + "*"
            batch: list[str] = []
            for raw in self._redis.scan_iter(match=pattern, count=1000):
                batch.append(raw.decode() if isinstance(raw, bytes) else raw)
                if len(batch) >= 500:
                    found += self._locked(batch)
                    batch = []
                if len(found) >= limit:
                    return found[:limit]
            found += self._locked(batch)
        return found[:limit]

    def _locked(self, full_keys: list[str]) -> list[tuple[str, int, float]]:
        if not full_keys:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for full in full_keys:
            pipe.hmget(full, "count", "until")
        return [(full[len(self._prefix):], int(count or 0), float(until))
                for full, (count, until) in zip(full_keys, pipe.execute(), strict=True)
                if until]


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


@dataclass(frozen=True)
class Lockout:
    scope: str  # "account" or "ip"
    seconds: int


@dataclass(frozen=True)
class Lock:
    """A lock on one account key or one IP, as operators see it."""

    scope: str  # "account" or "ip"
    key: str  # the store key: "acct:<digest>" or "ip:<address>"
    until: float
    failures: int

    @property
    def ip(self) -> str:
        return self.key[3:] if self.scope == "ip" else ""


@dataclass(frozen=True)
class Episode:
    """The global throttle's state as operators see it."""

    engaged: bool
    started: float = 0.0
    until: float = 0.0
    window_failures: int = 0


@functools.lru_cache(maxsize=4096)  # parsing addresses is most of the in-process cost
def network_of(ip: str) -> str:
    """The network a successful sign-in vouches for: /24 for IPv4, /56 for IPv6 (a home or
    office line), the text itself when it is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    prefix = 24 if address.version == 4 else 56
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


GLOBAL_MESSAGE = ("Sign-in is temporarily limited for networks not seen before, because of "
                  "an attack on the sign-in page. Try again in {wait}, or from a network "
                  "where you signed in before.")


class LoginThrottle:
    def __init__(self, store: ThrottleStore, *, account_free: int, ip_free: int,
                 base_seconds: int, max_seconds: int, ip_accounts: int = 20,
                 global_failures: int = 0, global_window: int = 300,
                 known_good_days: int = 30,
                 on_episode: Callable[[str, Episode], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ip_accounts = ip_accounts  # distinct failing accounts that flag an IP (risk.py)
        self.account_free = account_free
        self.ip_free = ip_free
        self.base_seconds = base_seconds
        self.max_seconds = max_seconds
        self.global_failures = global_failures  # 0: no global throttle
        self.global_window = global_window
        self.known_good_seconds = known_good_days * 86400
        self.on_episode = on_episode  # called with "engaged"/"lifted" once per episode
        self.clock = clock

    @staticmethod
    def account_key(email: str) -> str:
        return "acct:" + hashlib.sha256(email.encode()).hexdigest()[:40]

    @staticmethod
    def ip_key(ip: str) -> str:
        return "ip:" + ip

    @staticmethod
    def good_key(ip: str) -> str:
        return "good:" + network_of(ip)

    def _window_key(self, now: float) -> str:
        return f"global:w:{int(now // self.global_window)}"

    def check(self, email: str, ip: str) -> None:
        """Raise ``TooManyAttempts`` while the account or the IP is locked, or while the
        global throttle is engaged and the client is not known-good. One store round trip."""
        now = self.clock()
        keys = [self.account_key(email), self.ip_key(ip)]
        if self.global_failures:
            keys += [self.good_key(ip), EPISODE_KEY]
        state = self.store.read(keys)
        waits = [until - now for _, until in state[:2] if until > now]
        if waits:
            raise TooManyAttempts(int(max(waits)) + 1)
        if self.global_failures:
            self._global_gate(now, ip_failures=state[1][0], known=state[2][0] > 0,
                              episode=state[3])

    def check_global(self, ip: str) -> None:
        """The global throttle alone, for credential endpoints without an account key
        (a password reset request)."""
        if not self.global_failures:
            return
        now = self.clock()
        ip_state, good, episode = self.store.read([self.ip_key(ip), self.good_key(ip),
                                                   EPISODE_KEY])
        self._global_gate(now, ip_failures=ip_state[0], known=good[0] > 0, episode=episode)

    def _global_gate(self, now: float, *, ip_failures: int, known: bool,
                     episode: tuple[int, float]) -> None:
        started, until = episode
        if not started:
            return
        if until <= now:
            if self.store.disengage(EPISODE_KEY, until):
                self._announce("lifted", Episode(False, float(started), until))
            return
        if known and ip_failures < KNOWN_GOOD_MAX_FAILURES:
            return
        self._count_global(now)  # a refused attempt keeps the episode going
        wait = int(until - now) + 1
        raise TooManyAttempts(wait, GLOBAL_MESSAGE.format(wait=describe_wait(wait)))

    def _count_global(self, now: float) -> None:
        count = self.store.add_failure(self._window_key(now), 2 * self.global_window)
        if count >= self.global_failures:
            ttl = 2 * self.global_window + self.max_seconds
            if self.store.engage(EPISODE_KEY, now, now + self.global_window, ttl):
                self._announce("engaged", Episode(True, now, now + self.global_window, count))

    def _announce(self, what: str, episode: Episode) -> None:
        if self.on_episode is None:
            return
        try:
            self.on_episode(what, episode)
        except Exception:  # the audit trail being down must not break a sign-in
            log.exception("could not record that the global sign-in throttle %s", what)

    def episode(self) -> Episode:
        """The global throttle's state now (and the end of an episode that ran out)."""
        now = self.clock()
        (started, until), (count, _) = self.store.read([EPISODE_KEY, self._window_key(now)])
        if started and until <= now:
            if self.store.disengage(EPISODE_KEY, until):
                self._announce("lifted", Episode(False, float(started), until))
            return Episode(False, window_failures=count)
        return Episode(bool(started), float(started), until, count)

    def locks(self, limit: int = 1000) -> list[Lock]:
        """The accounts and IPs locked now, the longest-lasting first. Account keys are
        digests (the store never holds the email); ``services.signin_protection`` names
        them from the audit trail."""
        now = self.clock()
        found = [Lock("account" if key.startswith("acct:") else "ip", key, until, count)
                 for key, count, until in self.store.scan(("acct:", "ip:"), limit)
                 if until > now]
        return sorted(found, key=lambda lock: (-lock.until, lock.key))

    def lock_of(self, key: str) -> Lock | None:
        """The lock on one account or IP key now, or None (not locked, or not such a key)."""
        if not key.startswith(("acct:", "ip:")):
            return None
        count, until = self.store.get(key)
        if until <= self.clock():
            return None
        return Lock("account" if key.startswith("acct:") else "ip", key, until, count)

    def unlock(self, key: str) -> Lock | None:
        """Lift the lock on one account or IP key and forget its failures, so that the next
        failure starts counting afresh (as after a successful sign-in). Returns the lock
        that was lifted, or None when the key was not locked (nothing is changed then)."""
        lock = self.lock_of(key)
        if lock is not None:
            self.store.reset(key)
        return lock

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
        if self.global_failures:
            self._count_global(self.clock())
        return started

    def record_success(self, email: str, ip: str = "") -> None:
        """Clear the account's failures and, with the client's IP, remember its network as
        known-good for the global throttle (one store round trip)."""
        if ip and self.global_failures:
            self.store.succeeded(self.account_key(email), self.good_key(ip),
                                 self.known_good_seconds)
        else:
            self.store.reset(self.account_key(email))
