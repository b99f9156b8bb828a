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
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from .._core.bucket import BucketSpec, Decision
from ..clock import Clock
from ..errors import ConfigurationError
from .breakers import (
    BreakerStore,
    CircuitSnapshot,
    MemoryBreakerStore,
    SnapshotCallback,
    Transition,
)
from .buckets import BucketRequest, BucketStore, FastTaker, MemoryBucketStore
from .jobs import JobStore, MemoryJobStore
from .leasing import LeasingBucketStore

if TYPE_CHECKING:
    from .postgres import PostgresStore as PostgresStore
    from .sqlite import SQLiteStore

__all__ = [
    "BreakerStore",
    "BucketRequest",
    "BucketStore",
    "CircuitSnapshot",
    "JobStore",
    "LeasingBucketStore",
    "MemoryBreakerStore",
    "MemoryBucketStore",
    "MemoryJobStore",
    "MemoryStore",
    "SQLiteStore",
    "store_from_url",
]
# Also importable from here, lazily (their drivers load only then): PostgresStore,
# RedisStore. They are left out of __all__ so that a star import loads no driver.


class MemoryStore:
    """Every policy's state in this process's memory: buckets and circuits.

    What :func:`store_from_url` returns for ``memory://``. Limiters and
    breakers given the same instance share their state inside this process
    (and the limiters keep their in-memory fast path). ``clock`` is the clock
    the buckets read (the system's monotonic clock by default).

    A composition: its :attr:`buckets` (a :class:`MemoryBucketStore`) and its
    :attr:`breakers` (a :class:`MemoryBreakerStore`) answer each protocol's
    calls, forwarded one by one; it has their capabilities too (the limiters'
    :class:`~resilience.storage.buckets.FastTake`, the breakers'
    :class:`~resilience.storage.breakers.InfallibleBreakerStore`).
    """

    breaker_infallible: Literal[True] = True

    def __init__(self, clock: Clock | None = None) -> None:
        self.buckets = MemoryBucketStore(clock)
        self.breakers = MemoryBreakerStore()
        self.jobs = MemoryJobStore(clock)  # job queues find it here (resilience.jobs)
        self.breaker_staleness: float = self.breakers.breaker_staleness
        self.probe_lease: float = self.breakers.probe_lease

    @property
    def clock(self) -> Clock:
        """The clock the buckets read."""
        return self.buckets.clock

    # -- BucketStore, and its FastTake capability --------------------------------------

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        return self.buckets.bucket_take(requests, max_wait)

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        self.buckets.bucket_refund(requests, reserved)

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        self.buckets.bucket_penalize(name, key, spec, seconds)

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return self.buckets.bucket_tokens(name, key, spec)

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return await self.buckets.abucket_take(requests, max_wait)

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        await self.buckets.abucket_refund(requests, reserved)

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        await self.buckets.abucket_penalize(name, key, spec, seconds)

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        return await self.buckets.abucket_tokens(name, key, spec)

    def bucket_fast_take(self, name: str, spec: BucketSpec) -> FastTaker:
        return self.buckets.bucket_fast_take(name, spec)

    def bucket_count(self, name: str | None = None) -> int:
        """Buckets held, for one limiter name or for all (idle ones included)."""
        return self.buckets.bucket_count(name)

    def evict_idle_buckets(self) -> int:
        """Drop every bucket that is full again now; returns how many were dropped."""
        return self.buckets.evict_idle_buckets()

    # -- BreakerStore --------------------------------------------------------------------

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self.breakers.breaker_load(name, now)

    def breaker_transition(self, name: str, change: Transition) -> tuple[bool, CircuitSnapshot]:
        return self.breakers.breaker_transition(name, change)

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return self.breakers.breaker_acquire_probe(name, version, limit, lease, now)

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return self.breakers.breaker_release_probe(name, version, succeeded)

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> Callable[[], None]:
        return self.breakers.breaker_watch(name, callback)

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return await self.breakers.abreaker_load(name, now)

    async def abreaker_transition(
        self, name: str, change: Transition
    ) -> tuple[bool, CircuitSnapshot]:
        return await self.breakers.abreaker_transition(name, change)

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        return await self.breakers.abreaker_acquire_probe(name, version, limit, lease, now)

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return await self.breakers.abreaker_release_probe(name, version, succeeded)

    def __repr__(self) -> str:
        return (
            f"MemoryStore(buckets={self.bucket_count()}, "
            f"circuits={self.breakers.circuit_count()}, clock={self.clock!r})"
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


#: What each scheme takes: keyword options, and those also accepted in the URL's query.
_OPTIONS: dict[str, frozenset[str]] = {
    "memory": frozenset({"clock"}),
    "sqlite": frozenset({"timeout", "clock", "breaker_staleness", "probe_lease"}),
}
_QUERY_OPTIONS: dict[str, frozenset[str]] = {
    "memory": frozenset(),
    "sqlite": frozenset({"timeout", "breaker_staleness", "probe_lease"}),
}
#: The top-level modules each extra installs (a missing one means: install the extra).
_DRIVERS: dict[str, frozenset[str]] = {
    "redis": frozenset({"redis"}),
    "postgres": frozenset({"psycopg", "psycopg_binary", "psycopg_c", "psycopg_pool"}),
}


def _problem(field: str, message: str) -> ConfigurationError:
    return ConfigurationError("store_from_url", [(field, message)])


def _query_options(scheme: str, query: str) -> dict[str, Any]:
    """``?timeout=2&breaker_staleness=0.5`` -> options; every one must be the scheme's,
    given once, and a finite number."""
    allowed = _QUERY_OPTIONS[scheme]
    expected = ", ".join(sorted(allowed)) or "none"
    options: dict[str, Any] = {}
    for field, value in parse_qsl(query, keep_blank_values=True):
        if field not in allowed:
            raise _problem(
                f"url.{field}", f"unknown option for {scheme}:// (its URL options: {expected})"
            )
        if field in options:
            raise _problem(f"url.{field}", "given twice")
        try:
            number = float(value)
        except ValueError:
            raise _problem(f"url.{field}", f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise _problem(f"url.{field}", f"expected a finite number, got {value!r}")
        options[field] = number
    return options


def _check_options(scheme: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - _OPTIONS[scheme])
    if unknown:
        expected = ", ".join(sorted(_OPTIONS[scheme]))
        raise ConfigurationError(
            "store_from_url",
            [
                (name, f"not an option of {scheme}:// stores (options: {expected})")
                for name in unknown
            ],
        )


def _missing_driver(error: ImportError, scheme: str, extra: str) -> ConfigurationError | None:
    """The error to raise when ``error`` says the extra's driver is not installed."""
    missing = (error.name or "").partition(".")[0]
    if missing not in _DRIVERS[extra]:
        return None  # something else is broken: not a matter of configuration
    return _problem(
        "url",
        f"{scheme}:// needs the {extra} extra ({missing} is not installed): "
        f"pip install 'resilience[{extra}]'",
    )


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

    * ``memory://``: a :class:`MemoryStore` (options: ``clock``; no URL options).
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: a
      :class:`~resilience.storage.sqlite.SQLiteStore` (``timeout``, ``clock``,
      ``breaker_staleness``, ``probe_lease``; all but ``clock`` also accepted as
      query parameters, where keyword options win).
    * ``redis://host:6379/0``, ``rediss://…``, ``redis+cluster://…`` when
      supported: ``resilience.storage.redis.RedisStore.from_url``.
    * ``postgresql://user@host:5432/db``, ``postgres://…``: a
      :class:`~resilience.storage.postgres.PostgresStore`; the URL is the
      libpq DSN, passed unchanged (``timeout``, ``table``, ``breaker_staleness``
      are keyword options).

    Raises :class:`~resilience.ConfigurationError` for an unknown scheme or a
    URL that is not ``scheme://…`` (naming ``url``), an option the store does
    not take (naming it; ``url.<name>`` for a query parameter), and a missing
    driver (naming the extra to install: ``pip install 'resilience[redis]'``).
    """
    if not isinstance(url, str):
        raise ConfigurationError(
            "store_from_url", [("url", f"expected a URL string, got {type(url).__name__}")]
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    known_scheme = scheme in ("memory", "sqlite", "postgresql", "postgres") or scheme.startswith(
        "redis"
    )
    if known_scheme and not url[len(scheme) :].startswith("://"):
        raise _problem("url", f"{url!r}: expected {scheme}://…")
    if scheme == "memory":
        _check_options(scheme, options)
        _query_options(scheme, parts.query)  # it takes none: any is refused
        return MemoryStore(**options)
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        _check_options(scheme, options)
        path = _sqlite_path(url, parts.netloc, parts.path)
        return SQLiteStore(path, **{**_query_options(scheme, parts.query), **options})
    if scheme in ("postgresql", "postgres"):
        try:
            postgres_module = importlib.import_module(".postgres", __name__)
        except ImportError as error:
            raise (_missing_driver(error, scheme, "postgres") or error) from error
        return postgres_module.PostgresStore(url, **options)
    if scheme.startswith("redis"):
        try:
            redis_module = importlib.import_module(".redis", __name__)
        except ImportError as error:
            raise (_missing_driver(error, scheme, "redis") or error) from error
        return redis_module.RedisStore.from_url(url, **options)
    known = "memory://, sqlite:///path.db, redis://, rediss://, postgresql://"
    raise _problem("url", f"unknown scheme in {url!r}; expected one of {known}")
