"""Credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256) with key rotation.

``crypto.keys`` lists Fernet keys, newest first. New writes use the first key;
reads try every key, so rotating is: put a new key first, keep the old ones,
run ``stationmaster accounts reencrypt`` (which rewrites every row with the first
key), then drop the old keys. Ciphertexts are opaque strings; plaintexts are
JSON documents. Nothing here ever logs or formats a plaintext or a key.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigError, StationmasterError

FernetKey = Annotated[str, msgspec.Meta(min_length=44, max_length=44)]


class CryptoConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fernet keys for credentials, newest first (``stationmaster keygen`` makes one)."""

    keys: list[FernetKey] = msgspec.field(default_factory=list)


class DecryptError(StationmasterError):
    """A ciphertext no configured key opens (wrong or missing key)."""

    code = "credentials_unreadable"


class Cipher:
    """Encrypts and decrypts credential documents with the configured keys."""

    def __init__(self, config: CryptoConfig) -> None:
        self._fernet: MultiFernet | None = None
        if config.keys:
            try:
                self._fernet = MultiFernet([Fernet(k.encode()) for k in config.keys])
            except ValueError:
                # The key itself is a secret: name its position, never its text.
                raise ConfigError(
                    "crypto.keys", "not a valid Fernet key (urlsafe base64 of 32 bytes)"
                ) from None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def encrypt(self, document: Any) -> str:
        if self._fernet is None:
            raise ConfigError("crypto.keys", "no key configured: cannot store credentials")
        return self._fernet.encrypt(msgspec.json.encode(document)).decode()

    def decrypt(self, token: str) -> Any:
        if self._fernet is None:
            raise ConfigError("crypto.keys", "no key configured: cannot read stored credentials")
        try:
            return msgspec.json.decode(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise DecryptError("credentials cannot be decrypted with the configured keys") from None

    def rotate(self, token: str) -> str:
        """Re-encrypt ``token`` under the newest key."""
        if self._fernet is None:
            raise ConfigError("crypto.keys", "no key configured")
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise DecryptError("credentials cannot be decrypted with the configured keys") from None


def generate_key() -> str:
    return Fernet.generate_key().decode()
