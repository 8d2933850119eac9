"""A small client for Trellis's decision API, for vendor apps written in Python.

Standard library only. One keep-alive connection per thread, and a short local cache of
answers (a few seconds by default) so a page that asks the same question many times pays
one round trip::

    from policies.client import TrellisClient
    trellis = TrellisClient("https://trellis.example", api_key="trk_...")
    if trellis.allowed("42", "acme", {"type": "purchase_order", "amount": 900}, "approve",
                       context={"assurance": 2}):
        ...
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, urlsplit


class TrellisClientError(Exception):
    """The API refused the call; ``code`` and ``reference`` come from its problem report."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.code = problem.get("code", "error")
        self.field = problem.get("field")
        self.reference = problem.get("reference")
        super().__init__(f"{status} {self.code}: {problem.get('title', '')}")


class TrellisClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 5.0,
                 cache_seconds: float = 5.0, cache_size: int = 10_000) -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}",
                         "Content-Type": "application/json", "Accept": "application/json"}
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._local = threading.local()
        self.requests_sent = 0

    # -- decisions ------------------------------------------------------------------------

    def check(self, subject: str | dict, organization: str, obj: str | dict, action: str,
              context: dict | None = None) -> dict[str, Any]:
        body = _check_body(subject, organization, obj, action, context)
        key = json.dumps(body, sort_keys=True)
        cached = self._cached(key)
        if cached is not None:
            return cached
        answer = self._call("POST", "/api/v1/authz/check", body)
        self._remember(key, answer)
        return answer

    def allowed(self, *args, **kwargs) -> bool:
        return bool(self.check(*args, **kwargs)["allowed"])

    def batch(self, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Up to 1,000 checks in one round trip (not cached)."""
        return self._call("POST", "/api/v1/authz/batch", {"checks": checks})["results"]

    def explain(self, subject: str | dict, organization: str, obj: str | dict, action: str,
                context: dict | None = None) -> dict[str, Any]:
        return self._call("POST", "/api/v1/authz/explain",
                          _check_body(subject, organization, obj, action, context))

    def permissions(self, subject_id: str, organization: str) -> list[dict[str, Any]]:
        path = (f"/api/v1/authz/subjects/{quote(str(subject_id), safe='')}/permissions"
                f"?org={quote(organization, safe='')}")
        return self._call("GET", path, None)["permissions"]

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # -- plumbing -------------------------------------------------------------------------

    def _cached(self, key: str) -> dict[str, Any] | None:
        if self._cache_seconds <= 0:
            return None
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is None or entry[0] < time.monotonic():
                return None
            self._cache.move_to_end(key)
            return entry[1]

    def _remember(self, key: str, answer: dict[str, Any]) -> None:
        if self._cache_seconds <= 0:
            return
        with self._cache_lock:
            self._cache[key] = (time.monotonic() + self._cache_seconds, answer)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
        return connection

    def _call(self, method: str, path: str, body: dict | None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            connection = self._connection()
            try:
                connection.request(method, self._prefix + path, body=payload,
                                   headers=self._headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        self.requests_sent += 1
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        document = json.loads(data or b"{}")
        if response.status >= 400:
            raise TrellisClientError(response.status, document)
        return document


def _check_body(subject, organization, obj, action, context) -> dict[str, Any]:
    body = {"subject": subject, "organization": organization, "object": obj,
            "action": action}
    if context:
        body["context"] = context
    return body
