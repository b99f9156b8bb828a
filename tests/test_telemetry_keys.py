"""Rate-limiter keys (often API keys or personal data) in messages and telemetry:
a keyed-hash label by default, the raw key only for the caller, or when shown."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

import resilience as rs
from resilience import telemetry
from resilience.telemetry import events, redaction
from resilience.testing import FakeClock

API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
EMAIL = "alice@example.com"


@pytest.fixture(autouse=True)
def key_settings() -> Iterator[None]:
    saved = (redaction._KEYS.show, redaction._KEYS.salt)
    yield
    redaction._KEYS.show, redaction._KEYS.salt = saved


def rejected(key: str) -> rs.RateLimitExceeded:
    limiter = rs.RateLimiter("api", rate=1, per=60.0, burst=1, clock=FakeClock())
    limiter.acquire(key)
    with pytest.raises(rs.RateLimitExceeded) as caught:
        limiter.acquire(key, timeout=0)
    return caught.value


def test_the_exception_hides_the_key_but_hands_it_to_the_caller() -> None:
    error = rejected(API_KEY)
    assert error.key == API_KEY  # programmatic access for the caller
    label = telemetry.key_label(API_KEY)
    assert error.key_label == label and label.startswith("key#") and len(label) == 16
    for shown in (str(error), repr(error), "".join(error.args)):
        assert API_KEY not in shown
        assert label in shown
    assert str(error) == f"rate limit 'api' exceeded for {label}; retry after 60.000s"


def test_labels_are_stable_per_salt_distinct_per_key_and_not_an_unkeyed_hash() -> None:
    telemetry.configure(key_salt="fleet-secret")
    first = telemetry.key_label(EMAIL)
    assert telemetry.key_label(EMAIL) == first  # operators can follow one key
    assert telemetry.key_label("bob@example.com") != first
    # A low-entropy key (an e-mail) must not be recoverable by hashing guesses:
    # the label is keyed, so without the salt a dictionary of e-mails is useless.
    for unkeyed in (hashlib.sha256, hashlib.md5, hashlib.blake2b):
        assert unkeyed(EMAIL.encode()).hexdigest()[:12] not in first
    telemetry.configure(key_salt="another-secret")
    assert telemetry.key_label(EMAIL) != first
    with pytest.raises(ValueError, match="key_salt"):
        telemetry.configure(key_salt="")


def _label_in_subprocess(env: dict[str, str]) -> str:
    code = "from resilience.telemetry import key_label; print(key_label('alice@example.com'))"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENCE_TELEMETRY")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=environment | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_a_shared_salt_gives_one_label_across_processes_and_the_env_can_show_keys() -> None:
    salted = {redaction.KEY_SALT_ENV: "fleet-secret"}
    assert _label_in_subprocess(salted) == _label_in_subprocess(salted)
    # Without a salt each process draws its own: labels do not match across them.
    assert _label_in_subprocess({}) != _label_in_subprocess({})
    assert _label_in_subprocess({redaction.SHOW_KEYS_ENV: "1"}) == EMAIL


def test_show_keys_is_an_explicit_opt_in() -> None:
    assert not telemetry.keys_shown()
    telemetry.configure(show_keys=True)
    assert telemetry.keys_shown()
    error = rejected(EMAIL)
    assert str(error) == f"rate limit 'api' exceeded for key {EMAIL!r}; retry after 60.000s"
    assert telemetry.key_label(EMAIL) == EMAIL
    telemetry.configure(show_keys=False)
    assert EMAIL not in str(rejected(EMAIL))


def test_events_logs_and_json_carry_the_label_never_the_key() -> None:
    seen: list[events.Event] = []
    stop = telemetry.subscribe(seen.append)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(telemetry.JsonFormatter())
    logger = logging.getLogger("resilience")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    clock = FakeClock()
    try:
        limiter = rs.RateLimiter("api", rate=1, per=1.0, burst=1, clock=clock)
        limiter.acquire(API_KEY)
        limiter.acquire(API_KEY, timeout=5)  # waits: RateLimitWaited
        with pytest.raises(rs.RateLimitExceeded):
            limiter.acquire(API_KEY, timeout=0)  # RateLimitRejected
        assert not limiter.try_acquire(API_KEY)
    finally:
        stop()
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    label = telemetry.key_label(API_KEY)
    limiter_events = [
        e for e in seen if isinstance(e, events.RateLimitWaited | events.RateLimitRejected)
    ]
    assert [type(e).__name__ for e in limiter_events] == [
        "RateLimitWaited",
        "RateLimitRejected",
        "RateLimitRejected",
    ]
    for event in limiter_events:
        assert event.key == API_KEY  # in-process subscribers may still act on the key
        assert event.key_label == label
        assert API_KEY not in repr(event) and API_KEY not in event.message()
        assert telemetry.event_fields(event)["key"] == label
    output = stream.getvalue()
    assert API_KEY not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["key"] for line in lines if line.get("event", "").startswith("rate_limiter")] == [
        label,
        label,
        label,
    ]
