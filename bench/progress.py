"""A one-line progress bar on stderr, redrawn at most a few times a second."""

from __future__ import annotations

import shutil
from typing import TextIO

from bench.probe import clock

WIDTH = 24


class Progress:
    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.done = 0
        self.label = ""
        self.started = self.job_started = clock()
        self.drawn = 0.0
        # One column short of the terminal, or a long label would wrap and break "\r".
        self.width = max(40, shutil.get_terminal_size((100, 20)).columns - 1)

    def start(self, label: str) -> None:
        self.label, self.job_started = label, clock()
        self.draw(force=True)

    def finish_one(self) -> None:
        self.done += 1
        self.draw(force=True)

    def draw(self, force: bool = False) -> None:
        now = clock()
        if not self.enabled or (not force and now - self.drawn < 0.2):
            return
        self.drawn = now
        filled = WIDTH * self.done // max(1, self.total)
        bar = "#" * filled + "-" * (WIDTH - filled)
        line = (
            f"[{bar}] {self.done}/{self.total} {self.label} "
            f"{now - self.job_started:5.1f}s (total {now - self.started:.0f}s)"
        )
        self.stream.write("\r" + line[: self.width].ljust(self.width))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
