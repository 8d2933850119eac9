"""Invalidation inside one process, and what happens when Redis cannot be reached."""

import logging
import shutil
import socket
import time
from pathlib import Path

import pytest

from policies import PolicyEngine, Sources

POLICIES = Path(__file__).resolve().parents[3] / "policies"


@pytest.fixture
def folder(tmp_path):
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


class World:
    def __init__(self):
        self.grants = {"acme": []}
        self.version = 0
        self.loads = 0
        self.during_load = None  # called inside a load, to race it

    def sources(self):
        def grants(org):
            self.loads += 1
            current = list(self.grants.get(org, []))
            if self.during_load:
                hook, self.during_load = self.during_load, None
                hook()
            return current
        return Sources(grants=grants, platform_roles=list, org_kind={"acme": "partner"}.get,
                       version=lambda org: self.version)


def manages(engine, user="bob"):
    return engine.decide({"id": user}, "acme", {"type": "member"}, "manage").allowed


def test_an_enforcer_invalidated_while_it_was_built_is_not_cached(folder):
    world = World()
    engine = PolicyEngine(folder, world.sources(), version_check_seconds=3600)

    def change_while_loading():  # the grant lands after this load read the grants
        world.grants["acme"].append(("bob", "user_manager"))
        engine.invalidate("acme")
    world.during_load = change_while_loading
    assert not manages(engine)  # decided with what was read: fine for this one call
    assert manages(engine)  # but never cached: the next decision loads again
    assert world.loads == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_redis_keeps_local_invalidation_and_the_version_check(folder, caplog):
    world = World()
    clock = [100.0]
    with caplog.at_level(logging.WARNING, logger="trellis.policy"):
        engine = PolicyEngine(folder, world.sources(), clock=lambda: clock[0],
                              redis_url=f"redis://127.0.0.1:{free_port()}/0")
        try:
            assert not engine.notifier.wait_until_listening(timeout=0.3)
            assert not manages(engine)
            world.grants["acme"].append(("bob", "user_manager"))
            engine.invalidate("acme")  # publishing fails, logged; this process still sees it
            assert manages(engine)
            calls = []
            engine.notifier.client.publish = lambda *args: calls.append(args)
            for _ in range(20):  # then publishing pauses: no connection timeout per change
                assert engine.notifier.publish("acme") is False
            assert calls == []
            world.grants["acme"].clear()
            world.version += 1  # another worker's change: the version check still works
            clock[0] += 1
            assert not manages(engine)
        finally:
            started = time.monotonic()
            engine.close()
            assert time.monotonic() - started < 3
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "cannot publish a policy invalidation for acme" in messages
    assert "policy invalidation channel lost" in messages
