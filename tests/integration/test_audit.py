"""The hash chain catches edits, insertions and removals made directly in the database."""

import itertools
import json

import pytest
import sqlalchemy as sa

from portal import audit
from portal.models import AuditEvent, AuditHead
from tests.conftest import CLI_CTX


@pytest.fixture
def chain(tx):
    with tx() as session:
        for n in range(5):
            audit.record(session, CLI_CTX, "test.event", target=f"thing:{n}",
                         details={"n": n, "text": "ünïcode"})


def verify(tx):
    with tx() as session:
        return audit.verify(session)


def test_intact_chain_verifies(chain, tx):
    result = verify(tx)
    assert result.ok and result.checked == 5


def test_edited_event_is_named(chain, tx):
    with tx() as session:
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq == 3)
                        .values(reason="nothing to see"))
    result = verify(tx)
    assert not result.ok and result.seq == 3 and "event 3 was altered" in result.problem


def test_edited_details_are_caught(chain, tx):
    with tx() as session:
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq == 2)
                        .values(details={"n": 99, "text": "ünïcode"}))
    assert verify(tx).seq == 2


def test_removed_event_is_named(chain, tx):
    with tx() as session:
        session.execute(sa.delete(AuditEvent).where(AuditEvent.seq == 4))
    result = verify(tx)
    assert not result.ok and "event 4 is missing" in result.problem


def test_removed_tail_is_caught(chain, tx):
    with tx() as session:
        session.execute(sa.delete(AuditEvent).where(AuditEvent.seq == 5))
    result = verify(tx)
    assert not result.ok and "events after 4 were removed" in result.problem


def test_inserted_event_is_caught_even_with_a_recomputed_hash(chain, tx):
    with tx() as session:
        # Renumber 4..5 to make room, then forge an event 4 whose own hash is right.
        for seq in (5, 4):
            session.execute(sa.update(AuditEvent).where(AuditEvent.seq == seq)
                            .values(seq=seq + 1))
        third = session.scalar(sa.select(AuditEvent).where(AuditEvent.seq == 3))
        forged = AuditEvent(seq=4, occurred_at=third.occurred_at, actor="cli:mallory",
                            action="test.event", target="thing:forged", outcome="success",
                            details={}, prev_hash=third.hash, reason="", ip="",
                            user_agent="", request_id="", personal_salt="ab" * 16)
        forged.personal_digest = audit.personal_digest(
            forged.personal_salt, {name: getattr(forged, name) for name in
                                   audit.PERSONAL_FIELDS})
        forged.hash = audit.event_hash(forged, third.hash)
        session.add(forged)
    result = verify(tx)
    assert not result.ok and result.seq == 5
    assert "event 5 does not follow event 4" in result.problem


def test_events_chain_in_order(chain, tx):
    with tx() as session:
        events = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        head = session.get(AuditHead, 1)
    assert events[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert (head.last_seq, head.last_hash) == (5, events[-1].hash)


def test_export_formats(chain, tx):
    from datetime import UTC, datetime, timedelta
    with tx() as session:
        lines = list(audit.export(session, "jsonl"))
        csv_text = "".join(audit.export(session, "csv"))
        future = list(audit.export(session, "jsonl", datetime.now(UTC) + timedelta(days=1)))
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["details"] == {"n": 0, "text": "ünïcode"} and rows[0]["hash"]
    assert csv_text.splitlines()[0].startswith("seq,occurred_at,actor_id,actor,")
    assert len(csv_text.splitlines()) == 6
    assert future == []


# -- personal data and the chain (format 2) ------------------------------------------------

KEY = "k" * 32


@pytest.fixture
def about_alice(tx):
    alice = audit.Context(actor_id=7, actor="alice@example.test", ip="192.0.2.7",
                          user_agent="Firefox")
    with tx() as session:
        audit.record(session, alice, "auth.login", target="user:alice@example.test")
        audit.record(session, CLI_CTX, "member.invite", target="org:acme",
                     details={"email": "alice@example.test", "role": "member"})
        audit.record(session, CLI_CTX, "test.event", target="user:bob@example.test")
        audit.record(session, alice, "user.update", target="user:alice@example.test",
                     reason="asked by alice@example.test")


def test_pseudonymizing_a_person_keeps_the_chain_valid(about_alice, tx):
    with tx() as session:
        changed = audit.pseudonymize(session, KEY, 7, ["alice@example.test"])
    assert changed == 3
    assert verify(tx).ok and verify(tx).checked == 4
    alias = audit.pseudonym(KEY, "alice@example.test")
    with tx() as session:
        rows = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        text = json.dumps([[r.actor, r.target, r.reason, r.ip, r.user_agent, r.details]
                           for r in rows])
        assert "alice@example.test" not in text and "192.0.2.7" not in text
        assert rows[0].actor == alias and rows[0].target == f"user:{alias}"
        assert rows[1].details == {"email": alias, "role": "member"}
        assert rows[2].target == "user:bob@example.test" and rows[2].personal_salt
        assert rows[3].reason == f"asked by {alias}"


def test_pseudonyms_are_keyed_and_stable():
    one = audit.pseudonym(KEY, "alice@example.test")
    assert one == audit.pseudonym(KEY, "alice@example.test")
    assert one != audit.pseudonym("other-key" * 4, "alice@example.test")
    assert one.startswith("erased:") and "alice" not in one


def test_edits_of_personal_fields_are_caught_before_pseudonymization(about_alice, tx):
    with tx() as session:
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq == 1)
                        .values(ip="198.51.100.1"))
    result = verify(tx)
    assert not result.ok and result.seq == 1 and "altered" in result.problem


def test_a_salt_removed_without_pseudonymization_is_caught(about_alice, tx):
    with tx() as session:
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq == 2)
                        .values(personal_salt=""))
    assert verify(tx).seq == 2


def test_non_personal_fields_stay_protected_after_pseudonymization(about_alice, tx):
    with tx() as session:
        audit.pseudonymize(session, KEY, 7, ["alice@example.test"])
        session.execute(sa.update(AuditEvent).where(AuditEvent.seq == 1)
                        .values(outcome="failure"))
    result = verify(tx)
    assert not result.ok and result.seq == 1


def test_events_of_a_rolled_back_savepoint_leave_no_gap(tx):
    """Several events in one transaction lock the chain's head once; one recorded inside a
    savepoint that rolled back is gone, and the events around it still chain."""
    with tx() as session:
        audit.record(session, CLI_CTX, "test.kept", target="thing:1")
        with pytest.raises(RuntimeError), session.begin_nested():
            audit.record(session, CLI_CTX, "test.undone", target="thing:2")
            raise RuntimeError("the change this event described failed")
        audit.record(session, CLI_CTX, "test.kept", target="thing:3")
        with session.begin_nested():
            audit.record(session, CLI_CTX, "test.kept", target="thing:4")
        audit.record(session, CLI_CTX, "test.kept", target="thing:5")
    with tx() as session:
        audit.record(session, CLI_CTX, "test.kept", target="thing:6")
    result = verify(tx)
    assert result.ok and result.checked == 5
    with tx() as session:
        rows = session.execute(sa.select(AuditEvent.seq, AuditEvent.target)
                               .order_by(AuditEvent.seq)).all()
    assert rows == [(1, "thing:1"), (2, "thing:3"), (3, "thing:4"), (4, "thing:5"),
                    (5, "thing:6")]
