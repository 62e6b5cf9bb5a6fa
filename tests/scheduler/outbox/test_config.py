"""[outbox] config: env overrides, and bad values refused at start without echoing the secret."""

from __future__ import annotations

import pytest

from accounts.errors import ConfigError
from scheduler.core.config import load_config

from .support import SECRET


def test_env_overrides_the_outbox_section():
    config = load_config(
        env={
            "STATIONMASTER_OUTBOX_WEBHOOK_SECRET": SECRET,
            "STATIONMASTER_OUTBOX_BACKOFF_S": "[1, 2.5]",
            "STATIONMASTER_OUTBOX_PER_DESTINATION": "4",
        }
    ).outbox
    assert (config.webhook_secret, config.backoff_s, config.per_destination) == (
        SECRET,
        [1.0, 2.5],
        4,
    )


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"WEBHOOK_SECRET": "sk-live-topsecretvalue"}, "outbox.webhook_secret"),
        ({"WEBHOOK_SECRET": "whsec_not*base64!"}, "outbox.webhook_secret"),
        ({"BACKOFF_S": "[]"}, "outbox.backoff_s"),
        ({"BACKOFF_S": "[-1]"}, "outbox.backoff_s[0]"),
        ({"TIMEOUT_S": "60", "LEASE_S": "30"}, "outbox.lease_s"),
        ({"PER_DESTINATION": "100", "CONCURRENCY": "10"}, "outbox.per_destination"),
        ({"JITTER": "2"}, "outbox.jitter"),
        ({"NOPE": "1"}, "STATIONMASTER_OUTBOX_NOPE"),
    ],
)
def test_bad_values_name_the_key_and_never_the_secret(env, key):
    with pytest.raises(ConfigError) as caught:
        load_config(env={f"STATIONMASTER_OUTBOX_{k}": v for k, v in env.items()})
    assert caught.value.key == key
    assert "topsecret" not in str(caught.value) and "not*base64" not in str(caught.value)
