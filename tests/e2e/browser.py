"""Headless Chromium for the end-to-end tests: Debian's ``chromium`` driven by its
``chromedriver`` through Selenium, started with the flags a closed network and a root user
need, and never left running.

Selenium is handed the driver's path explicitly, so Selenium Manager never tries to download
a browser or a driver (downloads fail on the test machines).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# Without the background-networking flags Chromium stalls for long seconds on a network that
# answers nothing (component updates, sync, QUIC probes); --no-sandbox because CI runs as root.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

PR_SET_CHILD_SUBREAPER = 36
REAP_TIMEOUT = 10.0


def missing() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not os.access(path, os.X_OK):
            return f"{name} not found (looked for {path}; apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextlib.contextmanager
def chromium(page_load_timeout: float = 15.0) -> Iterator[WebDriver]:
    """One headless Chromium with a fresh profile; quit, and its processes reaped, on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="e2e-chromium-") as profile, _adopting_orphans():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(page_load_timeout)
            yield driver
        finally:
            driver.quit()


@contextlib.contextmanager
def _adopting_orphans() -> Iterator[None]:
    """Make this process the parent of the browser's orphans while it runs, and reap them.

    Chromium's zygote and crash handler fork away from their parent; once the browser quits
    they end as zombies of PID 1, which in some containers never reaps them, so they pile up
    run after run. As a child subreaper (Linux) this process inherits them instead and waits
    for them itself, so nothing of the browser outlives the test.
    """
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
    adopting = libc is not None and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if adopting:
            assert libc is not None
            try:
                _reap_browser_children()
            finally:
                libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _browser_children() -> list[tuple[int, str]]:
    """(pid, state) of this process's children that belong to Chromium."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                line = stat.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        head, _, rest = line.rpartition(")")
        comm = head.partition("(")[2]
        fields = rest.split()
        if int(fields[1]) == me and comm.startswith("chrom"):
            found.append((int(entry), fields[0]))
    return found


def _reap_browser_children() -> None:
    deadline = time.monotonic() + REAP_TIMEOUT
    while True:
        children = _browser_children()
        if not children:
            return
        late = time.monotonic() > deadline
        for pid, state in children:
            if state != "Z" and late:
                # Still running REAP_TIMEOUT after quit: it is not going to end by itself.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0 if late else os.WNOHANG)
        time.sleep(0.05)
