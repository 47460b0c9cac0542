"""The RabbitMQ channel layer. See ``layers/amqp/README.md`` for the topology."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Hashable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import pika
from channels.exceptions import ChannelFull

from layers.amqp import envelope
from layers.amqp.calls import Verdict
from layers.amqp.doubts import Doubts
from layers.amqp.transport import Transport
from layers.base import Message, int_option, seconds_option
from layers.errors import ConfigurationError, ServerError
from layers.runtime import NetworkLayer
from layers.runtime.loops import Duty

logger = logging.getLogger("layers.amqp")

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"


class AmqpChannelLayer(NetworkLayer):
    """A channel layer on RabbitMQ (3.10 or later), through pika.

    Config, besides the :class:`~layers.base.BaseLayer` keys:

    - ``url`` (``"amqp://guest:guest@localhost:5672/%2F"``): the broker, as pika's
      ``URLParameters`` reads it (``amqps://`` for TLS, query options such as
      ``heartbeat``).
    - ``ssl_options`` (None): for an ``amqps://`` url, how to check the broker: a dict with
      ``ca_certs`` (CA bundle, PEM, that the broker's certificate must chain to; the
      system's CAs when left out), ``certfile`` and ``keyfile`` (a client certificate and
      its key, for brokers that ask for one), ``server_hostname`` (the name the
      certificate must carry; the url's host when left out), or a ready
      :class:`ssl.SSLContext`. It replaces pika's ``?ssl_options=`` url argument. Without
      it, ``amqps://`` checks the broker against the system's CAs and the url's host.
    - ``connect_timeout`` (5.0), ``retry_timeout`` (5.0): seconds to connect, and how long an
      unreachable broker is retried before calls raise
      :class:`~layers.errors.BackendUnavailable` naming it.
    - ``queue_expires`` (``max(60, 3 * expiry)``): seconds a queue nobody consumes, declares
      or reads lives on (``x-expires``). A sender declares again before the queue could
      expire with messages of its own in it.
    - ``local_batch`` (500): deliveries of this instance's process-local channels in
      flight to it at once.
    - ``prefetch`` (0): extra messages of an ordinary channel one receive may take for the
      next receives in this process (fewer round trips, less fairness).
    """

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        ssl_options: dict[str, str] | ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        retry_timeout: float = 5.0,
        queue_expires: float | None = None,
        local_batch: int = 500,
        prefetch: int = 0,
        **config: Any,
    ) -> None:
        super().__init__(**config)
        if not isinstance(url, str):
            raise ConfigurationError(f"url must be an amqp:// or amqps:// URL, not {url!r}")
        try:
            self.parameters = pika.URLParameters(url)
        except Exception as exc:
            raise ConfigurationError(f"url {_masked(url)!r} cannot be read: {exc}") from None
        if ssl_options is not None:
            if self.parameters.ssl_options is None:
                raise ConfigurationError(
                    f"ssl_options is given but url {_masked(url)!r} is not amqps://"
                )
            self.parameters.ssl_options = _ssl_options(ssl_options)
        self.connect_timeout = seconds_option("connect_timeout", connect_timeout)
        self.retry_timeout = seconds_option("retry_timeout", retry_timeout)
        expires = max(60.0, 3 * float(self.expiry)) if queue_expires is None else queue_expires
        self.queue_expires = seconds_option("queue_expires", expires)
        if self.queue_expires <= float(self.expiry):
            raise ConfigurationError(
                f"queue_expires ({self.queue_expires}) must be longer than expiry ({self.expiry})"
            )
        self.local_batch = int_option("local_batch", local_batch)
        self.prefetch = int_option("prefetch", prefetch, low=0, high=99)
        self.linger = 2.0
        parameters = self.parameters
        parameters.socket_timeout = self.connect_timeout
        parameters.stack_timeout = self.connect_timeout
        parameters.connection_attempts = 1
        parameters.client_properties = {"connection_name": f"{self.prefix} {self.client_prefix}"}
        self.address = f"{parameters.host}:{parameters.port}/{parameters.virtual_host}"
        self.exchange = f"{self.prefix}:groups"
        self.inbox = self._inbox_of(self.client_prefix)
        # Every queue declared under the prefix is named here once per process, so that
        # flush() can find the ones other processes declared (AMQP cannot list queues).
        self.registry = f"{self.prefix}:!registry"
        # Queues this process declared, with when (monotonic): shared by every event loop.
        self.declared: dict[str, float] = {}
        # This instance's process-local channels in groups: group -> {channel: deadline}.
        self._members: dict[str, dict[str, float]] = {}
        self._members_lock = threading.Lock()
        # Local channels receives wait on, with when they last asked (monotonic).
        self.wanted: dict[str, float] = {}
        # Local channels of this instance that have a queue (someone sent to them
        # directly), as the inbox told: consumed while receives want them.
        self.direct: set[str] = set()
        # One event loop per instance runs the lease janitor (layers/amqp/leases.py), and
        # one consumes the instance's inbox and local channels' queues.
        self.janitor = Duty()
        self.local_duty = Duty()
        # What this instance's own queues handed out before their acks were confirmed.
        self.doubts = Doubts()

    # -- names -----------------------------------------------------------------------------

    def queue_of(self, channel: str) -> str:
        return f"{self.prefix}:{channel}"

    def channel_of(self, queue: str) -> str:
        return queue[len(self.prefix) + 1 :]

    def _inbox_of(self, instance: str) -> str:
        # "!" first: no channel name starts with it, so no channel's queue has this name.
        return f"{self.prefix}:!{instance}"

    def inbox_of_channel(self, channel: str) -> str:
        return self._inbox_of(self._owner(channel))

    @staticmethod
    def _owner(channel: str) -> str:
        bang = channel.index("!")
        return channel[channel.rfind(".", 0, bang) + 1 : bang]

    def queue_arguments(self, channel: str) -> dict[str, Any]:
        return {
            "x-message-ttl": round(float(self.expiry) * 1000),
            "x-max-length": self.get_capacity(channel),
            "x-overflow": "reject-publish",
            "x-expires": round(self.queue_expires * 1000),
        }

    def registry_arguments(self) -> dict[str, Any]:
        """For the registry and the leases' dead letters: bounded, gone when unused."""
        return {
            "x-max-length": 100_000,
            "x-overflow": "drop-head",
            "x-expires": round(self.queue_expires * 1000),
        }

    def inbox_arguments(self) -> dict[str, Any]:
        return {
            "x-message-ttl": round(float(self.expiry) * 1000),
            "x-expires": round(self.queue_expires * 1000),
        }

    # -- the transport ---------------------------------------------------------------------

    def _open_transport(self, loop: Any) -> Transport:
        return Transport(self, loop)

    def _transport(self) -> Transport:
        return cast(Transport, self._state().transport)

    def _sources(self, channels: tuple[str, ...]) -> list[Hashable]:
        plain = tuple(c for c in channels if "!" not in c)
        keys: list[Hashable] = []
        if plain:
            keys.append(("plain", plain))
        if len(plain) < len(channels):
            now = time.monotonic()
            for channel in channels:
                if "!" in channel:
                    self.wanted[channel] = now
            # The local receive loop may be waiting with deliveries held for want of
            # room in a buffer this receive is about to empty, or for a new channel.
            self._transport().nudge_local()
            keys.append(("local",))
        return keys

    # -- sending ---------------------------------------------------------------------------

    async def send(self, channel: str, message: Message) -> None:
        self.require_valid_channel_name(channel)
        data = self.encode(message, channel)
        body = envelope.pack(envelope.MESSAGE, time.time() + float(self.expiry), data)
        transport = self._transport()
        queue = self.queue_of(channel)
        for _ in range(2):
            verdict = await transport.deliver(channel, body)
            if verdict is Verdict.ACKED:
                return
            if verdict is Verdict.NACKED:
                raise ChannelFull(f"channel {channel!r} is at capacity")
            # Returned: the queue went away (flushed, or expired) since we declared it.
            self.declared.pop(queue, None)
        raise ServerError(self.address, f"queue {queue!r} disappears as soon as it is declared")

    # -- groups ----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        transport = self._transport()
        if "!" not in channel:

            async def declare(force: bool) -> None:
                await transport.ensure_queue(channel, force=force)

            await transport.leases.renew(group, channel)
            await transport.bind(self.queue_of(channel), group, declare)
            return
        # A process-local channel: its owner's inbox takes the group's messages once for
        # all its members, and the owner hears of the membership through that inbox, in
        # order with the group's messages.
        inbox = self._inbox_of(self._owner(channel))

        async def declare_inbox(force: bool) -> None:
            await transport.ensure_inbox(inbox, force=force)

        await transport.bind(inbox, group, declare_inbox)
        deadline = time.time() + float(self.group_expiry)
        body = envelope.pack(envelope.ADD, deadline, channel.encode(), group)
        await transport.publish("", inbox, body)

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        transport = self._transport()
        if "!" not in channel:
            await transport.unbind(self.queue_of(channel), group)
            await transport.leases.end(group, channel)
            return
        inbox = self._inbox_of(self._owner(channel))
        body = envelope.pack(envelope.DISCARD, 0.0, channel.encode(), group)
        # Mandatory: an owner long gone has no inbox, and then there is nothing to undo.
        await transport.publish("", inbox, body, mandatory=True)

    async def group_send(self, group: str, message: Message) -> None:
        self.require_valid_group_name(group)
        data = self.encode(message, group)
        body = envelope.pack(envelope.GROUP, time.time() + float(self.expiry), data, group)
        transport = self._transport()
        if not await transport.exchange_exists():
            return  # no group under the prefix has a member
        try:
            # A nack means a member's queue was full: that member is skipped, as it should.
            await transport.publish(self.exchange, group, body)
        except ServerError:
            # The exchange was deleted (a flush elsewhere): then the group has no members.
            transport.forget_exchange()

    # -- what the owner of process-local channels hears ------------------------------------

    def members(self, group: str) -> list[str]:
        """This instance's channels in ``group`` whose membership has not lapsed."""
        now = time.time()
        with self._members_lock:
            channels = self._members.get(group)
            if not channels:
                return []
            lapsed = [c for c, deadline in channels.items() if deadline <= now]
            for channel in lapsed:
                del channels[channel]
            if not channels:
                del self._members[group]
                return []
            return list(channels)

    def membership(self, kind: bytes, group: str, channel: str, deadline: float) -> bool:
        """Record a membership change from the inbox; True if ``group`` has no member here
        any more (its binding can go)."""
        with self._members_lock:
            channels = self._members.setdefault(group, {})
            if kind == envelope.ADD:
                channels[channel] = max(deadline, channels.get(channel, 0.0))
            else:
                channels.pop(channel, None)
            if channels:
                return False
            del self._members[group]
            return True

    # -- housekeeping ----------------------------------------------------------------------

    async def flush(self) -> None:
        transport = self._transport()
        await transport.flush([*self.declared, self.inbox])
        with self._members_lock:
            self._members.clear()
        self._buffer.clear()


_SSL_KEYS = ("ca_certs", "certfile", "keyfile", "server_hostname")


def _ssl_options(value: Any) -> pika.SSLOptions:
    """The ``ssl_options`` setting as pika takes it; ConfigurationError naming what is wrong."""
    if isinstance(value, ssl.SSLContext):
        return pika.SSLOptions(value)
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"ssl_options must be a dict ({', '.join(_SSL_KEYS)}) or an ssl.SSLContext, "
            f"not {value!r}"
        )
    unknown = sorted(set(value) - set(_SSL_KEYS))
    if unknown:
        raise ConfigurationError(
            f"ssl_options has unknown keys {unknown}; it takes {', '.join(_SSL_KEYS)}"
        )
    for key, item in value.items():
        if not isinstance(item, str) or not item:
            raise ConfigurationError(f"ssl_options[{key!r}] must be a non-empty str, not {item!r}")
    if "keyfile" in value and "certfile" not in value:
        raise ConfigurationError("ssl_options has a keyfile but no certfile")
    try:
        context = ssl.create_default_context(cafile=value.get("ca_certs"))
        if "certfile" in value:
            context.load_cert_chain(value["certfile"], value.get("keyfile"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"ssl_options {value!r} cannot be loaded: {exc}") from None
    return pika.SSLOptions(context, value.get("server_hostname"))


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return unquote(parts._replace(netloc=netloc).geturl())


__all__ = ["AmqpChannelLayer"]
