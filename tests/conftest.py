"""Project-wide test setup: a minimal Django configuration for the Channels tests, and the
rule for tests that need a server: skip on a user's machine, fail in CI."""

from __future__ import annotations

import os

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=True,
        SECRET_KEY="tests-only",
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={"default": {"BACKEND": "layers.memory.InMemoryChannelLayer"}},
        USE_TZ=True,
    )
    django.setup()


def in_ci() -> bool:
    return bool(os.environ.get("CI"))
