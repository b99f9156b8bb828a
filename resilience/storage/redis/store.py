"""The :class:`RedisStore` class: the storage protocols over Redis's Lua scripts.

What each part does and why is told in :mod:`resilience.storage.redis`. This module
validates the options, runs the scripts (``EVALSHA``, loaded again on ``NOSCRIPT``)
and turns their answers into decisions and snapshots; the scripts, keys, wire
encodings, clients, URLs, circuit lineages and pub/sub watcher have modules of
their own beside it.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import redis.exceptions

from ..._core.breaker import CircuitState
from ..._core.bucket import BucketSpec, Decision, exact_delay, take_all, tokens
from ...clock import Clock
from ...errors import ConfigurationError, StoreUnavailable
from ..breakers import CircuitSnapshot, SnapshotCallback, Transition
from ..buckets import BucketRequest
from .clients import (
    DEFAULT_MAX_CONNECTIONS,
    DRIVER_ERRORS,
    AsyncSide,
    async_side,
    client_password,
    describe,
    is_cluster,
    subscriber,
    sync_client,
)
from .jobs import RedisJobs, check_job_clock
from .keys import RedisKeys
from .lineage import Lineage
from .scripts import SHAS, SOURCES
from .urls import check_url, redact, split_url, url_secrets
from .watcher import Watcher
from .wire import NO_LIMIT, bucket_state, micros, server_time, take_shape, text, utf8

__all__ = ["RedisStore"]


def _number_problem(field: str, value: Any, *, positive: bool = False) -> tuple[str, str] | None:
    """Why ``value`` is not a finite number >= 0 (> 0 if ``positive``), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return field, f"must be a number, got {type(value).__name__} {value!r}"
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        return field, f"must be a finite number {bound}, got {value!r}"
    return None


class RedisStore(RedisJobs):
    """Rate-limiter buckets, breaker circuits and job queues in Redis: see
    :mod:`resilience.storage.redis`.

    Build it from a URL (``redis://``, ``rediss://``, ``unix://``) or from
    existing redis-py clients (``client=`` a ``redis.Redis`` or
    ``redis.cluster.RedisCluster``; ``async_client=`` their ``redis.asyncio``
    twins). Clients passed in keep their own timeouts, retry settings and
    connection pools (give them a ``BlockingConnectionPool``, or more callers
    than the pool holds get "Too many connections", an outage).

    ``job_clock`` (tests): a :class:`~resilience.clock.Clock` whose ``now()``
    dates the jobs instead of the server's ``TIME``.
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
        job_clock: Clock | None = None,
    ) -> None:
        from_query: dict[str, Any] = {}
        if isinstance(url, str) and ("?" in url or "+cluster" in url.split("://")[0]):
            url, from_query = split_url(url)
            cluster = cluster or bool(from_query.pop("cluster", False))
            in_url = from_query.pop("max_connections", None)
            if max_connections is None:
                max_connections = in_url
        problems: list[tuple[str, str]] = []
        if from_query:
            shown = redact(url) if isinstance(url, str) else ""
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
        clock_problem = check_job_clock(job_clock)
        if clock_problem is not None:
            problems.append(clock_problem)
        if max_connections is not None and url is None and not problems:
            problems.append(("max_connections", "applies to a URL; a client keeps its own pool"))
        if problems:
            raise ConfigurationError("RedisStore", problems)

        self._url = url
        self._timeout = float(timeout)
        self.max_connections = (
            DEFAULT_MAX_CONNECTIONS if max_connections is None else max_connections
        )
        self._cluster = cluster or is_cluster(client or async_client)
        self._secrets: tuple[str, ...] = ()
        if url is not None:
            url, problems = check_url(url)
            if problems:
                raise ConfigurationError("RedisStore", problems)
            self._secrets = url_secrets(url)
            self._url = url
            try:
                client = sync_client(
                    url,
                    cluster=self._cluster,
                    max_connections=self.max_connections,
                    timeout=self._timeout,
                )
            except (ValueError, TypeError, redis.exceptions.RedisError) as error:
                raise ConfigurationError(
                    "RedisStore", [("url", f"{self._scrub(str(error))} in {redact(url)!r}")]
                ) from None
        else:
            secrets = {client_password(client), client_password(async_client)}
            self._secrets = tuple(secret for secret in secrets if secret)
        self._client = client
        self._async_given = async_client
        self._async_sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncSide]
        self._async_sides = weakref.WeakKeyDictionary()
        self._async_lock = threading.Lock()
        self.name = describe(client if client is not None else async_client)
        self._keys = RedisKeys(prefix, hash_tag)
        self.breaker_staleness = float(breaker_staleness)
        #: Seconds half-open probe permits stay leased when a breaker gives no lease
        #: of its own (read by the outage guard for its local fallback, too).
        self.probe_lease = float(probe_lease)
        self._margin = str(int(expiry_margin * 1000)).encode()
        self._shapes: dict[tuple[BucketSpec, int], tuple[bytes, bytes, bytes]] = {}
        self._lines: dict[str, Lineage] = {}
        self._lines_lock = threading.Lock()
        self._pubsub = pubsub
        self._watcher: Watcher | None = None
        self._job_clock = job_clock
        self._job_names: set[str] = set()  # queue names recorded (on a cluster)

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
        url, from_query = split_url(url)
        return cls(url, **{**from_query, **options})

    # -- clients -------------------------------------------------------------------

    def _watch_client(self) -> tuple[Any, bool]:
        """The client the pub/sub watcher subscribes with, and whether it is its own.

        A URL-built store gives the watcher a client of its own, so that its
        long-lived subscription never holds one of the pool's connections.
        """
        if self._url is not None and not self._cluster:
            return subscriber(self._url, self._timeout), True
        return self._client, False

    def _async_side(self) -> AsyncSide | None:
        """The async client for the running loop (``None``: run the sync client in a thread)."""
        loop = asyncio.get_running_loop()
        side = self._async_sides.get(loop)
        if side is not None:
            return side
        with self._async_lock:
            side = self._async_sides.get(loop)
            if side is None:
                if self._async_given is not None:
                    side = AsyncSide(self._async_given)
                elif self._url is not None:
                    side = async_side(
                        self._url,
                        cluster=self._cluster,
                        max_connections=self.max_connections,
                        timeout=self._timeout,
                    )
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

    @property
    def prefix(self) -> str:
        """What every key of this store starts with."""
        return self._keys.prefix

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
                return client.evalsha(SHAS[script], len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # a restarted server, a new node
                client.script_load(SOURCES[script])
                return client.evalsha(SHAS[script], len(keys), *keys, *args)
        except DRIVER_ERRORS as error:
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
                return await client.evalsha(SHAS[script], len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # a restarted server, a new node
                await client.script_load(SOURCES[script])
                return await client.evalsha(SHAS[script], len(keys), *keys, *args)
        except DRIVER_ERRORS as error:
            self._fail(error)

    async def _arun_gated(
        self, side: AsyncSide, script: str, keys: Sequence[Any], args: Sequence[Any]
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

    def bucket_key(self, name: str, key: str | None) -> str:
        """The Redis key of bucket ``(name, key)`` (lone surrogates kept as they are)."""
        return text(self._keys.bucket(name, key))

    def circuit_key(self, name: str) -> str:
        """The Redis key (a hash) of circuit ``name``."""
        return text(self._keys.circuit(name))

    def _check_slots(self, requests: Sequence[BucketRequest]) -> None:
        if self._cluster:
            self._keys.check_one_slot(requests)

    # -- buckets -------------------------------------------------------------------------

    def _take_args(
        self, requests: Sequence[BucketRequest], max_wait: float
    ) -> tuple[list[bytes], list[Any]]:
        if len(requests) > 1:
            self._check_slots(requests)
        keys = [self._keys.bucket(request.name, request.key) for request in requests]
        wait = NO_LIMIT if max_wait == math.inf else repr(float(max_wait)).encode()
        args: list[Any] = [wait, self._margin]
        shapes = self._shapes
        for request in requests:
            shape = shapes.get((request.spec, request.cost))
            if shape is None:
                shape = take_shape(request.spec, request.cost)
                if len(shapes) < 1024:
                    shapes[(request.spec, request.cost)] = shape
            args += shape
        return keys, args

    @staticmethod
    def _take_decision(
        requests: Sequence[BucketRequest], max_wait: float, reply: Sequence[Any]
    ) -> tuple[Decision, float, tuple[float, ...]]:
        granted, now = int(reply[0]), server_time(reply[1], reply[2])
        old = tuple(bucket_state(value) for value in reply[3:])
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
            shape = take_shape(request.spec, request.cost)
            if len(self._shapes) < 1024:
                self._shapes[(request.spec, request.cost)] = shape
        key = self._keys.bucket(request.name, request.key)
        if max_wait == 0:
            return [key], [shape[0], shape[2], self._margin, b"0"]
        wait = NO_LIMIT if max_wait == math.inf else repr(float(max_wait)).encode()
        return [key], [shape[0], shape[2], self._margin, wait, shape[1]]

    @classmethod
    def _take_one_decision(
        cls, requests: Sequence[BucketRequest], max_wait: float, reply: Any
    ) -> tuple[Decision, float, tuple[float, ...]]:
        """The decision of :func:`~resilience._core.bucket.take_all` for one bucket, from the
        script's answer "granted seconds microseconds state" (state empty: full)."""
        granted, seconds, microseconds, state = text(reply).split(" ")
        if max_wait != 0:
            return cls._take_decision(requests, max_wait, (granted, seconds, microseconds, state))
        # max_wait = 0: take_all reduces to take_now, decided here in a few operations.
        now = server_time(seconds, microseconds)
        tat = bucket_state(state)
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
        keys = [self._keys.bucket(request.name, request.key) for request in requests]
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
        keys = [self._keys.bucket(name, key)]
        return keys, [repr(float(seconds)), repr(spec.capacity - spec.interval), self._margin]

    def _bucket_penalize_raw(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> tuple[float, float]:
        """:meth:`bucket_penalize`, returning the server time and the state before."""
        seconds_, microseconds, tat = self._run(
            "penalize", *self._penalize_args(name, key, spec, seconds)
        )
        return server_time(seconds_, microseconds), bucket_state(tat)

    def bucket_penalize(self, name: str, key: str | None, spec: BucketSpec, seconds: float) -> None:
        self._bucket_penalize_raw(name, key, spec, seconds)

    async def abucket_penalize(
        self, name: str, key: str | None, spec: BucketSpec, seconds: float
    ) -> None:
        await self._arun("penalize", *self._penalize_args(name, key, spec, seconds))

    def _bucket_read(self, name: str, key: str | None) -> tuple[float, float]:
        """The server time and the bucket's state (``-inf``: full)."""
        seconds, microseconds, tat = self._run("read", [self._keys.bucket(name, key)], [])
        return server_time(seconds, microseconds), bucket_state(tat)

    def bucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        now, tat = self._bucket_read(name, key)
        return tokens(tat, now, spec)

    async def abucket_tokens(self, name: str, key: str | None, spec: BucketSpec) -> float:
        seconds, microseconds, tat = await self._arun("read", [self._keys.bucket(name, key)], [])
        return tokens(bucket_state(tat), server_time(seconds, microseconds), spec)

    # -- circuits --------------------------------------------------------------------------

    def _channel(self, name: str) -> bytes:
        return self._keys.circuit(name) + b":events" if self._pubsub else b""

    def _report(self, name: str, epoch: str, version: int, at: int, current: bool) -> int:
        """The version to report for an answer of epoch ``epoch`` at server time ``at``
        (``current``: to a load or a transition; else a pushed hint)."""
        with self._lines_lock:
            line = self._lines.get(name)
            if line is None:
                born = micros(epoch) if epoch else at
                self._lines[name] = Lineage(epoch, born, version)
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
        reported = self._report(name, text(epoch), int(version), micros(text(at)), current)
        return CircuitSnapshot(
            CircuitState(text(state)), reported, int(trips), text(reason), float(remaining)
        )

    def _transition_args(self, name: str, change: Transition) -> tuple[list[bytes], list[Any]]:
        version, epoch = self._expect(name, change.expected_version)
        duration = repr(float(change.break_duration))  # "inf" parses in Lua too
        state, reason, channel = change.state.value, utf8(change.reason), self._channel(name)
        args = [version, epoch, state, reason, change.trips, duration, channel]
        return [self._keys.circuit(name)], args

    def _transitioned(self, name: str, reply: Sequence[Any]) -> tuple[bool, CircuitSnapshot]:
        return bool(int(reply[0])), self._circuit(name, reply[1:])

    def breaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._circuit(name, self._run("load", [self._keys.circuit(name)], []))

    async def abreaker_load(self, name: str, now: float) -> CircuitSnapshot:
        return self._circuit(name, await self._arun("load", [self._keys.circuit(name)], []))

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
        return [self._keys.circuit(name)], [stored, limit, repr(float(lease)), epoch]

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
        return [self._keys.circuit(name)], [stored, verdict, epoch]

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
                self._watcher = Watcher(self)
            watcher = self._watcher
        return watcher.add(name, self._channel(name), callback)
