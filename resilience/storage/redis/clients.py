"""The redis-py clients a :class:`~resilience.storage.redis.RedisStore` builds from a URL:
their pools, timeouts and retry policy, and how a client is named without credentials.

A URL-built store uses a *blocking* pool of ``max_connections`` connections (per
node on a cluster): more concurrent callers wait for a free connection, at most
``timeout`` seconds. Every call has a socket timeout of ``timeout`` (also the
connect timeout) and is retried at most once, at once, on a broken connection;
never on a timeout, which may have run the script.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DRIVER_ERRORS",
    "AsyncSide",
    "async_side",
    "client_password",
    "describe",
    "is_cluster",
    "subscriber",
    "sync_client",
]

#: Pool size of a URL-built store (per node on a cluster).
DEFAULT_MAX_CONNECTIONS = 50

#: What a driver may raise: all of it becomes StoreUnavailable.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,  # includes the builtin TimeoutError
    asyncio.TimeoutError,
)


class AsyncSide:
    """The async client of one event loop (and, for a cluster, its connection gate)."""

    __slots__ = ("client", "gate")

    def __init__(self, client: Any, gate: asyncio.Semaphore | None = None) -> None:
        self.client = client
        self.gate = gate


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (sync or asyncio)."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def describe(client: Any) -> str:
    """``redis://host:port/db`` for a client, without credentials."""
    if is_cluster(client):
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


def client_password(client: Any) -> str | None:
    """The password a client connects with, if any (to keep it out of messages)."""
    try:
        password = client.connection_pool.connection_kwargs.get("password")
    except AttributeError:
        return None
    return password if isinstance(password, str) and password else None


def _socket_options(timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout}


def sync_client(url: str, *, cluster: bool, max_connections: int, timeout: float) -> Any:
    """The sync client of a URL-built store."""
    options = _socket_options(timeout)
    if cluster:
        # One immediate retry (after refreshing the slot map) instead of redis-py's
        # default of several with backoff: a call's time stays bounded. Each node's
        # pool blocks (at most `timeout`) when all its connections are busy.
        return redis.cluster.RedisCluster.from_url(
            url,
            retry=Retry(NoBackoff(), 1),
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=max_connections,
            timeout=timeout,
            **options,
        )
    # One immediate retry on a broken connection (stale after a server restart);
    # never on a timeout, which may have run the script.
    retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, retry=retry, **options
    )
    return redis.Redis.from_pool(pool)


def async_side(url: str, *, cluster: bool, max_connections: int, timeout: float) -> AsyncSide:
    """The async client of a URL-built store, for the running event loop."""
    options = _socket_options(timeout)
    if cluster:
        # redis.asyncio's cluster client has no blocking pool: past `max_connections`
        # a node raises MaxConnectionsError. A gate lets at most that many calls
        # through at a time (so no node's pool can run out); a caller finding it
        # closed waits for a place, at most `timeout`.
        retry = redis.asyncio.retry.Retry(NoBackoff(), 1)
        client = redis.asyncio.cluster.RedisCluster.from_url(
            url, retry=retry, max_connections=max_connections, **options
        )
        return AsyncSide(client, asyncio.Semaphore(max_connections))
    retry = redis.asyncio.retry.Retry(
        NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
    )
    # A blocking pool: past `max_connections` busy connections a call waits for
    # one, at most `timeout` (then ConnectionError: StoreUnavailable).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, retry=retry, **options
    )
    return AsyncSide(redis.asyncio.Redis.from_pool(pool))


def subscriber(url: str, timeout: float) -> Any:
    """A client of its own for the pub/sub watcher: its long-lived subscription never
    holds one of the pool's connections."""
    return redis.Redis.from_url(url, **_socket_options(timeout))
