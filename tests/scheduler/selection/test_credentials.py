"""Decrypted credentials are registered with the log redactor the moment they are decrypted.

The select answer is the only place a plaintext credential leaves the daemon.
If a decrypted value ever reaches a log line (an exception message quoting a
request, a debug line), the redactor must already know it: shaped unlike any
known key format, only the registration can catch it. Remove the
``register_secret`` call in :mod:`scheduler.selection.credentials` and this fails.
"""

from __future__ import annotations

import io
import secrets

import structlog

from accounts.crypto import Cipher, CryptoConfig, generate_key
from scheduler.core.logs import REDACTED, configure_logging, get_logger
from scheduler.selection.credentials import Credentials

from .selectkit import make_account


def test_decrypted_values_never_reach_a_log_line() -> None:
    # Unlike any known key shape (no sk-, no Bearer): only the registration hides them.
    key = "rt_" + secrets.token_hex(12) + "Q"
    nested = "pw" + secrets.token_hex(10)
    cipher = Cipher(CryptoConfig(keys=[generate_key()]))
    document = {"api_key": key, "oauth": {"refresh": [nested]}}
    account = make_account("a", credentials_enc=cipher.encrypt(document))
    saved = structlog.get_config()
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    try:
        assert Credentials(cipher).get(account) == document
        log = get_logger("test")
        log.warning(f"upstream said: bad key {key}", note=f"refresh={nested}")
        try:
            raise ValueError(f"rejected {key}")
        except ValueError:
            log.exception("failed", body=str(document))
    finally:
        structlog.configure(**saved)
    out = stream.getvalue()
    assert key not in out and nested not in out
    assert out.count(REDACTED) >= 4
