"""Decrypted credentials for the select answer, decrypted once and registered as secrets.

Decrypted values are registered with :func:`scheduler.core.logs.register_secret`
the first time they are seen, so they never reach a log line or an error message.
"""

from __future__ import annotations

from typing import Any

import msgspec

from accounts.crypto import Cipher
from accounts.model import Account

from ..core.logs import register_secret

# Decrypted credentials kept per ciphertext: Fernet costs tens of microseconds and
# the select answer is the hot path. Bounded so a churning fleet cannot grow it.
_CREDENTIALS_CACHE_MAX = 10_000


class Credentials:
    """Decrypt-once cache of credential documents, every value registered as a secret."""

    def __init__(self, cipher: Cipher) -> None:
        self.cipher = cipher
        self._cache: dict[str, Any] = {}

    def get(self, account: Account) -> Any:
        token = account.credentials_enc
        if token is None:
            return None
        found = self._cache.get(token)
        if found is None:
            found = self.cipher.decrypt(token)
            register_secret(*_strings(found), msgspec.json.encode(found).decode())
            if len(self._cache) >= _CREDENTIALS_CACHE_MAX:
                self._cache.clear()
            self._cache[token] = found
        return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
