import threading
import time

from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from portal.ratelimit import LazyMemoryStorage


def test_limits_without_starting_threads():
    storage = storage_from_string("trellis-memory://")
    assert isinstance(storage, LazyMemoryStorage)
    limiter = FixedWindowRateLimiter(storage)
    rate = parse("3/second")
    threads_before = threading.active_count()
    assert [limiter.hit(rate, "ip", "10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert limiter.hit(rate, "ip", "10.0.0.2")  # other keys are independent
    assert threading.active_count() == threads_before
    time.sleep(1.05)
    assert limiter.hit(rate, "ip", "10.0.0.1")  # the window expired


def test_idle_counters_are_swept():
    storage = LazyMemoryStorage()
    for n in range(LazyMemoryStorage.SWEEP_EVERY - 1):
        storage.incr(f"k{n}", expiry=0.001)
    time.sleep(0.01)
    storage.incr("trigger", expiry=60)
    assert set(storage.storage) == {"trigger"}
