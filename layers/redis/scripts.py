"""The Lua scripts under ``scripts/``, read once per process and called by SHA1."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files


@dataclass(frozen=True)
class Script:
    name: str
    body: bytes
    sha: str


@cache
def load(name: str) -> Script:
    body = (files("layers.redis") / "scripts" / f"{name}.lua").read_bytes()
    return Script(name, body, hashlib.sha1(body).hexdigest())


def send() -> Script:
    return load("send")


def group_send() -> Script:
    return load("group_send")


def receive_many() -> Script:
    return load("receive_many")


def group_add() -> Script:
    return load("group_add")


def group_members() -> Script:
    return load("group_members")
