"""Storage backends: where policies keep state that several callers share.

Each policy defines its own narrow storage protocol next to its memory
implementation (:mod:`resilience.storage.buckets` for the rate limiter,
:mod:`resilience.storage.breakers` for the circuit breaker). A backend class
implements all of them, so one store object serves every policy:

* :class:`MemoryStore`: this process only (the default of every policy).
* :class:`~resilience.storage.sqlite.SQLiteStore`: several processes on one host.
* ``resilience.storage.redis.RedisStore``: a fleet, through Redis (Cluster).
* :class:`~resilience.storage.postgres.PostgresStore`: a fleet, through PostgreSQL.

:func:`store_from_url` builds any of them from a URL. Driver modules (redis,
psycopg) are imported only when their scheme is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .._clock import Clock
from ..errors import ConfigurationError
from .breakers import BreakerStore, CircuitSnapshot, MemoryBreakerStore
from .buckets import BucketRequest, BucketStore, MemoryBucketStore
from .leasing import LeasingBucketStore

if TYPE_CHECKING:
    from .postgres import PostgresStore as PostgresStore
    from .sqlite import SQLiteStore

__all__ = [
    "BreakerStore",
    "BucketRequest",
    "BucketStore",
    "CircuitSnapshot",
    "LeasingBucketStore",
    "MemoryBreakerStore",
    "MemoryBucketStore",
    "MemoryStore",
    "SQLiteStore",
    "store_from_url",
]
# Also importable from here, lazily (their drivers load only then): PostgresStore,
# RedisStore. They are left out of __all__ so that a star import loads no driver.


class MemoryStore(MemoryBucketStore, MemoryBreakerStore):
    """Every policy's state in this process's memory: buckets and circuits.

    What :func:`store_from_url` returns for ``memory://``. Limiters and
    breakers given the same instance share their state inside this process
    (and the limiters keep their in-memory fast path). ``clock`` is the clock
    the buckets read (the system's monotonic clock by default).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        # MemoryBucketStore.__init__ -> MemoryBreakerStore.__init__ -> object.
        super().__init__(clock)

    def __repr__(self) -> str:
        return (
            f"MemoryStore(buckets={self.bucket_count()}, "
            f"circuits={len(self._breaker_circuits)}, clock={self._bucket_clock!r})"
        )


def __getattr__(name: str) -> Any:
    # The SQL stores are imported on first use: psycopg only when asked for.
    if name == "SQLiteStore":
        return importlib.import_module(".sqlite", __name__).SQLiteStore
    if name == "PostgresStore":
        return importlib.import_module(".postgres", __name__).PostgresStore
    if name == "RedisStore":
        return importlib.import_module(".redis", __name__).RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_FLOAT_OPTIONS = frozenset({"timeout", "breaker_staleness", "socket_timeout"})


def _query_options(query: str) -> dict[str, Any]:
    """``?timeout=2&breaker_staleness=0.5`` -> options (numbers where expected)."""
    options: dict[str, Any] = {}
    for field, value in parse_qsl(query, keep_blank_values=True):
        if field in _FLOAT_OPTIONS:
            try:
                options[field] = float(value)
            except ValueError:
                raise ConfigurationError(
                    "store_from_url", [(f"url.{field}", f"expected a number, got {value!r}")]
                ) from None
        else:
            options[field] = value
    return options


def _sqlite_path(url: str, netloc: str, path: str) -> str:
    """SQLAlchemy's convention: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db``
    absolute; the host part must be empty."""
    if netloc == ":memory:":
        path = "/:memory:"
    elif netloc:
        raise ConfigurationError(
            "store_from_url",
            [("url", f"{url!r}: write sqlite:///relative.db or sqlite:////absolute/path.db")],
        )
    file = unquote(path[1:] if path.startswith("/") else path)
    if file in ("", ":memory:"):
        raise ConfigurationError(
            "store_from_url",
            [
                (
                    "url",
                    f"{url!r}: SQLite needs a file that processes can share; "
                    "for one process use memory://",
                )
            ],
        )
    return file


def store_from_url(url: str, **options: Any) -> Any:
    """Build a store from a URL; ``options`` go to the store's constructor.

    * ``memory://``: a :class:`MemoryStore` (options: ``clock``).
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: a
      :class:`~resilience.storage.sqlite.SQLiteStore` (``timeout``, ``clock``,
      ``breaker_staleness``; also accepted as query parameters).
    * ``redis://host:6379/0``, ``rediss://…``, ``redis+cluster://…`` when
      supported: ``resilience.storage.redis.RedisStore.from_url``.
    * ``postgresql://user@host:5432/db``, ``postgres://…``: a
      :class:`~resilience.storage.postgres.PostgresStore`; the URL is the
      libpq DSN, passed unchanged (``timeout``, ``table``, ``breaker_staleness``
      are keyword options).

    An unknown scheme raises :class:`~resilience.ConfigurationError` naming ``url``.
    """
    if not isinstance(url, str):
        raise ConfigurationError(
            "store_from_url", [("url", f"expected a URL string, got {type(url).__name__}")]
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        path = _sqlite_path(url, parts.netloc, parts.path)
        return SQLiteStore(path, **{**_query_options(parts.query), **options})
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, **options)
    if scheme.startswith("redis"):
        try:
            redis_module = importlib.import_module(".redis", __name__)
        except ImportError as error:
            raise ConfigurationError(
                "store_from_url", [("url", f"{scheme}:// needs the redis extra: {error}")]
            ) from error
        return redis_module.RedisStore.from_url(url, **options)
    known = "memory://, sqlite:///path.db, redis://, rediss://, postgresql://"
    raise ConfigurationError(
        "store_from_url", [("url", f"unknown scheme in {url!r}; expected one of {known}")]
    )
