"""The suite's parts, one mixin per area of the contract, put together as ConformanceSuite."""

from __future__ import annotations

from conformance.suite.bad_input import BadInputChecks
from conformance.suite.base import SuiteBase
from conformance.suite.capacity_expiry import CapacityChecks, ExpiryChecks
from conformance.suite.concurrency import ConcurrentReceiveChecks, ReceiveManyChecks
from conformance.suite.groups import GroupChecks
from conformance.suite.lifecycle import LifecycleChecks
from conformance.suite.loops import EventLoopChecks
from conformance.suite.send_receive import NewChannelChecks, SendReceiveChecks
from conformance.suite.threads import ThreadChecks

__all__ = ["ConformanceSuite"]


class ConformanceSuite(
    SendReceiveChecks,
    NewChannelChecks,
    ConcurrentReceiveChecks,
    ReceiveManyChecks,
    CapacityChecks,
    ExpiryChecks,
    GroupChecks,
    LifecycleChecks,
    EventLoopChecks,
    ThreadChecks,
    BadInputChecks,
    SuiteBase,
):
    """Every row of the channel layer contract as pytest tests.

    Subclass it as ``Test...`` and provide a ``layer_spec`` fixture returning a
    :class:`conformance.LayerSpec`. The name deliberately does not start with ``Test``,
    so importing it into a test module does not collect it a second time.
    """
