"""The layer as a RabbitMQ user that has only what the layer needs (docs/reliability.md,
"Least privilege", gives the same commands): one vhost, no tags, and permissions that
reach only the names under its prefix (every queue and exchange the layer makes is called
``<prefix>:...``), plus writing to the default exchange (``amq.default``), which the layer
publishes through to reach one queue.

Vhosts and users are made on the shared node with unique names and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import shutil
import uuid
from collections.abc import Callable, Iterator

import pytest

from conformance import ConformanceSuite, LayerSpec
from layers.amqp import AmqpChannelLayer
from layers.errors import ServerError
from tests.amqp.harness import RABBITMQCTL, bindings, exchanges, queues, rabbitmqctl
from tests.conftest import in_ci
from tests.leftovers import drive

pytestmark = pytest.mark.timeout(120)

REFUSED = re.compile(r"ACCESS_REFUSED|\(403\)")


def grant(prefix_pattern: str) -> tuple[str, str, str]:
    """configure, write and read permissions (regexes) for the prefixes ``prefix_pattern``
    (a regex) matches."""
    under = f"^{prefix_pattern}:"
    return under, f"^({prefix_pattern}:.*|amq\\.default)$", under


class Account:
    """A vhost and a user with permissions in it (and nowhere else); ``remove()`` both."""

    def __init__(self, shared_url: str, permissions: tuple[str, str, str]) -> None:
        token = uuid.uuid4().hex[:12]
        self.vhost, self.user, self.password = f"lp-{token}", f"lp-{token}", uuid.uuid4().hex
        rabbitmqctl("add_vhost", self.vhost)
        try:
            rabbitmqctl("add_user", self.user, self.password)
            rabbitmqctl("set_permissions", "-p", self.vhost, self.user, *permissions)
        except BaseException:
            self.remove()
            raise
        host = shared_url.split("@", 1)[1].split("/", 1)[0]
        self.url = f"amqp://{self.user}:{self.password}@{host}/{self.vhost}"

    def remove(self) -> None:
        for command in (("delete_vhost", self.vhost), ("delete_user", self.user)):
            try:
                rabbitmqctl(*command)
            except RuntimeError as exc:
                if "not found" not in str(exc).lower() and "does not exist" not in str(exc):
                    raise

    def leftovers(self, prefix: str) -> list[str]:
        under = f"{prefix}:"
        return [
            *queues(under, vhost=self.vhost),
            *exchanges(under, vhost=self.vhost),
            *(f"{b.source} -> {b.destination}" for b in bindings(under, vhost=self.vhost)),
        ]


@pytest.fixture(scope="module", autouse=True)
def _rabbitmqctl() -> None:
    """Vhosts and users are made, and looked at, with rabbitmqctl on this machine."""
    if shutil.which(RABBITMQCTL) is None:
        reason = f"{RABBITMQCTL} not found: cannot make vhosts and users"
        if in_ci():
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def base() -> str:
    """What every conformance prefix of this module starts with."""
    return "lp" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def suite_account(shared_amqp: str, base: str) -> Iterator[Account]:
    """One vhost and user for the module's conformance tests (rabbitmqctl takes about a
    second a call): the grant reaches the names of every prefix ``base<hex>``."""
    account = Account(shared_amqp, grant(f"{base}[0-9a-f]+"))
    try:
        yield account
    finally:
        account.remove()


@pytest.fixture
def make_account(shared_amqp: str) -> Iterator[Callable[[str], Account]]:
    """``make_account(prefix)``: a vhost and a user granted exactly ``prefix``'s names."""
    made: list[Account] = []

    def make(prefix: str) -> Account:
        made.append(Account(shared_amqp, grant(re.escape(prefix))))
        return made[-1]

    try:
        yield make
    finally:
        for account in made:
            account.remove()


class TestAsLeastPrivilegedUser(ConformanceSuite):
    @pytest.fixture
    def conformance_prefix(self, base: str) -> str:
        return base + uuid.uuid4().hex[:10]

    @pytest.fixture
    def layer_spec(self, suite_account: Account) -> LayerSpec:
        return LayerSpec(AmqpChannelLayer, config={"url": suite_account.url})

    @pytest.fixture(autouse=True)
    def nothing_refused(self, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
        """Refusals the layer only logs (its lease janitor...) fail too."""
        caplog.set_level(logging.DEBUG, logger="layers")
        yield
        refused = [r.getMessage() for r in caplog.records if REFUSED.search(r.getMessage())]
        assert not refused, f"the broker refused the layer: {refused}"


async def test_traffic_expiry_and_flush_with_the_exact_grant(
    make_account: Callable[[str], Account], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="layers")
    account = make_account(prefix)
    config = {"url": account.url, "prefix": prefix, "group_expiry": 1}
    sender = AmqpChannelLayer(**config)
    receiver = AmqpChannelLayer(**config)
    try:
        await drive(sender, receiver)
        # An ordinary member's lease expires and the janitor (this user too) unbinds it.
        await sender.group_add("lapsing", "plain.lapsing")
        await asyncio.sleep(1.5)
        deadline = asyncio.get_running_loop().time() + 10
        while any(
            b.routing_key == "lapsing"
            for b in await asyncio.to_thread(bindings, f"{prefix}:", vhost=account.vhost)
        ):
            assert asyncio.get_running_loop().time() < deadline, "the lapsed member stays bound"
            await asyncio.sleep(0.2)
        await sender.flush()
    finally:
        await receiver.close()
        await sender.close()
    assert await asyncio.to_thread(account.leftovers, prefix) == []
    refused = [r.getMessage() for r in caplog.records if REFUSED.search(r.getMessage())]
    assert not refused


async def test_outside_the_grant_is_refused(
    make_account: Callable[[str], Account],
    prefix: str,
    shared_amqp: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = make_account(prefix)
    other = AmqpChannelLayer(url=account.url, prefix=prefix + "x", retry_timeout=1)
    default_vhost = account.url.rsplit("/", 1)[0] + "/%2F"
    elsewhere = AmqpChannelLayer(url=default_vhost, prefix=prefix, retry_timeout=1)
    try:
        for call in (
            other.send("plain", {"type": "m"}),
            other.group_add("g", "plain"),
            other.receive("plain"),
        ):
            with pytest.raises(ServerError, match="ACCESS_REFUSED"):
                await asyncio.wait_for(call, 10)
        # Refused as the connection opens: at once, not retried.
        with pytest.raises(ServerError, match=r"access to vhost '/' refused"):
            await asyncio.wait_for(elsewhere.send("plain", {"type": "m"}), 10)
    finally:
        await other.close()
        await elsewhere.close()
    # Without writing to the default exchange, nothing can be sent.
    under = f"^{re.escape(prefix)}:"
    no_default = Account(shared_amqp, (under, under, under))
    layer = AmqpChannelLayer(url=no_default.url, prefix=prefix, retry_timeout=1)
    try:
        with pytest.raises(ServerError, match=r"amq\.default"):
            await asyncio.wait_for(layer.send("plain", {"type": "m"}), 10)
    finally:
        await layer.close()
        no_default.remove()
    gc.collect()
    # A refusal fails every publish in flight with it; none may go unread ("Future
    # exception was never retrieved" from asyncio).
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    # No tags: no management, no other vhosts' objects.
    users = rabbitmqctl("list_users", "-q", "--no-table-headers")
    assert any(line.split("\t")[0] == account.user and "[]" in line for line in users.splitlines())
