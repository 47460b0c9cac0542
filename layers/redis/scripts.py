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


def _read(name: str) -> bytes:
    return (files("layers.redis") / "scripts" / f"{name}.lua").read_bytes()


@cache
def load(name: str, *helpers: str) -> Script:
    """``name``.lua, with the helper files it calls prepended (Lua has no imports)."""
    body = b"".join(_read(helper) for helper in helpers) + _read(name)
    return Script(name, body, hashlib.sha1(body).hexdigest())


def send() -> Script:
    return load("send", "capacity")


def group_send() -> Script:
    return load("group_send", "capacity")


def receive_many() -> Script:
    return load("receive_many")


def group_add() -> Script:
    return load("group_add")


def group_members() -> Script:
    return load("group_members")


def give_back() -> Script:
    return load("give_back")
