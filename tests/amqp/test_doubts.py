"""The ledger of deliveries handed out before their acks were confirmed (doubts.py)."""

from __future__ import annotations

from layers.amqp.doubts import Doubts


def test_settled_batch_is_forgotten() -> None:
    doubts = Doubts()
    token = doubts.hold([(b"a", 100.0), (b"b", 100.0)])
    assert len(doubts) == 2
    doubts.settle(token)
    assert len(doubts) == 0
    assert not doubts.redelivered(b"a", 0.0)


def test_orphaned_batch_drops_each_redelivery_once() -> None:
    doubts = Doubts()
    doubts.orphan(doubts.hold([(b"a", 100.0), (b"a", 100.0), (b"b", 100.0)]))
    assert doubts.redelivered(b"a", 1.0)
    assert doubts.redelivered(b"a", 1.0)
    assert not doubts.redelivered(b"a", 1.0), "two were handed out, a third is new"
    assert doubts.redelivered(b"b", 1.0)
    assert len(doubts) == 0


def test_pending_batch_answers_a_redelivery() -> None:
    # A redelivery may reach the new channel before the old barrier's failure is heard.
    doubts = Doubts()
    token = doubts.hold([(b"a", 100.0), (b"b", 100.0)])
    assert doubts.redelivered(b"b", 1.0)
    doubts.orphan(token)
    assert doubts.redelivered(b"a", 1.0)
    assert not doubts.redelivered(b"b", 1.0)


def test_orphans_expire_with_their_messages() -> None:
    doubts = Doubts()
    doubts.orphan(doubts.hold([(b"a", 10.0)]))
    assert not doubts.redelivered(b"a", 10.5), "past its deadline the broker dropped it"
    assert len(doubts) == 0
