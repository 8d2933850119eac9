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


# -- the global throttle ----------------------------------------------------------------

class Episodes:
    """Collects what the throttle announces (the app writes these to the audit trail)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, float]] = []

    def __call__(self, what, episode) -> None:
        self.seen.append((what, episode.started, episode.until))

    def kinds(self) -> list[str]:
        return [what for what, _, _ in self.seen]


def global_throttle(store_factory, clock, **limits):
    episodes = Episodes()
    options = {"global_failures": 50, "global_window": 60, "on_episode": episodes}
    options.update(limits)
    return throttle(store_factory, clock, **options), episodes


def stuff(t, clock, ips: int = 30, accounts: int = 4) -> list[int]:
    """Many IPs times many accounts, each failing once; returns the refusals' Retry-After."""
    refused = []
    for i in range(ips):
        for j in range(accounts):
            email, ip = f"victim{i}-{j}@x.test", f"198.51.{i}.{j + 1}"
            try:
                t.check(email, ip)
            except TooManyAttempts as exc:
                refused.append(exc.retry_after)
                continue
            t.record_failure(email, ip)
    return refused


def test_distributed_stuffing_engages_the_global_throttle_once(store_factory):
    clock = Clock()
    t, episodes = global_throttle(store_factory, clock)
    t.check("regular@x.test", "192.0.2.10")
    t.record_success("regular@x.test", "192.0.2.10")  # signed in before: known-good network
    refused = stuff(t, clock)  # 120 attempts from 120 IPs: no IP or account is locked
    assert len(refused) == 120 - 50  # the first 50 failures were checked, the rest refused
    assert set(refused) <= {60, 61}
    assert episodes.kinds() == ["engaged"]  # once per episode, not per request
    # A new client is refused with the reason and the wait.
    with pytest.raises(TooManyAttempts) as caught:
        t.check("newcomer@x.test", "203.0.113.5")
    assert caught.value.headers["Retry-After"] == str(caught.value.retry_after)
    assert "networks not seen before" in caught.value.message
    # The person with a clean record signs in, from the same address or the same /24.
    t.check("regular@x.test", "192.0.2.10")
    t.check("regular@x.test", "192.0.2.77")
    t.check_global("192.0.2.77")  # a reset request too
    with pytest.raises(TooManyAttempts):
        t.check_global("203.0.113.5")
    assert t.episode().engaged


def test_the_global_throttle_lifts_after_the_window_and_is_audited_once(store_factory):
    clock = Clock()
    t, episodes = global_throttle(store_factory, clock)
    stuff(t, clock)
    assert episodes.kinds() == ["engaged"]
    clock.now += 30  # the attack goes on: refusals keep the episode going
    stuff(t, clock, ips=2, accounts=30)
    engaged = t.episode()
    assert engaged.engaged and engaged.until == clock.now + 60
    clock.now += 61  # and then stops
    t.check("newcomer@x.test", "203.0.113.5")  # lifted: new clients may try again
    t.check("other@x.test", "203.0.113.6")
    assert not t.episode().engaged
    assert episodes.kinds() == ["engaged", "lifted"]
    assert episodes.seen[1][2] == engaged.until


def test_a_known_good_network_with_repeated_failures_is_not_exempt(store_factory):
    clock = Clock()
    t, _ = global_throttle(store_factory, clock)
    t.record_success("regular@x.test", "192.0.2.10")
    for _ in range(3):  # someone on that network guessing
        t.record_failure("someone@x.test", "192.0.2.10")
    stuff(t, clock)
    with pytest.raises(TooManyAttempts):
        t.check("regular@x.test", "192.0.2.10")
    t.check("regular@x.test", "192.0.2.11")  # a neighbour with a clean record still passes


def test_below_the_rate_or_switched_off_nothing_changes(store_factory):
    clock = Clock()
    t, episodes = global_throttle(store_factory, clock, global_failures=500)
    assert stuff(t, clock) == []
    off, off_episodes = global_throttle(store_factory, clock, global_failures=0)
    assert stuff(off, clock) == [] and not off.episode().engaged
    assert episodes.kinds() == off_episodes.kinds() == []


def test_an_audit_failure_does_not_break_sign_in(store_factory):
    clock = Clock()

    def broken(what, episode):
        raise RuntimeError("audit trail down")
    t, _ = global_throttle(store_factory, clock, on_episode=broken)
    assert len(stuff(t, clock)) == 70


def test_locks_lists_what_is_locked_now_and_unlock_lifts_one(store_factory):
    clock = Clock()
    t = throttle(store_factory, clock, ip_free=4)
    for _ in range(4):
        t.record_failure("a@x.test", "10.0.0.1")  # account locked at 3, the IP at 4
    t.record_failure("b@x.test", "10.0.0.2")  # failures, no lock
    locks = t.locks()
    assert [(lock.scope, lock.failures) for lock in locks] == [("account", 4), ("ip", 4)]
    assert locks[0].key == t.account_key("a@x.test") and locks[1].ip == "10.0.0.1"
    assert locks[0].until == clock.now + 120 and locks[1].until == clock.now + 60

    assert t.unlock("global:episode") is None and t.unlock(t.ip_key("10.0.0.2")) is None
    lifted = t.unlock(t.account_key("a@x.test"))
    assert lifted is not None and lifted.failures == 4
    assert t.unlock(t.account_key("a@x.test")) is None  # once
    assert [lock.scope for lock in t.locks()] == ["ip"]
    t.check("a@x.test", "10.0.0.3")  # in again, and the failures start afresh
    assert t.record_failure("a@x.test", "10.0.0.3") is None

    clock.now += 61  # the IP's lock ran out: no longer listed, nothing to lift
    assert t.locks() == [] and t.unlock(t.ip_key("10.0.0.1")) is None


def test_redis_scan_takes_the_prefix_literally():
    import os

    import redis
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("Redis variant skipped: REDIS_URL is not set")
    client = redis.Redis.from_url(url)
    tag = uuid.uuid4().hex
    clock = Clock()
    mine = LoginThrottle(RedisStore(client, f"test:[{tag}]*:"), clock=clock, account_free=1,
                         ip_free=1, base_seconds=60, max_seconds=600)
    other = LoginThrottle(RedisStore(client, f"test:{tag[0]}{tag}x:"), clock=clock,
                          account_free=1, ip_free=1, base_seconds=60, max_seconds=600)
    try:
        mine.record_failure("a@x.test", "10.0.0.1")
        other.record_failure("b@x.test", "10.0.0.2")
        assert {lock.key for lock in mine.locks()} == {mine.account_key("a@x.test"),
                                                       "ip:10.0.0.1"}
    finally:
        for key in client.scan_iter(f"test:*{tag}*"):
            client.delete(key)
