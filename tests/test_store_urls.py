"""store_from_url: one URL per backend, options, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import resilience as rs
from resilience.storage import MemoryStore, store_from_url
from resilience.storage.breakers import BreakerStore, InfallibleBreakerStore, MemoryBreakerStore
from resilience.storage.buckets import BucketStore, FastTake, MemoryBucketStore
from resilience.testing import FakeClock


def test_memory() -> None:
    clock = FakeClock(1_000_000.0)
    store = store_from_url("memory://", clock=clock)
    assert isinstance(store, MemoryStore)
    # A composition of the two memory stores, with both protocols and their capabilities.
    assert isinstance(store.buckets, MemoryBucketStore)
    assert isinstance(store.breakers, MemoryBreakerStore)
    assert isinstance(store, BucketStore) and isinstance(store, BreakerStore)
    assert isinstance(store, FastTake) and isinstance(store, InfallibleBreakerStore)
    assert store.clock is clock
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


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("bogus=1", "url.bogus"),
        ("timeout=1&bogus", "url.bogus"),
        ("timeout=inf", "url.timeout"),
        ("timeout=nan", "url.timeout"),
        ("timeout=1&timeout=2", "url.timeout"),
        ("probe_lease=", "url.probe_lease"),
        ("clock=fake", "url.clock"),  # a clock is an object, never a URL option
        ("timeout=-1", "timeout"),
        ("probe_lease=0", "probe_lease"),
        ("breaker_staleness=-1", "breaker_staleness"),
    ],
)
def test_sqlite_query_options_are_checked(tmp_path: Path, query: str, field: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(f"sqlite:///{tmp_path}/x.db?{query}")
    assert caught.value.fields == (field,)
    assert field.removeprefix("url.") in str(caught.value)


def test_sqlite_probe_lease_from_the_url(tmp_path: Path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path}/x.db?probe_lease=2.5&timeout=1")
    assert (store.probe_lease, store.timeout) == (2.5, 1.0)
    assert (
        store_from_url(f"sqlite:///{tmp_path}/x.db?probe_lease=2.5", probe_lease=4).probe_lease == 4
    )


def test_unknown_keyword_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(f"sqlite:///{tmp_path}/x.db", bogus=1, table="t")
    assert caught.value.fields == ("bogus", "table")
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url("memory://", timeout=1.0)
    assert caught.value.fields == ("timeout",)


def test_sqlite_a_file_that_cannot_be_opened_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    assert caught.value.fields == ("path",)
    assert "does not exist" in str(caught.value)
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url("sqlite:///no/such/dir/x.db")
    assert caught.value.fields == ("path",)


@pytest.mark.parametrize("query", ["timeout=1", "clock=x", "x"])
def test_memory_takes_no_url_options(query: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(f"memory://?{query}")
    assert caught.value.fields == (f"url.{query.partition('=')[0]}",)


@pytest.mark.parametrize(
    "url", ["redis:/host", "redis:host:6379", "sqlite:x.db", "memory:", "postgresql:/db"]
)
def test_a_url_must_be_scheme_colon_slash_slash(url: str) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(url)
    assert caught.value.fields == ("url",)


@pytest.mark.parametrize(
    ("url", "driver", "module", "extra"),
    [
        ("postgresql://x/y", "psycopg", "resilience.storage.postgres", "postgres"),
        ("postgres://x/y", "psycopg", "resilience.storage.postgres", "postgres"),
        ("redis://127.0.0.1:1/0", "redis", "resilience.storage.redis", "redis"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, driver: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, driver, None)  # "not installed"
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(rs.ConfigurationError) as caught:
        store_from_url(url)
    assert caught.value.fields == ("url",)
    assert f"pip install 'resilience[{extra}]'" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


def test_a_broken_store_module_is_not_taken_for_a_missing_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "resilience.storage.postgres", None)
    with pytest.raises(ImportError):
        store_from_url("postgresql://x/y")


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
