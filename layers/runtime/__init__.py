"""What every network backend shares: per-loop state, the receive loop, the receive path.

A backend subclasses :class:`~layers.runtime.network.NetworkLayer` and supplies only its
transport: per event loop, a :class:`~layers.runtime.network.Transport` that opens
:class:`~layers.runtime.receiver.Source` objects (how messages are fetched or pushed, how a
blocked fetch is interrupted, how a message fetched for nobody is given back).
"""

from layers.runtime.loops import PerLoop, close_with_loop
from layers.runtime.network import NetworkLayer, Transport
from layers.runtime.receiver import Fetched, ReceiveLoop, Source

__all__ = [
    "Fetched",
    "NetworkLayer",
    "PerLoop",
    "ReceiveLoop",
    "Source",
    "Transport",
    "close_with_loop",
]
