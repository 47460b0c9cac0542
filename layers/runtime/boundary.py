"""The one place a backend's driver exceptions become :mod:`layers.errors`.

Callers of a layer see only Channels' exceptions, ``TypeError`` for bad input, and
``layers.errors`` naming the server: never a redis-py, psycopg or pika exception. Each
backend wraps its driver calls in one :class:`Boundary`, telling it which driver
exceptions mean "could not reach the server" and which "the server refused".
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from layers.errors import BackendUnavailable, LayerError, ServerError


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Boundary:
    """A context manager (``with`` works in async code too) around driver calls."""

    def __init__(
        self,
        address: str,
        *,
        unavailable: tuple[type[BaseException], ...],
        refused: tuple[type[BaseException], ...],
        describe: Callable[[BaseException], str] = _text,
    ) -> None:
        self.address = address
        self._unavailable = unavailable
        self._refused = refused
        self._describe = describe

    def __enter__(self) -> Boundary:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, LayerError) or not isinstance(exc, Exception):
            return
        # Refusals first: some drivers derive them from their connection errors.
        if isinstance(exc, self._refused):
            raise ServerError(self.address, self._describe(exc)) from exc
        if isinstance(exc, self._unavailable):
            raise BackendUnavailable(self.address, self._describe(exc)) from exc
