"""A real DNS server on a loopback UDP port (dnslib), serving TXT records a test sets.

``zone`` maps a name to its TXT strings; a name in ``silent`` is answered only after ten
seconds, so the client's lookup times out as it would against a dead or firewalled server."""

from __future__ import annotations

import threading

from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class ZoneResolver(BaseResolver):
    def __init__(self) -> None:
        self.zone: dict[str, list[str]] = {}
        self.silent: set[str] = set()
        self.queries: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def resolve(self, request: DNSRecord, handler):
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries.append(name)
            silent, records = name in self.silent, list(self.zone.get(name, ()))
        if silent:  # answer only after every client has given up
            self.stopping.wait(10)
            return request.reply()
        reply = request.reply()
        if not records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype == QTYPE.TXT:
            for text in records:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(text), ttl=60))
        return reply


class DnsPeer:
    """Start with ``DnsPeer().start()``; ``address`` is ``(host, port)``; ``stop()`` ends it."""

    def __init__(self) -> None:
        self.resolver = ZoneResolver()
        self.server = DNSServer(self.resolver, address="127.0.0.1", port=0,
                                logger=DNSLogger(log="-request,-reply,-truncated,-data",
                                                 prefix=False))

    def start(self) -> DnsPeer:
        self.server.start_thread()
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server.server_address[:2]

    def publish(self, name: str, *texts: str) -> None:
        with self.resolver.lock:
            self.resolver.zone[name.lower()] = list(texts)

    def unpublish(self, name: str) -> None:
        with self.resolver.lock:
            self.resolver.zone.pop(name.lower(), None)

    def go_silent(self, name: str) -> None:
        with self.resolver.lock:
            self.resolver.silent.add(name.lower())

    def stop(self) -> None:
        self.resolver.stopping.set()
        self.server.server.shutdown()
        self.server.server.server_close()
