"""PostgreSQL and what callers hand it: keys, names, break durations, configuration.

* Item 4 of issue 11: every ``str`` key has a bucket of its own (NUL, 1 MB,
  lone surrogates, quotes, SQL); a name the server cannot store is that call's
  ``ValueError``: a bad input is never an outage, under any failure mode.
* Item 5: a huge break is held and reported as it is; one that is not a finite
  number is held as the longest break, never as no break.
* Item 17: configuration mistakes are ``ConfigurationError`` naming the field,
  and no password shows anywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import sys
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

import resilience as rs
from resilience._core.breaker import MAX_BREAK, CircuitState
from resilience._core.bucket import BucketSpec
from resilience.storage._guard import GuardedBreakerStore, GuardedBucketStore
from resilience.storage._sql import encode_key
from resilience.storage.breakers import Transition
from resilience.storage.buckets import BucketRequest
from resilience.storage.postgres import PostgresStore
from resilience.testing import FakeClock

from .backends import STORE_TIMEOUT, require_postgres

pytestmark = pytest.mark.backend

MODES = ["fail_closed", "fail_open", "local"]
FAR = 1_700_000_000.25

BAD_KEYS = [
    "a\x00b",
    "\x00",
    "x" * 1_000_000,
    "x" * 1_000_001,
    "é" * 300,  # 300 characters, 600 bytes
    "\ud800",
    "\udc00",
    "\ud83d\ude00",  # a surrogate pair spelled as two code points: not the emoji
    "😀",
    "{}",
    "'",
    '"',
    "'; DROP TABLE x; --",
    "=",
    "#",
    "",
]


@pytest.fixture
def dsn() -> str:
    return require_postgres()


@pytest.fixture
def store(dsn: str) -> Iterator[PostgresStore]:
    made = PostgresStore(dsn, table="resilience_test", timeout=STORE_TIMEOUT)
    yield made
    made.close()


def fresh() -> str:
    return f"in-{uuid.uuid4().hex}"


# -- keys (item 4) ----------------------------------------------------------------------------


def test_encoded_keys_fit_and_never_collide() -> None:
    plain = "#" + hashlib.sha256(b"\x00").hexdigest()  # a plain key that looks like a digest
    keys: list[str | None] = [None, *BAD_KEYS, plain, "a" * 200, "a" * 201]
    encoded = [encode_key(key) for key in keys]
    assert len(set(encoded)) == len(keys)
    for value in encoded:
        assert "\x00" not in value
        assert len(value.encode("utf-8")) <= 201  # strict UTF-8, small enough to index
    assert encode_key("k") == "=k" and encode_key(None) == ""  # rows written before: unchanged
    assert encode_key("a" * 200) == "=" + "a" * 200
    assert encode_key("a" * 201).startswith("#")
    with pytest.raises(TypeError, match="int"):
        encode_key(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_bad_keys_are_isolated_and_good_keys_keep_their_limits(
    store: PostgresStore, mode: str, outages: list[logging.LogRecord]
) -> None:
    limiter = rs.RateLimiter(
        fresh(), rate=5, per=60.0, burst=5, store=store, on_store_failure=mode, clock=FakeClock(FAR)
    )
    good = ["alice", "bob", "#" + hashlib.sha256(b"a\x00b").hexdigest()]
    keys = [key for pair in zip(good * 6, BAD_KEYS, strict=False) for key in pair]
    keys = list(dict.fromkeys([*keys, *BAD_KEYS, *good]))  # every key once, mixed
    granted = dict.fromkeys(keys, 0)
    for _ in range(8):
        for key in keys:
            granted[key] += limiter.try_acquire(key)
    assert granted == dict.fromkeys(keys, 5)  # 5 per minute each: exactly, and no more
    assert not outages, [r.getMessage() for r in outages]


async def test_bad_keys_async(store: PostgresStore, outages: list[logging.LogRecord]) -> None:
    limiter = rs.RateLimiter(fresh(), rate=2, per=60.0, burst=2, store=store)
    for key in [*BAD_KEYS, "good"]:
        await limiter.aacquire(key, timeout=0)
        await limiter.aacquire(key, timeout=0)
        with pytest.raises(rs.RateLimitExceeded):
            await limiter.aacquire(key, timeout=0)
        assert await limiter.atokens(key) < 1
    assert not outages


def test_bad_keys_across_penalties_and_tokens(store: PostgresStore) -> None:
    spec = BucketSpec.of(rate=1, per=60.0, burst=3)
    name = fresh()
    for key in BAD_KEYS:
        assert store.bucket_tokens(name, key, spec) == pytest.approx(3.0, abs=0.01)
        store.bucket_penalize(name, key, spec, 600.0)
        assert store.bucket_tokens(name, key, spec) == 0.0
    assert store.bucket_tokens(name, "other", spec) == pytest.approx(3.0, abs=0.01)


# -- names (item 4) ---------------------------------------------------------------------------

BAD_NAMES = ["a\x00b", "\ud800", "n" * 2001, "é" * 1001]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", BAD_NAMES, ids=["nul", "surrogate", "long", "long-utf8"])
def test_a_name_the_server_cannot_hold_is_that_calls_value_error(
    store: PostgresStore, mode: str, bad: str, outages: list[logging.LogRecord]
) -> None:
    clock = FakeClock(FAR)
    buckets = GuardedBucketStore(store, mode, clock, "RateLimiter 'x'")  # type: ignore[arg-type]
    breakers = GuardedBreakerStore(store, mode, clock, "CircuitBreaker 'x'")  # type: ignore[arg-type]
    spec = BucketSpec.of(rate=1, per=60.0, burst=1)
    good = fresh()
    calls = [
        lambda: buckets.bucket_take([BucketRequest(bad, "k", 1, spec)]),
        lambda: buckets.bucket_take(
            [BucketRequest(good, "k", 1, spec), BucketRequest(bad, "k", 1, spec)]
        ),
        lambda: buckets.bucket_tokens(bad, None, spec),
        lambda: buckets.bucket_penalize(bad, None, spec, 1.0),
        lambda: breakers.breaker_load(bad, clock.now()),
        lambda: breakers.breaker_transition(
            bad,
            Transition(
                expected_version=0,
                state=CircuitState.OPEN,
                reason="boom",
                trips=1,
                break_duration=1.0,
                now=clock.now(),
            ),
        ),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="policy name") as caught:
            call()
        assert not isinstance(caught.value, rs.StoreUnavailable)
    assert buckets.bucket_take([BucketRequest(good, "k", 1, spec)]).granted  # store is fine
    assert not buckets.bucket_take([BucketRequest(good, "k", 1, spec)]).granted  # and shared
    assert breakers.breaker_load(good, clock.now()).version == 0
    assert not outages, [r.getMessage() for r in outages]


def test_a_driver_data_error_is_that_calls_value_error(store: PostgresStore) -> None:
    # now + 1e308 + 1e308 overflows float8 on the server: the input's fault, not an outage.
    huge = BucketSpec(interval=1.0, burst=1, capacity=1e308 + 1.0, headroom=1e308)
    with pytest.raises(ValueError, match="input") as caught:
        store.bucket_penalize(fresh(), None, huge, 1e308)
    assert isinstance(caught.value.__cause__, psycopg.DataError)
    assert store.breaker_load(fresh(), 0.0).version == 0


def test_a_reason_with_odd_characters_is_stored(store: PostgresStore) -> None:
    name = fresh()
    won, snapshot = store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="bad \x00 and \ud800",
            trips=1,
            break_duration=10.0,
            now=0.0,
        ),
    )
    assert won and snapshot.reason == "bad \ufffd and ?"


# -- break durations (item 5) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "held"),
    [
        (1e9, 1e9),
        (MAX_BREAK, MAX_BREAK),
        (1e300, 1e300),
        (math.inf, MAX_BREAK),
        (math.nan, MAX_BREAK),
    ],
)
def test_a_huge_break_is_held(store: PostgresStore, duration: float, held: float) -> None:
    name = fresh()
    won, snapshot = store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="boom",
            trips=1,
            break_duration=duration,
            now=0.0,
        ),
    )
    assert won and snapshot.state is CircuitState.OPEN
    for seen in (snapshot, store.breaker_load(name, 0.0)):
        assert seen.break_remaining == pytest.approx(held, rel=1e-9, abs=5.0)
    won, again = store.breaker_transition(
        name,
        Transition(
            expected_version=1,
            state=CircuitState.OPEN,
            reason="grown",
            trips=2,
            break_duration=duration,
            now=0.0,
        ),
    )
    assert won and again.break_remaining == pytest.approx(held, rel=1e-9, abs=5.0)


@pytest.mark.parametrize("stored", ["Infinity", "NaN"])
def test_a_non_finite_break_on_record_is_held(store: PostgresStore, dsn: str, stored: str) -> None:
    name = fresh()
    store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="boom",
            trips=1,
            break_duration=10.0,
            now=0.0,
        ),
    )
    with psycopg.connect(dsn, autocommit=True) as admin:  # as an older version wrote it
        admin.execute(
            "UPDATE resilience_test_circuits SET open_until = %s::float8 WHERE name = %s",
            (stored, name),
        )
    assert store.breaker_load(name, 0.0).break_remaining == MAX_BREAK


def test_a_breaker_with_a_huge_break_stays_open(store: PostgresStore) -> None:
    clock = FakeClock(FAR)
    breaker = rs.CircuitBreaker(
        fresh(), failure_threshold=1, break_duration=1e9, store=store, clock=clock
    )

    def boom() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(boom)
    clock.advance(10**6)
    with pytest.raises(rs.CircuitOpenError) as caught:
        breaker.call(int)
    assert caught.value.retry_after is not None and caught.value.retry_after > 1e8


# -- configuration (item 17) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        12345,
        b"postgresql://x/y",
        None,
        "",
        "   ",
        "postgres://",
        "postgresql://",
        "host=db password=hunter2 garbage",
        "postgresql://app:hunter2@db:notaport/app",
        "postgresql://app:hunter2@db:70000/app",
        "postgresql://app:hunter2@db/app?bogus=1",
        "bogus=1 password=hunter2",
    ],
)
def test_a_bad_dsn_is_a_configuration_error_at_construction(dsn: object) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        PostgresStore(dsn)  # type: ignore[arg-type]
    assert caught.value.fields == ("dsn",)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", "5"),
        ("timeout", True),
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", math.inf),
        ("timeout", math.nan),
        ("timeout", 10**400),
        ("timeout", 1e9),
        ("breaker_staleness", "1"),
        ("breaker_staleness", False),
        ("breaker_staleness", -1.0),
        ("breaker_staleness", math.nan),
        ("synchronous_commit", "no"),
        ("synchronous_commit", 0),
        ("table", ""),
        ("table", "t\x00"),
        ("table", 5),
        ("table", "x" * 41),
    ],
)
def test_bad_options_name_their_field(field: str, value: object) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        PostgresStore("postgresql://app:hunter2@db.invalid/app", **{field: value})
    assert caught.value.fields == (field,)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgres://app:hunter2@db.internal:5439/app", "postgresql://app@db.internal:5439/app"),
        ("postgresql://app@db/app?password=hunter2", "postgresql://app@db/app"),
        ("host=db user=app password=hunter2 dbname=app", "postgresql://app@db/app"),
        ("dbname=app", "postgresql:///app"),  # a Unix socket: not "localhost"
        (
            "postgresql://app@%2Fvar%2Frun%2Fpostgresql/app",
            "postgresql://app@%2Fvar%2Frun%2Fpostgresql/app",
        ),
        ("postgresql://[::1]:5433/app", "postgresql://[::1]:5433/app"),
        ("host=a,b port=5432,5433 dbname=app", "postgresql://a:5432,b:5433/app"),
        ("service=billing", "postgresql:///?service=billing"),
    ],
)
def test_the_dsn_is_shown_as_given_without_its_password(dsn: str, shown: str) -> None:
    store = PostgresStore(dsn)
    assert store.url == shown
    assert "hunter2" not in repr(store) and "hunter2" not in store.url
    assert store.dsn == dsn  # what libpq gets: unchanged


def test_no_password_in_an_outage_message_or_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = PostgresStore("postgresql://postgres:hunter2@127.0.0.1:1/test", timeout=0.5)
    limiter = rs.RateLimiter(fresh(), rate=1, per=1.0, store=store, clock=FakeClock(FAR))
    try:
        with pytest.raises(rs.StoreUnavailable) as caught:
            limiter.try_acquire()
        assert caught.value.store == "postgresql://postgres@127.0.0.1:1/test"
        assert "Connection refused" in caught.value.reason or "connect" in caught.value.reason
        assert "hunter2" not in str(caught.value) and "hunter2" not in repr(store)
        assert not any("hunter2" in record.getMessage() for record in caplog.records)
    finally:
        store.close()


def test_an_unreachable_server_fails_fast_once_known_down() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout=2.0)
    try:
        with pytest.raises(rs.StoreUnavailable):
            store.breaker_load("x", 0.0)  # the first call waits for the first attempt
        began = time.monotonic()
        with pytest.raises(rs.StoreUnavailable, match=r"refused|connect"):
            store.breaker_load("x", 0.0)
        assert time.monotonic() - began < 1.0  # known down: no 2 s wait per call
    finally:
        store.close()


def test_the_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for hidden in ("psycopg_pool", "psycopg"):
        monkeypatch.setitem(sys.modules, hidden, None)  # as if not installed
        monkeypatch.delitem(sys.modules, "resilience.storage.postgres")
        with pytest.raises(ImportError) as caught:
            importlib.import_module("resilience.storage.postgres")
        assert "pip install 'resilience[postgres]'" in str(caught.value)
        assert caught.value.name == hidden
        monkeypatch.undo()
