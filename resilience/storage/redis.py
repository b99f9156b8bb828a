"""Token buckets and circuits in Redis (or Redis Cluster), sync and asyncio.

:class:`RedisStore` implements both :class:`~resilience.storage.buckets.BucketStore`
and :class:`~resilience.storage.breakers.BreakerStore`, so one store serves every
rate limiter and circuit breaker of a service::

    store = RedisStore.from_url("redis://cache:6379/0")
    limiter = RateLimiter("emails", rate=100, per=60.0, store=store)
    breaker = CircuitBreaker("payments", failure_threshold=5, store=store)

Design
------
* **One script per state change.** Each operation is one Lua script
  (:mod:`resilience.storage._redis_scripts`), executed atomically by the
  server with ``EVALSHA`` (and loaded again on ``NOSCRIPT``): one round trip,
  no ``WATCH``/``MULTI`` retries, no lock. A composite acquisition over several
  buckets is one script over all their keys.
* **The server's clock.** Scripts read ``TIME`` themselves; the client's clock
  is never used, so processes whose clocks disagree share one bucket. (Redis's
  ``TIME`` is its wall clock: if it is stepped backwards, buckets look emptier,
  which errs on the safe side; stepped forwards, they refill early.)
* **One decision, two implementations that agree exactly.** The bucket scripts
  apply the pure rule of :func:`resilience._bucket.take_all` (for one bucket
  without waiting, :func:`~resilience._bucket.take_now`) and answer with the
  buckets' states before the take and the server time they used; the client
  then computes the :class:`~resilience._bucket.Decision` (wait, retry_after,
  tokens) from those with the pure core's functions. Floats cross the wire as
  round-tripping text and both sides do the same operations in the same order,
  so the server's grant and the client's decision agree bit for bit (the
  general path checks it on every call; a differential property test holds
  every path to the in-memory store).
* **Keys.** ``{prefix}:{<name>}:b`` (a limiter's unkeyed bucket),
  ``{prefix}:{<name>}:k:<key>`` (a keyed bucket) and ``{prefix}:{<name>}:c``
  (a circuit, one hash). The policy name is the hash tag, so all keys of one
  limiter or breaker live in one Redis Cluster slot. With ``hash_tag=`` the tag
  is chosen instead (``{prefix}:{<tag>}:n<len>:<name>:...``): limiters combined
  with :meth:`RateLimiter.all <resilience.RateLimiter.all>` on a cluster must
  share a tag, since one script may only touch one slot. Names and prefixes may
  not contain ``{`` or ``}``.
* **Idle keys expire.** A bucket key expires (``PX``) when the bucket is full
  again, plus ``expiry_margin`` seconds: a full bucket and a missing key are
  the same. Circuits never expire: there is one small hash per breaker name,
  and its version number must never go backwards.
* **Values are numbers and short strings**, never pickle.
* **Failures.** Every call has a socket timeout (``timeout``, 0.25 s by
  default, also the connect timeout) and is retried at most once, at once, on a
  broken connection (a server restart leaves stale pooled connections), never
  on a timeout. Any driver error becomes :class:`~resilience.StoreUnavailable`
  raised ``from`` the original.
* **Probe permits** of a half-open circuit are leased for ``probe_lease``
  seconds (60 by default) after the last one was handed out, so permits held by
  a process that died do not wedge the circuit in HALF_OPEN forever.
* **Breaker freshness.** The store cannot push changes unless ``pubsub=True``
  (a background thread per process subscribes to transitions); breakers then
  get every transition at once. Otherwise they reload the circuit at most
  ``breaker_staleness`` seconds (0.5 by default) after their last look (one
  call in that period pays the round trip). The closed-state success path
  itself reports nothing to the store.

Async use: with a URL, the store makes one ``redis.asyncio`` client per event
loop on first use (an asyncio connection belongs to the loop that opened it).
Given a sync ``client`` and no ``async_client``, the async methods run the sync
ones in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._breaker_core import CircuitState
from .._bucket import BucketSpec, Decision, exact_delay, take_all, tokens
from ..errors import ConfigurationError, StoreUnavailable
from . import _redis_scripts as scripts
from .breakers import CircuitSnapshot, SnapshotCallback
from .buckets import BucketRequest

__all__ = ["RedisStore"]

_log = logging.getLogger(__name__)

#: What a driver may raise: all of it becomes StoreUnavailable.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,  # includes the builtin TimeoutError
    asyncio.TimeoutError,
)

_SCRIPTS = {
    "take": scripts.BUCKET_TAKE,
    "take_one": scripts.BUCKET_TAKE_ONE,
    "refund": scripts.BUCKET_REFUND,
    "penalize": scripts.BUCKET_PENALIZE,
    "read": scripts.BUCKET_READ,
    "load": scripts.BREAKER_LOAD,
    "transition": scripts.BREAKER_TRANSITION,
    "acquire": scripts.BREAKER_ACQUIRE_PROBE,
    "release": scripts.BREAKER_RELEASE_PROBE,
}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _snapshot(reply: Sequence[Any]) -> CircuitSnapshot:
    state, version, trips, reason, remaining = reply
    return CircuitSnapshot(
        CircuitState(_text(state)), int(version), int(trips), _text(reason), float(remaining)
    )


def _describe(client: Any) -> str:
    """``redis://host:port/db`` for a client, without credentials."""
    if isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster):
        try:
            node = client.get_default_node()
            return f"redis-cluster://{node.host}:{node.port}"
        except Exception:  # pragma: no cover - a client without nodes yet
            return "redis-cluster://?"
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:  # pragma: no cover - not a redis-py client
        return repr(client)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,
    "timeout": float,
    "breaker_staleness": float,
    "probe_lease": float,
    "expiry_margin": float,
    "hash_tag": str,
    "cluster": lambda value: value.lower() in ("1", "true", "yes", "on"),
    "pubsub": lambda value: value.lower() in ("1", "true", "yes", "on"),
}


def _split_url(url: str) -> tuple[str, dict[str, Any]]:
    """Take the store's own options out of a URL's query (and ``+cluster`` out of its scheme)."""
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    scheme = parts.scheme.lower()
    if scheme.endswith("+cluster"):
        scheme = scheme.removesuffix("+cluster")
        options["cluster"] = True
    kept: list[tuple[str, str]] = []
    for field, value in parse_qsl(parts.query, keep_blank_values=True):
        parse = _URL_OPTIONS.get(field)
        if parse is None:
            kept.append((field, value))
            continue
        try:
            options[field] = parse(value)
        except ValueError:
            raise ConfigurationError(
                "RedisStore", [(f"url.{field}", f"expected a number, got {value!r}")]
            ) from None
    rebuilt = urlunsplit((scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
    return rebuilt, options


_NO_LIMIT = b"-1"  # max_wait = inf, for the take script


def _shape(spec: BucketSpec, cost: int) -> tuple[bytes, bytes, bytes]:
    """The take script's arguments for one bucket, as exact text: computed the way
    :func:`resilience._bucket.take_all` computes them, so both sides agree bit for bit."""
    increment = cost * spec.interval
    return (
        repr(spec.headroom_for(cost)).encode(),
        repr(spec.capacity - increment).encode(),
        repr(increment).encode(),
    )


def _server_time(seconds: Any, microseconds: Any) -> float:
    """``TIME`` as the scripts compute it: the same two operations, the same double."""
    return float(int(seconds)) + float(int(microseconds)) / 1000000


def _state(value: Any) -> float:
    """A bucket's stored text (``%.17g``), or ``-inf`` (full) for a missing key."""
    return float(value) if value else -math.inf


#: Each script's SHA1, for EVALSHA (the server caches scripts by it).
_SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SCRIPTS.items()}


class _AsyncSide:
    """The async client of one event loop."""

    __slots__ = ("client",)

    def __init__(self, client: Any) -> None:
        self.client = client


class RedisStore:
    """Rate-limiter buckets and breaker circuits in Redis: see the module docs.

    Build it from a URL (``redis://``, ``rediss://``, ``unix://``) or from
    existing redis-py clients (``client=`` a ``redis.Redis`` or
    ``redis.cluster.RedisCluster``; ``async_client=`` their ``redis.asyncio``
    twins). Clients passed in keep their own timeouts and retry settings.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        prefix: str = "resilience",
        timeout: float = 0.25,
        cluster: bool = False,
        hash_tag: str | Mapping[str, str] | None = None,
        breaker_staleness: float = 0.5,
        probe_lease: float = 60.0,
        expiry_margin: float = 1.0,
        pubsub: bool = False,
    ) -> None:
        problems: list[tuple[str, str]] = []
        if url is None and client is None and async_client is None:
            problems.append(("url", "give a redis:// URL or a client"))
        if url is not None and (client is not None or async_client is not None):
            problems.append(("url", "give a URL or clients, not both"))
        if not prefix or "{" in prefix or "}" in prefix:
            problems.append(("prefix", f"must be non-empty, without braces, got {prefix!r}"))
        tags = [hash_tag] if isinstance(hash_tag, str) else list((hash_tag or {}).values())
        if any(not tag or "{" in tag or "}" in tag for tag in tags):
            problems.append(("hash_tag", "tags must be non-empty, without braces"))
        for field, value in (
            ("timeout", timeout),
            ("breaker_staleness", breaker_staleness),
            ("probe_lease", probe_lease),
            ("expiry_margin", expiry_margin),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                problems.append((field, f"must be a finite number >= 0, got {value!r}"))
        if timeout == 0:
            problems.append(("timeout", "must be > 0"))
        if problems:
            raise ConfigurationError("RedisStore", problems)

        if url is not None and (urlsplit(url).query or "+cluster" in url.split("://")[0]):
            url, from_query = _split_url(url)
            cluster = cluster or bool(from_query.get("cluster"))
            if set(from_query) - {"cluster"}:
                raise ConfigurationError(
                    "RedisStore",
                    [("url", f"store options in the URL need RedisStore.from_url: {url!r}")],
                )
        self._url = url
        self._timeout = float(timeout)
        self._cluster = cluster or isinstance(
            client or async_client,
            redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster,
        )
        if url is not None:
            scheme = urlsplit(url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise ConfigurationError(
                    "RedisStore", [("url", f"expected redis://, rediss:// or unix://, got {url!r}")]
                )
            client = self._make_sync(url)
        self._client = client
        self._async_given = async_client
        self._async_sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncSide]
        self._async_sides = weakref.WeakKeyDictionary()
        self._async_lock = threading.Lock()
        self.name = _describe(client if client is not None else async_client)
        self.prefix = prefix
        self._hash_tag = hash_tag
        self.breaker_staleness = float(breaker_staleness)
        self._probe_lease = float(probe_lease)
        self._margin = str(int(expiry_margin * 1000)).encode()
        self._shapes: dict[tuple[BucketSpec, int], tuple[bytes, bytes, bytes]] = {}
        self._bucket_keys: dict[tuple[str, Any], str] = {}
        self._pubsub = pubsub
        self._watcher: _Watcher | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """``RedisStore(url, **options)``: the form :func:`store_from_url` uses.

        The store's own options may also be given as query parameters
        (``redis://host/0?prefix=myapp&timeout=0.5``); keyword options win.
        ``redis+cluster://`` and ``rediss+cluster://`` mean ``cluster=True``.
        Other query parameters are redis-py's.
        """
        url, from_query = _split_url(url)
        return cls(url, **{**from_query, **options})

    # -- clients -------------------------------------------------------------------

    def _make_sync(self, url: str) -> Any:
        options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
        }
        if self._cluster:
            # One immediate retry (after refreshing the slot map) instead of redis-py's
            # default of several with backoff: a call's time stays bounded.
            return redis.cluster.RedisCluster.from_url(url, retry=Retry(NoBackoff(), 1), **options)
        # One immediate retry on a broken connection (stale after a server restart);
        # never on a timeout, which may have run the script.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        return redis.Redis.from_url(url, retry=retry, **options)

    def _make_async(self, url: str) -> Any:
        options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
        }
        if self._cluster:
            retry = redis.asyncio.retry.Retry(NoBackoff(), 1)
            return redis.asyncio.cluster.RedisCluster.from_url(url, retry=retry, **options)
        retry = redis.asyncio.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )
        return redis.asyncio.Redis.from_url(url, retry=retry, **options)

    def _async_side(self) -> _AsyncSide | None:
        """The async client for the running loop (``None``: run the sync client in a thread)."""
        loop = asyncio.get_running_loop()
        side = self._async_sides.get(loop)
        if side is not None:
            return side
        with self._async_lock:
            side = self._async_sides.get(loop)
            if side is None:
                if self._async_given is not None:
                    side = _AsyncSide(self._async_given)
                elif self._url is not None:
                    side = _AsyncSide(self._make_async(self._url))
                else:
                    return None
                self._async_sides[loop] = side
        return side

    def close(self) -> None:
        """Close the sync client's connections (and stop the pub/sub watcher)."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._client is not None and self._url is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the running loop's async client, if the store made it."""
        loop = asyncio.get_running_loop()
        side = self._async_sides.pop(loop, None)
        if side is not None and self._url is not None:
            await side.client.aclose()

    def __repr__(self) -> str:
        return f"RedisStore({self.name!r}, prefix={self.prefix!r})"

    # -- calling scripts -------------------------------------------------------------

    def _fail(self, error: BaseException) -> NoReturn:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise StoreUnavailable(self.name, reason) from error

    def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._client is None:
            raise StoreUnavailable(self.name, "no sync client: use the async methods")
        client = self._client
        try:
            try:
                return client.evalsha(_SHAS[script], len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # a restarted server, a new node
                client.script_load(_SCRIPTS[script])
                return client.evalsha(_SHAS[script], len(keys), *keys, *args)
        except _DRIVER_ERRORS as error:
            self._fail(error)

    async def _arun(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        side = self._async_side()
        if side is None:
            return await asyncio.to_thread(self._run, script, keys, args)
        client = side.client
        try:
            try:
                return await client.evalsha(_SHAS[script], len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                await client.script_load(_SCRIPTS[script])
                return await client.evalsha(_SHAS[script], len(keys), *keys, *args)
        except _DRIVER_ERRORS as error:
            self._fail(error)

    # -- keys --------------------------------------------------------------------------

    def _tag(self, name: str) -> str:
        tag = self._hash_tag
        if tag is None:
            return name
        if isinstance(tag, str):
            return tag
        return tag.get(name, name)

    def _base(self, name: str) -> str:
        if "{" in name or "}" in name:
            raise ConfigurationError(
                "RedisStore", [("name", f"policy names may not contain braces, got {name!r}")]
            )
        tag = self._tag(name)
        if tag == name:
            return f"{self.prefix}:{{{name}}}"
        return f"{self.prefix}:{{{tag}}}:n{len(name)}:{name}"

    def bucket_key(self, name: str, key: str | None) -> str:
        """The Redis key of bucket ``(name, key)``."""
        cache_key = (name, key)
        found = self._bucket_keys.get(cache_key)
        if found is not None:
            return found
        base = self._base(name)
        made = f"{base}:b" if key is None else f"{base}:k:{key}"
        if len(self._bucket_keys) < 10_000:  # keyed limiters may see unbounded keys
            self._bucket_keys[cache_key] = made
        return made

    def circuit_key(self, name: str) -> str:
        """The Redis key (a hash) of circuit ``name``."""
        return f"{self._base(name)}:c"

    def _check_slots(self, requests: Sequence[BucketRequest]) -> None:
        if self._cluster and len({self._tag(request.name) for request in requests}) > 1:
            names = sorted({request.name for request in requests})
            raise ConfigurationError(
                "RedisStore",
                [
                    (
                        "hash_tag",
                        f"on Redis Cluster, limiters combined in one acquisition must share "
                        f"a hash tag (one slot); {names} do not: pass hash_tag=",
                    )
                ],
            )

    # -- buckets -------------------------------------------------------------------------

    def _take_args(
        self, requests: Sequence[BucketRequest], max_wait: float
    ) -> tuple[list[str], list[Any]]:
        if len(requests) > 1:
            self._check_slots(requests)
        keys = [self.bucket_key(request.name, request.key) for request in requests]
        wait = _NO_LIMIT if max_wait == math.inf else repr(float(max_wait)).encode()
        args: list[Any] = [wait, self._margin]
        shapes = self._shapes
        for request in requests:
            shape = shapes.get((request.spec, request.cost))
            if shape is None:
                shape = _shape(request.spec, request.cost)
                if len(shapes) < 1024:
                    shapes[(request.spec, request.cost)] = shape
            args += shape
        return keys, args

    @staticmethod
    def _take_decision(
        requests: Sequence[BucketRequest], max_wait: float, reply: Sequence[Any]
    ) -> tuple[Decision, float, tuple[float, ...]]:
        granted, now = int(reply[0]), _server_time(reply[1], reply[2])
        old = tuple(_state(value) for value in reply[3:])
        _, decision = take_all(
            old,
            now,
            [request.cost for request in requests],
            [request.spec for request in requests],
            max_wait,
        )
        if decision.granted != bool(granted):  # pragma: no cover - the scripts' contract
            raise AssertionError(
                f"RedisStore: the server's grant ({granted}) and the core's decision "
                f"({decision}) disagree for {requests} at {now!r}, states {old}"
            )
        return decision, now, old

    def _bucket_take_raw(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> tuple[Decision, float, tuple[float, ...]]:
        """:meth:`bucket_take`, also returning the server time and the states it saw."""
        if len(requests) == 1:
            keys, args = self._take_one_args(requests[0], max_wait)
            reply = self._run("take_one", keys, args)
            return self._take_one_decision(requests, max_wait, reply)
        keys, args = self._take_args(requests, max_wait)
        return self._take_decision(requests, max_wait, self._run("take", keys, args))

    async def _abucket_take_raw(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> tuple[Decision, float, tuple[float, ...]]:
        if len(requests) == 1:
            keys, args = self._take_one_args(requests[0], max_wait)
            reply = await self._arun("take_one", keys, args)
            return self._take_one_decision(requests, max_wait, reply)
        keys, args = self._take_args(requests, max_wait)
        return self._take_decision(requests, max_wait, await self._arun("take", keys, args))

    def _take_one_args(
        self, request: BucketRequest, max_wait: float
    ) -> tuple[list[str], list[Any]]:
        shape = self._shapes.get((request.spec, request.cost))
        if shape is None:
            shape = _shape(request.spec, request.cost)
            if len(self._shapes) < 1024:
                self._shapes[(request.spec, request.cost)] = shape
        key = self.bucket_key(request.name, request.key)
        if max_wait == 0:
            return [key], [shape[0], shape[2], self._margin, b"0"]
        wait = _NO_LIMIT if max_wait == math.inf else repr(float(max_wait)).encode()
        return [key], [shape[0], shape[2], self._margin, wait, shape[1]]

    @classmethod
    def _take_one_decision(
        cls, requests: Sequence[BucketRequest], max_wait: float, reply: Any
    ) -> tuple[Decision, float, tuple[float, ...]]:
        """The decision of :func:`~resilience._bucket.take_all` for one bucket, from the
        script's answer "granted seconds microseconds state" (state empty: full)."""
        granted, seconds, microseconds, state = _text(reply).split(" ")
        if max_wait != 0:
            return cls._take_decision(requests, max_wait, (granted, seconds, microseconds, state))
        # max_wait = 0: take_all reduces to take_now, decided here in a few operations.
        now = _server_time(seconds, microseconds)
        tat = _state(state)
        request = requests[0]
        spec, cost = request.spec, request.cost
        if granted == "1":
            new = (tat if tat > now else now) + cost * spec.interval
            return Decision(True, 0.0, 0.0, tokens(new, now, spec)), now, (tat,)
        delay = exact_delay(spec.start_time(tat, cost), now)
        return Decision(False, 0.0, delay, tokens(tat, now, spec)), now, (tat,)

    def bucket_take(self, requests: Sequence[BucketRequest], max_wait: float = 0.0) -> Decision:
        return self._bucket_take_raw(requests, max_wait)[0]

    async def abucket_take(
        self, requests: Sequence[BucketRequest], max_wait: float = 0.0
    ) -> Decision:
        return (await self._abucket_take_raw(requests, max_wait))[0]

    def _refund_args(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> tuple[list[str], list[Any]]:
        if len(requests) > 1:
            self._check_slots(requests)
        keys = [self.bucket_key(request.name, request.key) for request in requests]
        args: list[Any] = [self._margin]
        for before, after in reserved:
            args += (repr(float(before)), repr(float(after)))
        return keys, args

    def bucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        if reserved:
            self._run("refund", *self._refund_args(requests, reserved))

    async def abucket_refund(
        self, requests: Sequence[BucketRequest], reserved: Sequence[tuple[float, float]]
    ) -> None:
        if reserved:
            await self._arun("refund", *self._refund_args(requests, reserved))

    def _penalize_args(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> tuple[list[str], list[Any]]:
        keys = [self.bucket_key(name, key)]
        return keys, [repr(float(seconds)), repr(spec.capacity - spec.interval), self._margin]

    def _bucket_penalize_raw(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> tuple[float, float]:
        """:meth:`bucket_penalize`, returning the server time and the state before."""
        seconds_, microseconds, tat = self._run(
            "penalize", *self._penalize_args(name, key, spec, seconds)
        )
        return _server_time(seconds_, microseconds), _state(tat)

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        self._bucket_penalize_raw(name, key, spec, seconds)

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        await self._arun("penalize", *self._penalize_args(name, key, spec, seconds))

    def _bucket_read(self, name: str, key: str | None) -> tuple[float, float]:
        """The server time and the bucket's state (``-inf``: full)."""
        seconds, microseconds, tat = self._run("read", [self.bucket_key(name, key)], [])
        return _server_time(seconds, microseconds), _state(tat)

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        now, tat = self._bucket_read(name, key)
        return tokens(tat, now, spec)

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        seconds, microseconds, tat = await self._arun("read", [self.bucket_key(name, key)], [])
        return tokens(_state(tat), _server_time(seconds, microseconds), spec)

    # -- circuits --------------------------------------------------------------------------

    def _channel(self, name: str) -> str:
        return f"{self.circuit_key(name)}:events" if self._pubsub else ""

    def _transition_args(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
    ) -> tuple[list[str], list[Any]]:
        duration = repr(float(break_duration))  # "inf" parses in Lua too
        args = [expected_version, state.value, reason, trips, duration, self._channel(name)]
        return [self.circuit_key(name)], args

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return _snapshot(self._run("load", [self.circuit_key(name)], []))

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return _snapshot(await self._arun("load", [self.circuit_key(name)], []))

    def breaker_transition(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]:
        args = self._transition_args(name, expected_version, state, reason, trips, break_duration)
        reply = self._run("transition", *args)
        return bool(int(reply[0])), _snapshot(reply[1:])

    async def abreaker_transition(
        self,
        name: str,
        expected_version: int,
        state: CircuitState,
        reason: str,
        trips: int,
        break_duration: float,
        now: float,
    ) -> tuple[bool, CircuitSnapshot]:
        args = self._transition_args(name, expected_version, state, reason, trips, break_duration)
        reply = await self._arun("transition", *args)
        return bool(int(reply[0])), _snapshot(reply[1:])

    def breaker_acquire_probe(self, name: str, version: int, limit: int) -> bool:
        args = [version, limit, repr(self._probe_lease)]
        return bool(int(self._run("acquire", [self.circuit_key(name)], args)))

    async def abreaker_acquire_probe(self, name: str, version: int, limit: int) -> bool:
        args = [version, limit, repr(self._probe_lease)]
        return bool(int(await self._arun("acquire", [self.circuit_key(name)], args)))

    @staticmethod
    def _verdict(succeeded: bool | None) -> str:
        return "" if succeeded is None else "1" if succeeded else "0"

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        args = [version, self._verdict(succeeded)]
        return int(self._run("release", [self.circuit_key(name)], args))

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        args = [version, self._verdict(succeeded)]
        return int(await self._arun("release", [self.circuit_key(name)], args))

    def breaker_watch(self, name: str, callback: SnapshotCallback) -> Callable[[], None] | None:
        """Push transitions to ``callback`` when built with ``pubsub=True``; else ``None``.

        Breakers fall back to polling (:attr:`breaker_staleness`) with ``None``.
        """
        if not self._pubsub or self._client is None:
            return None
        with self._async_lock:
            if self._watcher is None:
                self._watcher = _Watcher(self)
            watcher = self._watcher
        return watcher.add(name, self._channel(name), callback)


class _Watcher:
    """One background thread per store, subscribed to the channels of watched circuits.

    Robustness: messages are hints, never the only source of truth. While the
    subscription is down (Redis restarting), the thread reconnects with backoff;
    after every (re)subscription it reloads each watched circuit and hands the
    snapshot to its callbacks, so a transition published while disconnected is
    not lost. Callbacks ignore snapshots older than what they hold.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._callbacks: dict[str, list[Callable[[], SnapshotCallback | None]]] = {}
        self._names: dict[str, str] = {}  # channel -> circuit name
        self._stopped = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="resilience-redis-watch", daemon=True
        )
        self._thread.start()

    def add(self, name: str, channel: str, callback: SnapshotCallback) -> Callable[[], None]:
        ref: Callable[[], SnapshotCallback | None]
        if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
            ref = weakref.WeakMethod(callback)
        else:
            ref = lambda: callback  # noqa: E731 - the same shape as a WeakMethod
        with self._lock:
            self._callbacks.setdefault(channel, []).append(ref)
            self._names[channel] = name
        self._changed.set()

        def unwatch() -> None:
            with self._lock:
                refs = self._callbacks.get(channel, [])
                if ref in refs:
                    refs.remove(ref)

        return unwatch

    def stop(self) -> None:
        self._stopped.set()
        self._changed.set()

    def _deliver(self, channel: str, snapshot: CircuitSnapshot) -> None:
        with self._lock:
            refs = list(self._callbacks.get(channel, ()))
        for ref in refs:
            callback = ref()
            if callback is None:
                continue
            try:
                callback(snapshot)
            except Exception:
                _log.exception("RedisStore: breaker watcher callback failed")

    def _loop(self) -> None:
        delay = 0.05
        store = self._store
        while not self._stopped.is_set():
            pubsub = None
            try:
                pubsub = store._client.pubsub(ignore_subscribe_messages=True)
                subscribed: set[str] = set()
                while not self._stopped.is_set():
                    with self._lock:
                        wanted = {c for c, refs in self._callbacks.items() if refs}
                    new = wanted - subscribed
                    if new:
                        pubsub.subscribe(*new)
                        subscribed |= new
                        for channel in new:  # catch up on what happened before
                            self._resync(channel)
                    self._changed.clear()
                    message = pubsub.get_message(timeout=0.2)
                    delay = 0.05
                    if message is None or message.get("type") != "message":
                        continue
                    channel = _text(message["channel"])
                    self._deliver(channel, _snapshot(json.loads(_text(message["data"]))))
            except Exception as error:  # the server went away: reconnect, then resync
                _log.debug("RedisStore: breaker watcher reconnecting (%r)", error)
                self._stopped.wait(delay)
                delay = min(2.0, delay * 2)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a dead connection
                        pubsub.close()

    def _resync(self, channel: str) -> None:
        with self._lock:
            name = self._names.get(channel)
        if name is not None:
            self._deliver(channel, self._store.breaker_load(name, 0.0))
