"""Credential key rotation and the start-up key check.

Rotation: put a new key first in ``crypto.keys`` (keep the old ones), restart,
run ``stationmaster accounts reencrypt`` (every row rewritten under the newest
key, version bumped, snapshots marked for a full rebuild), wait for the
rebuild, then drop the old keys. :func:`check_credentials_key` is the start-up
check that refuses to run when stored credentials exist but no configured key
opens them.
"""

from __future__ import annotations

import uuid
from typing import Any

from .crypto import Cipher, DecryptError
from .db import Database
from .errors import ConfigError

# reencrypt rewrites this many rows per transaction: short locks, few round trips.
_REENCRYPT_BATCH = 500


async def reencrypt(db: Database, cipher: Cipher) -> int:
    """Rewrite every stored credential under the newest key; returns rows rewritten.

    Each batch commits with one full-rebuild event (NULL bucket), so snapshots
    stop carrying ciphertexts of the old keys. A row changed concurrently
    (its ciphertext no longer the one read) is skipped: its writer already
    used the newest key.
    """
    after: uuid.UUID | None = None
    total = 0
    while True:
        rows = await db.fetch(
            "SELECT id, credentials_enc FROM accounts WHERE credentials_enc IS NOT NULL"
            " AND ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
            after,
            _REENCRYPT_BATCH,
        )
        if not rows:
            return total
        updates = [(r["id"], _rotate(cipher, r), r["credentials_enc"]) for r in rows]
        async with db.transaction() as c:
            await c.executemany(
                "UPDATE accounts SET credentials_enc = $2, version = version + 1,"
                " updated_at = now() WHERE id = $1 AND credentials_enc = $3",
                updates,
            )
            await c.execute("INSERT INTO schedule_events (kind) VALUES ('credentials_reencrypted')")
        total += len(rows)
        after = rows[-1]["id"]


def _rotate(cipher: Cipher, row: Any) -> str:
    try:
        return cipher.rotate(row["credentials_enc"])
    except DecryptError:
        raise DecryptError(
            f"account {row['id']}: credentials cannot be decrypted with the configured keys"
        ) from None


async def check_credentials_key(db: Database, cipher: Cipher) -> None:
    """Start-up check: raise ConfigError if stored credentials exist that no key can open.

    Without any key configured, any encrypted row stops the start; with keys, the
    most recently written credential must decrypt (a wrong key list is caught
    before selection hands out garbage). The plaintext is discarded at once.
    """
    row = await db.fetchrow(
        "SELECT id, credentials_enc FROM accounts WHERE credentials_enc IS NOT NULL"
        " ORDER BY updated_at DESC LIMIT 1"
    )
    if row is None:
        return
    if not cipher.enabled:
        raise ConfigError(
            "crypto.keys", "accounts hold encrypted credentials but no key is configured"
        )
    try:
        cipher.decrypt(row["credentials_enc"])
    except DecryptError:
        raise ConfigError(
            "crypto.keys",
            f"no configured key decrypts the stored credentials (account {row['id']})",
        ) from None
