"""store_from_url: one URL per backend, options, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import resilience as rs
from resilience.storage import MemoryStore, store_from_url
from resilience.storage.breakers import BreakerStore, MemoryBreakerStore
from resilience.storage.buckets import BucketStore, MemoryBucketStore
from resilience.testing import FakeClock


def test_memory() -> None:
    clock = FakeClock()
    store = store_from_url("memory://", clock=clock)
    assert isinstance(store, MemoryStore)
    assert isinstance(store, MemoryBucketStore) and isinstance(store, MemoryBreakerStore)
    assert isinstance(store, BucketStore) and isinstance(store, BreakerStore)
    assert store._bucket_clock is clock
    assert "MemoryStore(buckets=0, circuits=0" in repr(store)
    limiter = rs.RateLimiter("x", rate=1, store=store)
    assert limiter._take_one is not None  # the memory fast path


def test_sqlite_paths_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resilience.storage.sqlite import SQLiteStore

    absolute = store_from_url(f"sqlite:///{tmp_path}/a.db?timeout=0.5&breaker_staleness=0")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == f"{tmp_path}/a.db"  # sqlite:////abs/path: four slashes
    assert absolute.timeout == 0.5 and absolute.breaker_staleness == 0.0
    monkeypatch.chdir(tmp_path)
    relative = store_from_url("sqlite:///rel.db", timeout=3)
    assert relative.path == "rel.db" and relative.timeout == 3.0
    assert relative.bucket_count() == 0
    assert (tmp_path / "rel.db").exists()
    relative.close()
    absolute.close()


@pytest.mark.parametrize(
    "url", ["sqlite://:memory:", "sqlite:///:memory:", "sqlite://", "sqlite://host/x.db"]
)
def test_sqlite_needs_a_file(url: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(url)
    assert caught.value.fields == ("url",)


def test_sqlite_bad_option() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url("sqlite:///x.db?timeout=soon")
    assert caught.value.fields == ("url.timeout",)
    with pytest.raises(rs.ConfigurationError):
        store_from_url("sqlite:///x.db", timeout=0)


def test_postgres_builds_without_connecting() -> None:
    from resilience.storage.postgres import PostgresStore

    for scheme in ("postgresql", "postgres"):
        store = store_from_url(
            f"{scheme}://app:secret@nowhere.invalid:5439/db", timeout=0.5, table="t"
        )
        assert isinstance(store, PostgresStore)
        assert store.url == "postgresql://app@nowhere.invalid:5439/db"  # no password
        assert "secret" not in repr(store)
        assert store.timeout == 0.5 and store.table == "t"
    with pytest.raises(rs.ConfigurationError) as caught:
        PostgresStore("postgresql://x/y", timeout=-1, table="")
    assert set(caught.value.fields) == {"timeout", "table"}


def test_postgres_unreachable_is_store_unavailable() -> None:
    from resilience.storage.postgres import PostgresStore

    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout=0.5)
    with pytest.raises(rs.StoreUnavailable) as caught:
        store.breaker_load("x", 0.0)
    assert caught.value.store == "postgresql://postgres@127.0.0.1:1/test"
    assert caught.value.__cause__ is not None


def test_redis_goes_to_the_redis_store() -> None:
    pytest.importorskip("resilience.storage.redis")
    store = store_from_url("redis://127.0.0.1:6379/15")
    assert type(store).__name__ == "RedisStore"


def test_drivers_are_imported_only_when_used() -> None:
    import subprocess

    code = (
        "import sys, resilience, resilience.storage as s, tempfile, os;"
        "s.store_from_url('memory://');"
        "s.store_from_url('sqlite:///' + os.path.join(tempfile.mkdtemp(), 'x.db'));"
        "print('psycopg' in sys.modules, 'redis' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("url", ["mongodb://db/x", "", "memcached://h", "file:///tmp/x"])
def test_unknown_schemes(url: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(url)
    assert caught.value.fields == ("url",)
    assert "url" in str(caught.value)


def test_not_a_string() -> None:
    with pytest.raises(rs.ConfigurationError):
        store_from_url(None)  # type: ignore[arg-type]


def test_lazy_attributes() -> None:
    import resilience.storage as storage

    assert storage.SQLiteStore.__name__ == "SQLiteStore"
    with pytest.raises(AttributeError):
        storage.NoSuchStore  # noqa: B018
