"""Optional symmetric encryption of message bodies (extra ``[crypto]``).

Any string can be a key: it is stretched to a Fernet key with SHA-256, so settings can hold
ordinary secrets. Messages are encrypted with the first key and decrypted with any of them,
which is what lets an operator rotate keys: add the new key first, deploy, then drop the old.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Any

from layers.errors import ConfigurationError, UndecodableMessage


class Encryptor:
    def __init__(self, keys: Iterable[str | bytes]) -> None:
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise ConfigurationError("symmetric_encryption_keys must be a list of keys")
        raw = list(keys)
        if not raw or not all(isinstance(key, str | bytes) and key for key in raw):
            raise ConfigurationError(
                "symmetric_encryption_keys must be a non-empty list of non-empty strings"
            )
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "symmetric_encryption_keys needs the 'cryptography' package: "
                "pip install 'channel-layers[crypto]'"
            ) from exc
        self._fernet: Any = MultiFernet([Fernet(_fernet_key(key)) for key in raw])

    def encrypt(self, data: bytes) -> bytes:
        token: bytes = self._fernet.encrypt(data)
        return token

    def decrypt(self, data: bytes) -> bytes:
        from cryptography.fernet import InvalidToken

        try:
            plain: bytes = self._fernet.decrypt(data)
        except InvalidToken as exc:
            raise UndecodableMessage("message is not encrypted with any configured key") from exc
        return plain


def _fernet_key(key: str | bytes) -> bytes:
    secret = key.encode() if isinstance(key, str) else key
    return base64.urlsafe_b64encode(hashlib.sha256(secret).digest())
