"""In-process storage for flask-limiter without a thread per request.

limits' ``MemoryStorage`` starts a 10 ms timer thread on almost every hit to sweep expired
counters, although every read already drops an expired counter. On a credential endpoint that
thread costs more than the rest of the limiter. This storage sweeps in line every
``SWEEP_EVERY`` hits instead. Used only when no ``REDIS_URL`` is set.
"""

from __future__ import annotations

from typing import ClassVar

from limits.storage import MemoryStorage

SCHEME = "trellis-memory"


class LazyMemoryStorage(MemoryStorage):
    STORAGE_SCHEME: ClassVar[list[str]] = [SCHEME]
    SWEEP_EVERY = 256

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False,
                 **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._hits = 0

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the per-hit timer thread
        self._hits += 1
        if self._hits % self.SWEEP_EVERY == 0:
            self._MemoryStorage__expire_events()
