"""Cross-worker invalidation over Redis pub/sub.

Every engine given a Redis URL publishes ``<sender> <org>`` on one channel when something
invalidates an organization (``*`` for all of them), and listens on a daemon thread for the
messages of the other workers. Redis is the fast path only: the engines' database version
check still catches every grant change when Redis is down or a message is lost, and after a
lost connection a listener drops every cached organization once it is back, since it may have
missed messages meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

CHANNEL = "trellis:policy:invalidate"
ALL = "*"
POLL_SECONDS = 0.05
log = logging.getLogger("trellis.policy")


class RedisInvalidation:
    """Publish this worker's invalidations; call ``on_invalidate`` for everyone else's.

    ``on_invalidate(None)`` means "every organization". Call ``close()`` to stop listening.
    """

    def __init__(self, url: str, on_invalidate: Callable[[str | None], None], *,
                 channel: str = CHANNEL, retry_seconds: float = 1.0) -> None:
        import redis  # only engines that are given a Redis URL need it

        self._redis = redis
        self.channel = channel
        self.sender = uuid.uuid4().hex
        self.retry_seconds = retry_seconds
        self.on_invalidate = on_invalidate
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.listener = redis.Redis.from_url(url, socket_connect_timeout=2,
                                             health_check_interval=10,
                                             client_name=f"trellis-policy-{self.sender[:12]}")
        self.received = 0  # messages from other workers acted upon
        # After a failed publish, further ones are skipped for this long, so that a Redis
        # outage costs one connection timeout, not one per change.
        self.pause_seconds = 5.0
        self._failed_at: float | None = None
        self.connected = threading.Event()  # set while subscribed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="policy-invalidation",
                                        daemon=True)
        self._thread.start()

    def publish(self, org: str | None) -> bool:
        """Tell the other workers; False (and a log line) when Redis cannot be reached —
        they then see the change through their version check instead."""
        failed_at = self._failed_at
        if failed_at is not None and time.monotonic() - failed_at < self.pause_seconds:
            return False
        try:
            self.client.publish(self.channel, f"{self.sender} {org or ALL}")
        except self._redis.RedisError as exc:
            self._failed_at = time.monotonic()
            log.warning("cannot publish a policy invalidation for %s (other workers see it "
                        "at their next version check; not trying again for %.0f s): %s",
                        org or "every organization", self.pause_seconds, exc)
            return False
        self._failed_at = None
        return True

    def wait_until_listening(self, timeout: float = 5.0) -> bool:
        return self.connected.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()
        self.listener.close()

    def _listen(self) -> None:
        # redis-py reconnects a pub/sub connection by itself and subscribes again, which
        # shows only as a new subscribe confirmation: every confirmation after the first
        # means messages may have been missed meanwhile.
        subscribed_before = False
        failing = False
        while not self._stop.is_set():
            pubsub = self.listener.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    # A short wait: ``close`` (every CLI command's exit, every test app)
                    # waits for it to end, and an idle listener costs nothing meanwhile.
                    message = pubsub.get_message(timeout=POLL_SECONDS)
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        if subscribed_before:
                            log.info("policy invalidation channel is back; dropping every "
                                     "cached organization once")
                            self._call(None)
                        subscribed_before, failing = True, False
                        self.connected.set()
                    elif message.get("type") == "message":
                        self._handle(message["data"])
            except self._redis.RedisError as exc:
                if not failing:
                    log.warning("policy invalidation channel lost (falling back to the "
                                "version check): %s", exc)
                failing = True
                self.connected.clear()
                self._stop.wait(self.retry_seconds)
            finally:
                with contextlib.suppress(self._redis.RedisError):
                    pubsub.close()
        self.connected.clear()

    def _handle(self, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        sender, _, org = text.partition(" ")
        if sender == self.sender or not org:
            return
        self.received += 1
        self._call(None if org == ALL else org)

    def _call(self, org: str | None) -> None:
        try:
            self.on_invalidate(org)
        except Exception:  # never let one bad message stop the listener
            log.exception("policy invalidation for %s failed", org or "every organization")
