import uuid

import pytest

from portal.errors import TooManyAttempts
from portal.throttle import LoginThrottle, MemoryStore, RedisStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def throttle(store_factory, clock, **limits):
    options = {"account_free": 3, "ip_free": 10, "base_seconds": 60, "max_seconds": 600}
    options.update(limits)
    return LoginThrottle(store_factory(clock), clock=clock, **options)


@pytest.fixture(params=["memory", "redis"])
def store_factory(request):
    if request.param == "memory":
        yield lambda clock: MemoryStore(clock)
        return
    import os

    import redis
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("Redis variant skipped: REDIS_URL is not set")
    client = redis.Redis.from_url(url)
    prefix = f"test:{uuid.uuid4().hex}:"
    yield lambda clock: RedisStore(client, prefix)
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)


def test_account_is_locked_after_the_free_failures(store_factory):
    clock = Clock()
    t = throttle(store_factory, clock)
    t.check("a@x.test", "10.0.0.1")
    assert t.record_failure("a@x.test", "10.0.0.1") is None
    assert t.record_failure("a@x.test", "10.0.0.1") is None
    lockout = t.record_failure("a@x.test", "10.0.0.1")
    assert lockout is not None and lockout.scope == "account" and lockout.seconds == 60
    with pytest.raises(TooManyAttempts) as caught:
        t.check("a@x.test", "10.0.0.2")  # another IP does not help
    assert caught.value.retry_after == 61
    assert "Try again in 2 minutes" in caught.value.message or "1 minute" in caught.value.message
    t.check("b@x.test", "10.0.0.2")  # other accounts are unaffected


def test_lockout_doubles_and_is_capped(store_factory):
    clock = Clock()
    t = throttle(store_factory, clock, max_seconds=200)
    lengths = []
    for _ in range(6):
        lockout = t.record_failure("a@x.test", "10.0.0.1")
        lengths.append(lockout.seconds if lockout else 0)
    assert lengths == [0, 0, 60, 120, 200, 200]


def test_lockout_expires_and_success_resets_the_count(store_factory):
    clock = Clock()
    t = throttle(store_factory, clock)
    for _ in range(3):
        t.record_failure("a@x.test", "10.0.0.1")
    clock.now += 61
    t.check("a@x.test", "10.0.0.1")
    t.record_success("a@x.test")
    assert t.record_failure("a@x.test", "10.0.0.1") is None  # counting starts afresh


def test_one_ip_guessing_many_accounts_is_locked(store_factory):
    clock = Clock()
    t = throttle(store_factory, clock, ip_free=4)
    for n in range(3):
        assert t.record_failure(f"user{n}@x.test", "10.9.9.9") is None
    lockout = t.record_failure("user9@x.test", "10.9.9.9")
    assert lockout.scope == "ip"
    with pytest.raises(TooManyAttempts):
        t.check("fresh@x.test", "10.9.9.9")
    t.check("fresh@x.test", "10.0.0.1")
