"""SQLite specifics: WAL, lock timeouts, idle-row sweeping, pickling, fork safety,
validation, schema migration, leased probes, breaks that do not fit in a float."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import math
import os
import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import resilience as rs
from resilience._core.breaker import MAX_BREAK, CircuitState
from resilience._core.bucket import BucketSpec
from resilience.storage import sqlite as sqlite_module
from resilience.storage.breakers import Transition
from resilience.storage.buckets import BucketRequest
from resilience.storage.sqlite import SQLiteStore
from resilience.testing import FakeClock

SPEC = BucketSpec.of(rate=1, per=1.0, burst=2)
FAR = 1_000_000.0  # a clock far from zero: nothing may read 0.0 as "long ago"


def test_the_file_uses_wal_and_tables_appear_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    assert not path.exists()  # nothing happens before the first call
    assert store.bucket_count() == 0
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"resilience_buckets", "resilience_circuits"} <= tables
    store.close()


def test_a_locked_file_is_unavailable_within_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, timeout=0.2)
    store.bucket_count()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    started = time.monotonic()
    with pytest.raises(rs.StoreUnavailable) as caught:
        store.bucket_take([BucketRequest("l", None, 1, SPEC)])
    assert time.monotonic() - started < 2.0
    assert "locked" in caught.value.reason
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    blocker.execute("ROLLBACK")
    assert store.bucket_take([BucketRequest("l", None, 1, SPEC)]).granted  # and it recovers
    assert store.bucket_tokens("l", None, SPEC) > 0.99  # reads never wait for writers
    blocker.close()
    store.close()


def test_idle_buckets_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "SWEEP_EVERY", 8)
    monkeypatch.setattr(sqlite_module, "SWEEP_ROWS", 64)
    clock = FakeClock(FAR)
    store = SQLiteStore(tmp_path / "s.db", clock=clock)
    for key in range(100):
        store.bucket_take([BucketRequest("l", str(key), 1, SPEC)])
    assert store.bucket_count("l") == 100
    clock.advance(10.0)  # every bucket is full again
    for key in range(100, 140):
        store.bucket_take([BucketRequest("l", str(key), 1, SPEC)])
    assert store.bucket_count("l") < 100  # the old ones went as new ones came
    assert store.bucket_tokens("l", "3", SPEC) == 2.0  # a swept bucket is full
    store.close()


def test_a_store_pickles_without_its_connection(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", timeout=1.5, breaker_staleness=0.25)
    assert store.bucket_take([BucketRequest("l", None, 1, SPEC)]).granted
    copy = pickle.loads(pickle.dumps(store))
    assert (copy.path, copy.timeout, copy.breaker_staleness) == (store.path, 1.5, 0.25)
    assert copy.bucket_tokens("l", None, SPEC) < 2.0  # the same file
    assert "s.db" in repr(copy)
    copy.close()
    store.close()


def test_a_breaker_polls_the_file(tmp_path: Path) -> None:
    clock = FakeClock(FAR)
    here = rs.CircuitBreaker(
        "c", failure_threshold=1, store=SQLiteStore(tmp_path / "s.db", clock=clock), clock=clock
    )
    there = rs.CircuitBreaker(
        "c", failure_threshold=1, store=SQLiteStore(tmp_path / "s.db", clock=clock), clock=clock
    )
    there.isolate()
    assert here.call(int) == 0  # its cached copy is fresh enough
    clock.advance(1.0)  # the default staleness
    with pytest.raises(rs.CircuitOpenError):
        here.call(int)


def test_a_pickled_store_keeps_its_probe_lease(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", probe_lease=7.5)
    assert pickle.loads(pickle.dumps(store)).probe_lease == 7.5


# -- (17) options are checked when the store is built ------------------------------------------

BAD_OPTIONS: list[tuple[str, Any]] = [
    ("timeout", "5"),
    ("timeout", True),
    ("timeout", 0),
    ("timeout", -1.0),
    ("timeout", math.inf),
    ("timeout", math.nan),
    ("timeout", 10**400),
    ("timeout", 1e9),  # past MAX_TIMEOUT
    ("breaker_staleness", "1"),
    ("breaker_staleness", False),
    ("breaker_staleness", -0.5),
    ("breaker_staleness", math.inf),
    ("breaker_staleness", math.nan),
    ("probe_lease", 0),
    ("probe_lease", -1),
    ("probe_lease", math.inf),
    ("probe_lease", math.nan),
    ("probe_lease", True),
    ("probe_lease", None),
    ("clock", object()),
]


@pytest.mark.parametrize(("field", "value"), BAD_OPTIONS, ids=lambda v: repr(v)[:12])
def test_bad_options_are_configuration_errors_naming_the_field(
    tmp_path: Path, field: str, value: Any
) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        SQLiteStore(tmp_path / "s.db", **{field: value})
    assert caught.value.fields == (field,)
    assert field in str(caught.value)
    assert "configuration configuration" not in str(caught.value)
    assert not (tmp_path / "s.db").exists()


def test_good_options_are_numbers_or_timedeltas(tmp_path: Path) -> None:
    store = SQLiteStore(
        tmp_path / "s.db",
        timeout=datetime.timedelta(milliseconds=250),
        breaker_staleness=0,
        probe_lease=3,
    )
    assert (store.timeout, store.breaker_staleness, store.probe_lease) == (0.25, 0.0, 3.0)
    assert SQLiteStore(tmp_path / "s.db").probe_lease == 60.0


def test_a_path_that_cannot_hold_the_database_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "text.db").write_text("not a database, but long enough to have a header")
    (tmp_path / "folder.db").mkdir()
    for path in (
        tmp_path / "no" / "such" / "dir" / "x.db",
        tmp_path / "folder.db",
        tmp_path / "text.db",
        12345,
        "",
        ":memory:",
        f"{tmp_path}/nul\x00.db",
    ):
        with pytest.raises(rs.ConfigurationError) as caught:
            SQLiteStore(path)  # type: ignore[arg-type]
        assert caught.value.fields == ("path",), path
    assert not (tmp_path / "no").exists()
    (tmp_path / "empty.db").touch()  # an empty file is a database SQLite will initialise
    assert SQLiteStore(tmp_path / "empty.db").bucket_count() == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(rs.ConfigurationError) as caught:
            SQLiteStore(folder / "x.db")
        assert caught.value.fields == ("path",)
    finally:
        folder.chmod(0o700)


def test_a_relative_path_stays_the_file_it_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("rel.db")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert store.bucket_take([BucketRequest("l", None, 1, SPEC)]).granted
    assert store.path == "rel.db" and (tmp_path / "rel.db").exists()
    assert store.bucket_take([BucketRequest("l", None, 1, SPEC)]).granted  # not "deleted"
    store.close()


# -- keys: whatever encode_key makes of a key is what SQLite stores ----------------------------


def test_every_key_goes_through_encode_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def digest(key: str | None) -> str:
        # What _sql.encode_key does to keys a column cannot hold: a fixed-width digest.
        seen.append(key)
        if key is None:
            return ""
        return "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    monkeypatch.setattr(sqlite_module, "encode_key", digest)
    clock = FakeClock(FAR)
    store = SQLiteStore(tmp_path / "s.db", clock=clock)
    keys = ["\x00", "a\x00b", "\ud800", "x\udfff", "k" * 1_000_000, "'; DROP TABLE x; --", "{}"]
    for key in keys:
        one = [BucketRequest("l", key, 1, SPEC)]
        assert [store.bucket_take(one).granted for _ in range(3)] == [True, True, False]
        store.bucket_penalize("l", key, SPEC, 5.0)
        reserved = store.bucket_take(one, max_wait=math.inf)
        store.bucket_refund(one, reserved.reserved)
        assert store.bucket_tokens("l", key, SPEC) == 0.0

    async def twins() -> None:
        one = [BucketRequest("l", "\ud801", 1, SPEC)]
        assert (await store.abucket_take(one)).granted
        await store.abucket_penalize("l", "\ud801", SPEC, 1.0)
        await store.abucket_refund(one, ((0.0, 0.0),))
        assert await store.abucket_tokens("l", "\ud801", SPEC) == 0.0

    asyncio.run(twins())
    assert set(keys) | {"\ud801"} <= set(seen)
    assert store.bucket_count("l") == len(keys) + 1  # one row each, nobody else's
    assert store.bucket_take([BucketRequest("l", "honest", 1, SPEC)]).granted
    store.close()


# -- (5) a break that does not fit in a float still holds ---------------------------------------


@pytest.mark.parametrize("duration", [1e9, math.inf, math.nan, 1e308])
def test_huge_and_non_finite_breaks_hold(tmp_path: Path, duration: float) -> None:
    clock = FakeClock(FAR)
    store = SQLiteStore(tmp_path / "s.db", clock=clock)
    won, snapshot = store.breaker_transition(
        "c",
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="x",
            trips=1,
            break_duration=duration,
            now=0.0,
        ),
    )
    assert won and snapshot.state is CircuitState.OPEN
    expected = duration if math.isfinite(duration) else MAX_BREAK
    assert snapshot.break_remaining == pytest.approx(expected)
    clock.advance(86400.0 * 365)  # a year later: still open
    later = store.breaker_load("c", 0.0)
    assert later.state is CircuitState.OPEN
    assert later.break_remaining == pytest.approx(expected - 86400.0 * 365)
    store.close()


def test_a_row_holding_an_infinite_break_reads_as_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, clock=FakeClock(FAR))
    store.breaker_transition(
        "c",
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="x",
            trips=1,
            break_duration=30.0,
            now=0.0,
        ),
    )
    with sqlite3.connect(path) as raw:  # as an older version wrote it
        raw.execute("UPDATE resilience_circuits SET open_until = ? WHERE name = 'c'", (math.inf,))
    snapshot = store.breaker_load("c", 0.0)
    assert snapshot.state is CircuitState.OPEN and snapshot.break_remaining == MAX_BREAK
    store.close()


def test_a_breaker_with_a_huge_break_stays_open(tmp_path: Path) -> None:
    clock = FakeClock(FAR)
    store = SQLiteStore(tmp_path / "s.db", clock=clock, breaker_staleness=0.0)
    breaker = rs.CircuitBreaker(
        "c", failure_threshold=1, break_duration=1e9, store=store, clock=clock
    )

    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        breaker.call(down)
    assert breaker.state is rs.CircuitState.OPEN
    for _ in range(3):
        clock.advance(86400.0 * 30)
        with pytest.raises(rs.CircuitOpenError):
            breaker.call(int)
    store.close()


# -- (3) probe permits are leased ---------------------------------------------------------------


def _half_open(store: SQLiteStore, name: str = "c") -> int:
    store.breaker_transition(
        name,
        Transition(
            expected_version=0,
            state=CircuitState.OPEN,
            reason="down",
            trips=1,
            break_duration=1.0,
            now=0.0,
        ),
    )
    won, snapshot = store.breaker_transition(
        name,
        Transition(
            expected_version=1,
            state=CircuitState.HALF_OPEN,
            reason="probe",
            trips=1,
            break_duration=0.0,
            now=0.0,
        ),
    )
    assert won
    return snapshot.version


def test_probe_permits_lapse_after_the_lease(tmp_path: Path) -> None:
    clock = FakeClock(FAR)
    store = SQLiteStore(tmp_path / "s.db", clock=clock, probe_lease=10.0)
    version = _half_open(store)
    assert [store.breaker_acquire_probe("c", version, 2, None, 0.0) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    clock.advance(9.5)
    assert not store.breaker_acquire_probe("c", version, 2, None, 0.0)
    clock.advance(0.5)  # both lapse together, 10 s after the last one went out
    assert store.breaker_acquire_probe("c", version, 2, 3.0, 0.0)  # the breaker's own lease
    assert store.breaker_acquire_probe("c", version, 2, 3.0, 0.0)
    assert not store.breaker_acquire_probe("c", version, 2, 3.0, 0.0)
    clock.advance(3.0)
    assert store.breaker_acquire_probe("c", version, 2, math.inf, 0.0)  # inf: probe_lease
    clock.advance(9.9)
    assert store.breaker_acquire_probe("c", version, 2, None, 0.0)
    assert not store.breaker_acquire_probe("c", version, 2, None, 0.0)
    assert not store.breaker_acquire_probe("c", version - 1, 2, None, 0.0)  # stale version
    store.close()


async def test_async_probe_permits_lapse_too(tmp_path: Path) -> None:
    clock = FakeClock(FAR)
    store = SQLiteStore(tmp_path / "s.db", clock=clock, probe_lease=5.0)
    version = _half_open(store)
    assert await store.abreaker_acquire_probe("c", version, 1, None, 0.0)
    assert not await store.abreaker_acquire_probe("c", version, 1, None, 0.0)
    clock.advance(5.0)
    assert await store.abreaker_acquire_probe("c", version, 1, None, 0.0)
    assert await store.abreaker_release_probe("c", version, True) == 1
    store.close()


OLD_CIRCUITS = """CREATE TABLE resilience_circuits (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    trips INTEGER NOT NULL,
    reason TEXT NOT NULL,
    open_until REAL NOT NULL,
    probes_out INTEGER NOT NULL,
    probe_successes INTEGER NOT NULL
)"""


def test_a_file_from_before_leases_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:  # the schema of the previous release, a permit wedged
        raw.execute(OLD_CIRCUITS)
        raw.execute(
            "INSERT INTO resilience_circuits VALUES ('c', 'half_open', 2, 1, 'probe', 0, 1, 0)"
        )
    clock = FakeClock(FAR)
    first, second = SQLiteStore(path, clock=clock), SQLiteStore(path, clock=clock)
    assert first.breaker_load("c", 0.0).state is CircuitState.HALF_OPEN
    assert second.breaker_load("c", 0.0).version == 2  # a second opener finds it migrated
    with sqlite3.connect(path) as raw:
        columns = [row[1] for row in raw.execute("PRAGMA table_info(resilience_circuits)")]
    assert columns.count("probes_lapse_at") == 1
    # The permit wedged under the old schema has no lease time: it has lapsed.
    assert first.breaker_acquire_probe("c", 2, 1, None, 0.0)
    assert not second.breaker_acquire_probe("c", 2, 1, None, 0.0)
    clock.advance(60.0)
    assert second.breaker_acquire_probe("c", 2, 1, None, 0.0)
    first.close()
    second.close()
