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
  apply the pure rule of :func:`resilience._core.bucket.take_all` (for one bucket
  without waiting, :func:`~resilience._core.bucket.take_now`) and answer with the
  buckets' states before the take and the server time they used; the client
  then computes the :class:`~resilience._core.bucket.Decision` (wait, retry_after,
  tokens) from those with the pure core's functions. Floats cross the wire as
  round-tripping text and both sides do the same operations in the same order,
  so the server's grant and the client's decision agree bit for bit (the
  general path checks it on every call; a differential property test holds
  every path to the in-memory store).
* **Keys.** ``{prefix}:{<name>}:b`` (a limiter's unkeyed bucket),
  ``{prefix}:{<name>}:k:<key>`` (a keyed bucket; a key longer than 512 bytes
  is replaced by its SHA-256, ``...:h:<hex>``) and ``{prefix}:{<name>}:c``
  (a circuit, one hash). Keys and names are any ``str``, sent as UTF-8 with
  lone surrogates passed through (``surrogatepass``): NUL bytes, quotes and
  the like are just bytes to Redis. The policy name is the hash tag, so all keys of one
  limiter or breaker live in one Redis Cluster slot. With ``hash_tag=`` the tag
  is chosen instead (``{prefix}:{<tag>}:n<len>:<name>:...``): limiters combined
  with :meth:`RateLimiter.all <resilience.RateLimiter.all>` on a cluster must
  share a tag, since one script may only touch one slot. Names and prefixes may
  not contain ``{`` or ``}``.
* **Idle keys expire.** A bucket key expires (``PX``) when the bucket is full
  again, plus ``expiry_margin`` seconds: a full bucket and a missing key are
  the same. Circuits never expire: there is one small hash per breaker name.
* **Circuits Redis loses** (a restart without persistence, an eviction) are
  detected, not trusted blindly: each circuit hash carries an *epoch* (the
  server time of the transition that created it), every answer carries the
  epoch and the server time, and compare-and-set is on (epoch, version). The
  store numbers the versions it reports per circuit so that they never go
  back, even when Redis starts counting again from 0: a breaker (pushed to by
  pub/sub or polling) takes the new circuit as newer than the lost one. A
  transition from a version of the lost epoch applies to the empty circuit
  (its author held the newest view there is), so a trip is not lost either.
* **Values are numbers and short strings**, never pickle.
* **Connections.** A URL-built store uses a *blocking* pool of
  ``max_connections`` connections (50 by default; per node on a cluster):
  more concurrent callers than that wait for a free connection, at most
  ``timeout`` seconds. A full pool is back-pressure, not an outage; only
  failing to get a connection within the timeout is.
* **Failures.** Every call has a socket timeout (``timeout``, 0.25 s by
  default, also the connect timeout) and is retried at most once, at once, on a
  broken connection (a server restart leaves stale pooled connections), never
  on a timeout. Any driver error becomes :class:`~resilience.StoreUnavailable`
  raised ``from`` the original. No password appears in the store's name, its
  errors or its log lines.
* **Probe permits** of a half-open circuit are leased (the breaker's lease, or
  the store's ``probe_lease``, 60 s by default): they lapse together that long
  after the last one was handed out, so permits held by a process that died do
  not wedge the circuit in HALF_OPEN forever.
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
import re
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.connection
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._core.breaker import CircuitState
from .._core.bucket import BucketSpec, Decision, exact_delay, take_all, tokens
from ..errors import ConfigurationError, StoreUnavailable
from . import _redis_scripts as scripts
from .breakers import CircuitSnapshot, SnapshotCallback, Transition
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

#: Pool size of a URL-built store (per node on a cluster).
DEFAULT_MAX_CONNECTIONS = 50

#: Keys (UTF-8) longer than this are stored under their SHA-256 instead.
_LONG_KEY = 512


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


def _utf8(text: str) -> bytes:
    """Any ``str`` as bytes for Redis, lone surrogates included (never an encoding error)."""
    return text.encode("utf-8", "surrogatepass")


def _micros(text: str) -> int:
    """A server time as the scripts write it (``seconds.micros``), in microseconds."""
    seconds, _, micros = text.partition(".")
    return int(seconds) * 1_000_000 + int(micros or 0)


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
        return f"<{type(client).__name__}>"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"redis://{host}:{port}/{kwargs.get('db', 0)}"


def _client_password(client: Any) -> str | None:
    try:
        password = client.connection_pool.connection_kwargs.get("password")
    except AttributeError:
        return None
    return password if isinstance(password, str) and password else None


def _redact(url: str) -> str:
    """``url`` with the password (or a lone user-info part, maybe one) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, sep, rest = url.partition(":")
    netloc_end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            netloc_end = min(netloc_end, found)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    # redis-py also takes the password as a query parameter (?password=...).
    tail = _QUERY_PASSWORD.sub(r"\1***", tail)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    return f"{scheme}{sep}{netloc}{tail}"


_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&#;]*", re.IGNORECASE)


def _url_secrets(url: str) -> tuple[str, ...]:
    """The passwords in ``url`` (user info or ``?password=``), as written and decoded."""
    parts = urlsplit(url)
    found = {parts.password or ""}
    found |= {value for field, value in parse_qsl(parts.query) if field.lower() == "password"}
    found |= {unquote(secret) for secret in found}
    # Longest first: a password that contains another is scrubbed whole.
    return tuple(sorted((secret for secret in found if secret), key=len, reverse=True))


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(value)
    return lowered in ("1", "true", "yes", "on")


_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,
    "timeout": float,
    "breaker_staleness": float,
    "probe_lease": float,
    "expiry_margin": float,
    "max_connections": int,
    "hash_tag": str,
    "cluster": _flag,
    "pubsub": _flag,
}

#: redis-py's own URL query options that must be numbers: checked up front, so that a
#: bad one is a ConfigurationError naming it rather than a raw ValueError.
_NUMBERS: dict[str, tuple[Callable[[str], float], float, str]] = {
    # option: (parser, smallest allowed value, what it is)
    "db": (int, 0, "a database number >= 0"),
    "socket_timeout": (float, 0.0, "a number of seconds > 0"),
    "socket_connect_timeout": (float, 0.0, "a number of seconds > 0"),
    "socket_read_size": (int, 1, "a whole number of bytes > 0"),
    "health_check_interval": (int, 0, "a whole number of seconds >= 0"),
    "ssl_min_version": (int, 0, "a whole number"),
    "protocol": (int, 2, "2 or 3"),
}
_POSITIVE = {"socket_timeout", "socket_connect_timeout"}


def _check_url(url: str) -> tuple[str, list[tuple[str, str]]]:
    """The URL in the form redis-py reads, and what is wrong with it (no secrets shown)."""
    shown = _redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as error:
        return url, [("url", f"{error} in {shown!r}")]
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        problem = f"expected redis://, rediss:// or unix://, got {shown!r}"
        return url, [("url", problem)]
    if not url.partition(":")[2].startswith("//"):
        return url, [("url", f"expected {scheme}://host..., got {shown!r}")]
    problems: list[tuple[str, str]] = []
    if scheme != "unix":
        if port is None and parts.netloc.rpartition("@")[2].endswith(":"):
            problems.append(("url", f"an empty port in {shown!r}"))
        db = unquote(parts.path).replace("/", "")
        if db and not (db.isascii() and db.isdigit()):
            problems.append(("url.db", f"the path must be a database number, got {db!r}"))
    elif not parts.path:
        problems.append(("url", f"unix:// needs a socket path, got {shown!r}"))
    parsers = getattr(redis.connection, "URL_QUERY_ARGUMENT_PARSERS", {})
    for field, value in parse_qsl(parts.query, keep_blank_values=True):
        if not value:
            continue  # redis-py ignores blank values
        number = _NUMBERS.get(field)
        if number is not None:
            parse, low, what = number
            try:
                parsed = parse(value)
            except ValueError:
                parsed = math.nan
            bad = not (math.isfinite(parsed) and parsed >= low)
            if bad or (field in _POSITIVE and parsed <= 0):
                problems.append((f"url.{field}", f"expected {what}, got {value!r}"))
            continue
        parse_other = parsers.get(field)
        if parse_other is not None:
            try:
                parse_other(value)
            except (TypeError, ValueError):
                problems.append((f"url.{field}", f"invalid value {value!r}"))
    # redis-py requires the scheme in lower case and the '//' it names.
    rebuilt = f"{scheme}://{url.partition('://')[2]}"
    return rebuilt, problems


def _split_url(url: str) -> tuple[str, dict[str, Any]]:
    """Take the store's own options out of a URL's query (and ``+cluster`` out of its scheme)."""
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConfigurationError("RedisStore", [("url", f"{error} in {_redact(url)!r}")]) from None
    options: dict[str, Any] = {}
    scheme = parts.scheme.lower()
    if scheme.endswith("+cluster"):
        scheme = scheme.removesuffix("+cluster")
        options["cluster"] = True
    kept: list[str] = []
    problems: list[tuple[str, str]] = []
    for item in parts.query.split("&") if parts.query else []:
        pairs = parse_qsl(item, keep_blank_values=True)
        if not pairs:
            kept.append(item)
            continue
        field, value = pairs[0]
        parse = _URL_OPTIONS.get(field)
        if parse is None:
            kept.append(item)  # redis-py's: passed on as written
            continue
        try:
            options[field] = parse(value)
        except ValueError:
            what = "true or false" if parse is _flag else "a number"
            problems.append((f"url.{field}", f"expected {what}, got {value!r}"))
    if problems:
        raise ConfigurationError("RedisStore", problems)
    rest = url.partition(":")[2]
    base = rest.split("?", 1)[0].split("#", 1)[0]
    rebuilt = f"{scheme}:{base}" + (f"?{'&'.join(kept)}" if kept else "")
    if parts.fragment:
        rebuilt += f"#{parts.fragment}"
    return rebuilt, options


def _number_problem(field: str, value: Any, *, positive: bool = False) -> tuple[str, str] | None:
    """Why ``value`` is not a finite number >= 0 (> 0 if ``positive``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return field, f"must be a number, got {type(value).__name__} {value!r}"
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        return field, f"must be a finite number {bound}, got {value!r}"
    return None


_NO_LIMIT = b"-1"  # max_wait = inf, for the take script


def _shape(spec: BucketSpec, cost: int) -> tuple[bytes, bytes, bytes]:
    """The take script's arguments for one bucket, as exact text: computed the way
    :func:`resilience._core.bucket.take_all` computes them, so both sides agree bit for bit."""
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

#: How far the reported versions of a circuit jump when Redis lost it.
_GAP = 1 << 20


class _Lineage:
    """One circuit's epochs as this store has seen them, and how its versions are reported.

    Redis numbers a circuit's versions from 0 in each epoch (each time the hash is
    created). The store reports ``version + offset``, one offset per *segment* (an
    epoch, or a spell of the circuit being missing). When the circuit turns out to
    have been lost or replaced, a new segment starts with an offset past every
    version reported so far, so the versions a breaker sees never go back.

    Every segment stays addressable: :meth:`expect` maps any reported version back
    to its own segment's (version, epoch), so a breaker holding a version of an
    older segment always gets a definite answer from a compare-and-set (it loses,
    and adopts the circuit as it is) and can never be wedged.

    Ordering. An answer to a load or a transition (*current*) always lands in a
    segment: an epoch unknown here starts a new one. A pushed snapshot is a hint,
    possibly late: one from an epoch unknown here, born (by the server's clock)
    before the current segment's, is from a circuit lost before it, and is
    reported as version -1, which breakers ignore. Answers from an older epoch
    seen before keep that epoch's offset (older, so a breaker ignores them).
    """

    __slots__ = ("born", "epoch", "highest", "offset", "older")

    def __init__(self, epoch: str, born: int, version: int) -> None:
        self.epoch = epoch  # '' while the circuit is missing
        self.born = born  # the epoch's creation (or the segment's first answer), micros
        self.offset = 0
        self.highest = version
        self.older: list[tuple[int, str]] = []  # earlier segments (offset, epoch), oldest first

    def report(self, epoch: str, version: int, at: int, current: bool) -> int:
        if epoch != self.epoch:
            for offset, known in reversed(self.older):
                if epoch and known == epoch:
                    return version + offset  # a late answer from a lost epoch
            if epoch == "":
                if at <= self.born:
                    return version + self.offset  # an answer from before the circuit existed
                self._start("", at, version)  # the circuit vanished after it was created
            else:
                born = _micros(epoch)
                if born <= self.born and not current:
                    return -1  # pushed late, by a circuit lost before this segment began
                if self.epoch == "" and born > self.born:
                    self.epoch, self.born = epoch, born  # created since seen missing: same segment
                else:
                    self._start(epoch, born, version)  # a new circuit replaced ours
        reported = version + self.offset
        if reported > self.highest:
            self.highest = reported
        return reported

    def _start(self, epoch: str, born: int, version: int) -> None:
        self.older.append((self.offset, self.epoch))
        del self.older[:-8]
        self.offset = self.highest + max(1, _GAP - version)
        self.epoch, self.born = epoch, born

    def expect(self, reported: int) -> tuple[int, str]:
        """A reported version as the scripts compare it: (version in Redis, epoch)."""
        if reported >= self.offset:
            return reported - self.offset, self.epoch
        for offset, epoch in reversed(self.older):
            if reported >= offset:
                return reported - offset, epoch
        return -1, self.epoch  # older than anything remembered: loses, whatever Redis holds


class _AsyncSide:
    """The async client of one event loop (and, for a cluster, its connection gate)."""

    __slots__ = ("client", "gate")

    def __init__(self, client: Any, gate: asyncio.Semaphore | None = None) -> None:
        self.client = client
        self.gate = gate


class RedisStore:
    """Rate-limiter buckets and breaker circuits in Redis: see the module docs.

    Build it from a URL (``redis://``, ``rediss://``, ``unix://``) or from
    existing redis-py clients (``client=`` a ``redis.Redis`` or
    ``redis.cluster.RedisCluster``; ``async_client=`` their ``redis.asyncio``
    twins). Clients passed in keep their own timeouts, retry settings and
    connection pools (give them a ``BlockingConnectionPool``, or more callers
    than the pool holds get "Too many connections", an outage).
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
        max_connections: int | None = None,
    ) -> None:
        from_query: dict[str, Any] = {}
        if isinstance(url, str) and ("?" in url or "+cluster" in url.split("://")[0]):
            url, from_query = _split_url(url)
            cluster = cluster or bool(from_query.pop("cluster", False))
            in_url = from_query.pop("max_connections", None)
            if max_connections is None:
                max_connections = in_url
        problems: list[tuple[str, str]] = []
        if from_query:
            shown = _redact(url) if isinstance(url, str) else ""
            problems.append(
                (
                    "url",
                    f"store options in the URL need RedisStore.from_url: "
                    f"{sorted(from_query)} in {shown!r}",
                )
            )
        if url is None and client is None and async_client is None:
            problems.append(("url", "give a redis:// URL or a client"))
        if url is not None and (client is not None or async_client is not None):
            problems.append(("url", "give a URL or clients, not both"))
        if url is not None and not isinstance(url, str):
            problems.append(("url", f"must be a str, got {type(url).__name__}"))
            url = None
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            problems.append(("prefix", f"must be non-empty, without braces, got {prefix!r}"))
        if hash_tag is None or isinstance(hash_tag, str | Mapping):
            tags = [hash_tag] if isinstance(hash_tag, str) else list((hash_tag or {}).values())
            if any(not isinstance(tag, str) or not tag or "{" in tag or "}" in tag for tag in tags):
                problems.append(("hash_tag", "tags must be non-empty strings, without braces"))
        else:
            problems.append(("hash_tag", f"a str or a mapping of names to tags, got {hash_tag!r}"))
        for field, value, positive in (
            ("timeout", timeout, True),
            ("breaker_staleness", breaker_staleness, False),
            ("probe_lease", probe_lease, True),
            ("expiry_margin", expiry_margin, False),
        ):
            problem = _number_problem(field, value, positive=positive)
            if problem is not None:
                problems.append(problem)
        if max_connections is not None and (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or not 1 <= max_connections <= 1_000_000
        ):
            problems.append(
                ("max_connections", f"must be a whole number >= 1, got {max_connections!r}")
            )
        if max_connections is not None and url is None and not problems:
            problems.append(("max_connections", "applies to a URL; a client keeps its own pool"))
        if problems:
            raise ConfigurationError("RedisStore", problems)

        self._url = url
        self._timeout = float(timeout)
        self.max_connections = (
            DEFAULT_MAX_CONNECTIONS if max_connections is None else max_connections
        )
        self._cluster = cluster or isinstance(
            client or async_client,
            redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster,
        )
        self._secrets: tuple[str, ...] = ()
        if url is not None:
            url, problems = _check_url(url)
            if problems:
                raise ConfigurationError("RedisStore", problems)
            self._secrets = _url_secrets(url)
            self._url = url
            try:
                client = self._make_sync(url)
            except (ValueError, TypeError, redis.exceptions.RedisError) as error:
                raise ConfigurationError(
                    "RedisStore", [("url", f"{self._scrub(str(error))} in {_redact(url)!r}")]
                ) from None
        else:
            secrets = {_client_password(client), _client_password(async_client)}
            self._secrets = tuple(secret for secret in secrets if secret)
        self._client = client
        self._async_given = async_client
        self._async_sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncSide]
        self._async_sides = weakref.WeakKeyDictionary()
        self._async_lock = threading.Lock()
        self.name = _describe(client if client is not None else async_client)
        self.prefix = prefix
        self._hash_tag = hash_tag
        self.breaker_staleness = float(breaker_staleness)
        #: Seconds half-open probe permits stay leased when a breaker gives no lease
        #: of its own (read by the outage guard for its local fallback, too).
        self.probe_lease = float(probe_lease)
        self._margin = str(int(expiry_margin * 1000)).encode()
        self._shapes: dict[tuple[BucketSpec, int], tuple[bytes, bytes, bytes]] = {}
        self._bucket_keys: dict[tuple[str, Any], bytes] = {}
        self._circuit_keys: dict[str, bytes] = {}
        self._lines: dict[str, _Lineage] = {}
        self._lines_lock = threading.Lock()
        self._pubsub = pubsub
        self._watcher: _Watcher | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """``RedisStore(url, **options)``: the form :func:`store_from_url` uses.

        The store's own options may also be given as query parameters
        (``redis://host/0?prefix=myapp&timeout=0.5&max_connections=20``); keyword
        options win. ``redis+cluster://`` and ``rediss+cluster://`` mean
        ``cluster=True``. Other query parameters are redis-py's.
        """
        if not isinstance(url, str):
            raise ConfigurationError("RedisStore", [("url", f"must be a str, got {url!r}")])
        url, from_query = _split_url(url)
        return cls(url, **{**from_query, **options})

    # -- clients -------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {"socket_timeout": self._timeout, "socket_connect_timeout": self._timeout}

    def _make_sync(self, url: str) -> Any:
        options = self._options()
        if self._cluster:
            # One immediate retry (after refreshing the slot map) instead of redis-py's
            # default of several with backoff: a call's time stays bounded. Each node's
            # pool blocks (at most `timeout`) when all its connections are busy.
            return redis.cluster.RedisCluster.from_url(
                url,
                retry=Retry(NoBackoff(), 1),
                connection_pool_class=redis.BlockingConnectionPool,
                max_connections=self.max_connections,
                timeout=self._timeout,
                **options,
            )
        # One immediate retry on a broken connection (stale after a server restart);
        # never on a timeout, which may have run the script.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=self.max_connections, timeout=self._timeout, retry=retry, **options
        )
        return redis.Redis.from_pool(pool)

    def _make_async(self, url: str) -> _AsyncSide:
        options = self._options()
        if self._cluster:
            # redis.asyncio's cluster client has no blocking pool: past `max_connections`
            # a node raises MaxConnectionsError. A gate lets at most that many calls
            # through at a time (so no node's pool can run out); a caller finding it
            # closed waits for a place, at most `timeout`.
            retry = redis.asyncio.retry.Retry(NoBackoff(), 1)
            cluster = redis.asyncio.cluster.RedisCluster.from_url(
                url, retry=retry, max_connections=self.max_connections, **options
            )
            return _AsyncSide(cluster, asyncio.Semaphore(self.max_connections))
        retry = redis.asyncio.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
        )
        # A blocking pool: past `max_connections` busy connections a call waits for
        # one, at most `timeout` (then ConnectionError: StoreUnavailable).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=self.max_connections, timeout=self._timeout, retry=retry, **options
        )
        return _AsyncSide(redis.asyncio.Redis.from_pool(pool))

    def _watch_client(self) -> tuple[Any, bool]:
        """The client the pub/sub watcher subscribes with, and whether it is its own.

        A URL-built store gives the watcher a client of its own, so that its
        long-lived subscription never holds one of the pool's connections.
        """
        if self._url is not None and not self._cluster:
            return redis.Redis.from_url(self._url, **self._options()), True
        return self._client, False

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
                    side = self._make_async(self._url)
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

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _fail(self, error: BaseException) -> NoReturn:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise StoreUnavailable(self.name, self._scrub(reason)) from error

    def _run(self, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
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

    async def _arun(self, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        side = self._async_side()
        if side is None:
            return await asyncio.to_thread(self._run, script, keys, args)
        if side.gate is not None:
            return await self._arun_gated(side, script, keys, args)
        return await self._aeval(side.client, script, keys, args)

    async def _aeval(
        self, client: Any, script: str, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        try:
            try:
                return await client.evalsha(_SHAS[script], len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # a restarted server, a new node
                await client.script_load(_SCRIPTS[script])
                return await client.evalsha(_SHAS[script], len(keys), *keys, *args)
        except _DRIVER_ERRORS as error:
            self._fail(error)

    async def _arun_gated(
        self, side: _AsyncSide, script: str, keys: Sequence[Any], args: Sequence[Any]
    ) -> Any:
        gate = side.gate
        assert gate is not None
        if gate.locked():  # every connection is busy: wait for one, bounded
            try:
                async with asyncio.timeout(self._timeout):
                    await gate.acquire()
            except TimeoutError:
                busy = redis.exceptions.ConnectionError(
                    f"No connection available within {self._timeout:g}s."
                )
                self._fail(busy)
        else:
            await gate.acquire()  # at once
        try:
            return await self._aeval(side.client, script, keys, args)
        finally:
            gate.release()

    # -- keys --------------------------------------------------------------------------

    def _tag(self, name: str) -> str:
        tag = self._hash_tag
        if tag is None:
            return name
        if isinstance(tag, str):
            return tag
        return tag.get(name, name)

    def _base(self, name: str) -> str:
        if not isinstance(name, str):
            raise TypeError(f"RedisStore: policy names are str, got {type(name).__name__}")
        if "{" in name or "}" in name:
            raise ConfigurationError(
                "RedisStore", [("name", f"policy names may not contain braces, got {name!r}")]
            )
        tag = self._tag(name)
        if tag == name:
            return f"{self.prefix}:{{{name}}}"
        return f"{self.prefix}:{{{tag}}}:n{len(name)}:{name}"

    def _bucket_key(self, name: str, key: str | None) -> bytes:
        cache_key = (name, key)
        found = self._bucket_keys.get(cache_key)
        if found is not None:
            return found
        base = _utf8(self._base(name))
        if key is None:
            made = base + b":b"
        elif not isinstance(key, str):
            raise TypeError(f"RedisStore: bucket keys are str, got {type(key).__name__}")
        else:
            raw = _utf8(key)
            if len(raw) > _LONG_KEY:  # bounded in Redis and here; never cached
                return base + b":h:" + hashlib.sha256(raw).hexdigest().encode()
            made = base + b":k:" + raw
        if len(self._bucket_keys) < 10_000:  # keyed limiters may see unbounded keys
            self._bucket_keys[cache_key] = made
        return made

    def bucket_key(self, name: str, key: str | None) -> str:
        """The Redis key of bucket ``(name, key)`` (lone surrogates kept as they are)."""
        return _text(self._bucket_key(name, key))

    def _circuit_key(self, name: str) -> bytes:
        found = self._circuit_keys.get(name)
        if found is None:
            found = _utf8(f"{self._base(name)}:c")
            if len(self._circuit_keys) < 10_000:
                self._circuit_keys[name] = found
        return found

    def circuit_key(self, name: str) -> str:
        """The Redis key (a hash) of circuit ``name``."""
        return _text(self._circuit_key(name))

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
    ) -> tuple[list[bytes], list[Any]]:
        if len(requests) > 1:
            self._check_slots(requests)
        keys = [self._bucket_key(request.name, request.key) for request in requests]
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
    ) -> tuple[list[bytes], list[Any]]:
        shape = self._shapes.get((request.spec, request.cost))
        if shape is None:
            shape = _shape(request.spec, request.cost)
            if len(self._shapes) < 1024:
                self._shapes[(request.spec, request.cost)] = shape
        key = self._bucket_key(request.name, request.key)
        if max_wait == 0:
            return [key], [shape[0], shape[2], self._margin, b"0"]
        wait = _NO_LIMIT if max_wait == math.inf else repr(float(max_wait)).encode()
        return [key], [shape[0], shape[2], self._margin, wait, shape[1]]

    @classmethod
    def _take_one_decision(
        cls, requests: Sequence[BucketRequest], max_wait: float, reply: Any
    ) -> tuple[Decision, float, tuple[float, ...]]:
        """The decision of :func:`~resilience._core.bucket.take_all` for one bucket, from the
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
    ) -> tuple[list[bytes], list[Any]]:
        if len(requests) > 1:
            self._check_slots(requests)
        keys = [self._bucket_key(request.name, request.key) for request in requests]
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
    ) -> tuple[list[bytes], list[Any]]:
        keys = [self._bucket_key(name, key)]
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
        seconds, microseconds, tat = self._run("read", [self._bucket_key(name, key)], [])
        return _server_time(seconds, microseconds), _state(tat)

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        now, tat = self._bucket_read(name, key)
        return tokens(tat, now, spec)

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        seconds, microseconds, tat = await self._arun("read", [self._bucket_key(name, key)], [])
        return tokens(_state(tat), _server_time(seconds, microseconds), spec)

    # -- circuits --------------------------------------------------------------------------

    def _channel(self, name: str) -> bytes:
        return self._circuit_key(name) + b":events" if self._pubsub else b""

    def _report(self, name: str, epoch: str, version: int, at: int, current: bool) -> int:
        """The version to report for an answer of epoch ``epoch`` at server time ``at``
        (``current``: to a load or a transition; else a pushed hint)."""
        with self._lines_lock:
            line = self._lines.get(name)
            if line is None:
                born = _micros(epoch) if epoch else at
                self._lines[name] = _Lineage(epoch, born, version)
                return version
            return line.report(epoch, version, at, current)

    def _expect(self, name: str, version: int) -> tuple[int, str]:
        """A reported version as the scripts compare it: (version in Redis, epoch).

        Epoch ``*`` (this store never saw the circuit) matches any epoch.
        """
        with self._lines_lock:
            line = self._lines.get(name)
            if line is None:
                return version, "*"
            return line.expect(version)

    def _circuit(self, name: str, reply: Sequence[Any], current: bool = True) -> CircuitSnapshot:
        """A script's snapshot (``current``) or a pub/sub message's, as breakers see it."""
        state, version, trips, reason, remaining, epoch, at = reply
        reported = self._report(name, _text(epoch), int(version), _micros(_text(at)), current)
        return CircuitSnapshot(
            CircuitState(_text(state)), reported, int(trips), _text(reason), float(remaining)
        )

    def _transition_args(self, name: str, change: Transition) -> tuple[list[bytes], list[Any]]:
        version, epoch = self._expect(name, change.expected_version)
        duration = repr(float(change.break_duration))  # "inf" parses in Lua too
        state, reason, channel = change.state.value, _utf8(change.reason), self._channel(name)
        args = [version, epoch, state, reason, change.trips, duration, channel]
        return [self._circuit_key(name)], args

    def _transitioned(self, name: str, reply: Sequence[Any]) -> tuple[bool, CircuitSnapshot]:
        return bool(int(reply[0])), self._circuit(name, reply[1:])

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._circuit(name, self._run("load", [self._circuit_key(name)], []))

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._circuit(name, await self._arun("load", [self._circuit_key(name)], []))

    def breaker_transition(self, name: str, change: Transition) -> tuple[bool, CircuitSnapshot]:
        """Apply ``change`` (see the protocol); Redis's clock times the break."""
        args = self._transition_args(name, change)
        return self._transitioned(name, self._run("transition", *args))

    async def abreaker_transition(
        self, name: str, change: Transition
    ) -> tuple[bool, CircuitSnapshot]:
        args = self._transition_args(name, change)
        return self._transitioned(name, await self._arun("transition", *args))

    def _acquire_args(
        self, name: str, version: int, limit: int, lease: float | None
    ) -> tuple[list[bytes], list[Any]]:
        if lease is None or not (math.isfinite(lease) and lease > 0):
            lease = self.probe_lease  # as on SQLite: a lease that never ends is no lease
        stored, epoch = self._expect(name, version)
        return [self._circuit_key(name)], [stored, limit, repr(float(lease)), epoch]

    def breaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        """Take a probe permit (see the protocol); ``lease=None``: the store's
        ``probe_lease``. Redis's clock decides when permits lapse: ``now`` is unused."""
        return bool(int(self._run("acquire", *self._acquire_args(name, version, limit, lease))))

    async def abreaker_acquire_probe(
        self, name: str, version: int, limit: int, lease: float | None, now: float
    ) -> bool:
        args = self._acquire_args(name, version, limit, lease)
        return bool(int(await self._arun("acquire", *args)))

    def _release_args(
        self, name: str, version: int, succeeded: bool | None
    ) -> tuple[list[bytes], list[Any]]:
        stored, epoch = self._expect(name, version)
        verdict = "" if succeeded is None else "1" if succeeded else "0"
        return [self._circuit_key(name)], [stored, verdict, epoch]

    def breaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return int(self._run("release", *self._release_args(name, version, succeeded)))

    async def abreaker_release_probe(self, name: str, version: int, succeeded: bool | None) -> int:
        return int(await self._arun("release", *self._release_args(name, version, succeeded)))

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
    not lost. Callbacks ignore snapshots older than what they hold; a circuit
    Redis lost (and made again) is reported with newer versions (see
    :class:`_Lineage`), so a breaker follows it.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._client, self._owned = store._watch_client()
        self._lock = threading.Lock()
        self._callbacks: dict[bytes, list[Callable[[], SnapshotCallback | None]]] = {}
        self._names: dict[bytes, str] = {}  # channel -> circuit name
        self._stopped = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="resilience-redis-watch", daemon=True
        )
        self._thread.start()

    def add(self, name: str, channel: bytes, callback: SnapshotCallback) -> Callable[[], None]:
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

    def _deliver(self, channel: bytes, snapshot: CircuitSnapshot) -> None:
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

    def _message(self, message: Mapping[str, Any]) -> None:
        channel = message["channel"]
        if isinstance(channel, str):
            channel = _utf8(channel)
        with self._lock:
            name = self._names.get(channel)
        if name is None:
            return
        try:
            snapshot = self._store._circuit(name, json.loads(_text(message["data"])), current=False)
        except (ValueError, TypeError, KeyError):
            # Not a snapshot of ours (an older release's, or noise): ask the store.
            self._resync(channel)
            return
        if snapshot.version >= 0:  # (-1: a late hint from a circuit Redis lost: dropped)
            self._deliver(channel, snapshot)

    def _loop(self) -> None:
        delay = 0.05
        store = self._store
        try:
            while not self._stopped.is_set():
                pubsub = None
                try:
                    pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                    subscribed: set[bytes] = set()
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
                        self._message(message)
                except Exception as error:  # the server went away: reconnect, then resync
                    reason = store._scrub(repr(error))
                    _log.debug("RedisStore: breaker watcher reconnecting (%s)", reason)
                    self._stopped.wait(delay)
                    delay = min(2.0, delay * 2)
                finally:
                    if pubsub is not None:
                        with contextlib.suppress(Exception):  # closing a dead connection
                            pubsub.close()
        finally:
            if self._owned:
                with contextlib.suppress(Exception):
                    self._client.close()

    def _resync(self, channel: bytes) -> None:
        with self._lock:
            name = self._names.get(channel)
        if name is not None:
            self._deliver(channel, self._store.breaker_load(name, 0.0))
