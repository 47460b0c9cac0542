"""The example chat in a real browser: two headless Chromium pages, one on each of two Daphne
servers sharing the Redis layer, join a room; what one types shows up on both.

Skips with the reason when Chromium, its driver, Selenium or Redis is missing; fails instead
when CI is set.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.conftest import in_ci
from tests.e2e import browser
from tests.e2e.site import Site
from tests.redis.harness import ping

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CONNECT_TIMEOUT = 15.0
DELIVERY_TIMEOUT = 5.0

pytestmark = [pytest.mark.xdist_group("browser"), pytest.mark.timeout(120)]


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _log(driver: WebDriver, window: str) -> list[str]:
    driver.switch_to.window(window)
    items = driver.execute_script(
        "return Array.from(document.querySelectorAll('#log li'), li => li.textContent);"
    )
    return list(items)


def _wait_until_connected(driver: WebDriver, window: str, url: str) -> None:
    driver.switch_to.window(window)
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while driver.execute_script("return document.body.dataset.connected") != "true":
        if time.monotonic() > deadline:
            pytest.fail(f"the page at {url} did not open its WebSocket in {CONNECT_TIMEOUT} s")
        time.sleep(0.05)


def test_two_pages_on_two_servers_chat() -> None:
    reason = browser.missing()
    if reason:
        _unavailable(reason)
    if not ping(6379):
        _unavailable("no Redis server answers on 127.0.0.1:6379")
    from selenium.webdriver.common.by import By

    run = uuid.uuid4().hex[:12]
    room = f"browser-{run}"
    text = f"hello from the browser {run}"
    with (
        Site(
            "redis", env={"CHAT_LAYER_PREFIX": f"e2e-browser-{run}"}, servers=2, worker=False
        ) as site,
        browser.chromium() as driver,
    ):
        # One page per server, each in its own window (a background tab would be throttled).
        pages = [f"{url}/chat/{room}/" for url in (site.urls[0], site.urls[-1])]
        windows = [driver.current_window_handle]
        driver.get(pages[0])
        driver.switch_to.new_window("window")
        windows.append(driver.current_window_handle)
        driver.get(pages[1])
        for window, page in zip(windows, pages, strict=True):
            _wait_until_connected(driver, window, page)

        driver.switch_to.window(windows[0])
        driver.find_element(By.ID, "message").send_keys(text)
        driver.find_element(By.ID, "send").click()

        deadline = time.monotonic() + DELIVERY_TIMEOUT
        logs = [_log(driver, window) for window in windows]
        while any(text not in log for log in logs) and time.monotonic() < deadline:
            time.sleep(0.05)
            logs = [_log(driver, window) for window in windows]
        assert logs == [[text], [text]], (
            f"after {DELIVERY_TIMEOUT} s, #log on the sender's page ({pages[0]}) held "
            f"{logs[0]} and on the other page ({pages[1]}) {logs[1]}; expected {text!r} once on each"
        )
