"""The connections of a :class:`~resilience.storage.postgres.PostgresStore`: its pools
(one per process for sync calls, one per event loop for async ones), the session
settings every connection opens with, and what the attempts to connect tell.

A pool holds at most ``pool_size`` connections, opened on demand; callers beyond
that wait their turn, first come first served, up to ``timeout``: a busy pool is
back-pressure, not an outage. :meth:`Health.down` tells a server known to be down
(no connection open, the last attempt failed), so that callers stop waiting the
whole timeout for it.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import weakref
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ["AsyncConnection", "Connection", "Health", "Pools"]


class Health:
    """One pool's connections as its attempts made them: the live ones, the last failure."""

    __slots__ = ("__weakref__", "_lock", "error", "live")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: psycopg.Error | None = None
        self.live: weakref.WeakSet[Any] = weakref.WeakSet()

    def connected(self, connection: Any) -> None:
        with self._lock:
            self.live.add(connection)
            self.error = None

    def failed(self, error: psycopg.Error) -> None:
        self.error = error

    def open_connections(self) -> list[Any]:
        with self._lock:
            return [connection for connection in self.live if not connection.closed]

    def down(self) -> bool:
        """True while no connection is open and the last attempt to open one failed."""
        return self.error is not None and not self.open_connections()


_HEALTH = "resilience_health"  # the key that hands a pool's Health to its connect()


class Connection(psycopg.Connection[TupleRow]):
    """A pooled sync connection that reports its connection attempts."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Connection:
        health: Health = kwargs.pop(_HEALTH)
        try:
            connection = super().connect(conninfo, **kwargs)
        except psycopg.Error as error:
            health.failed(error)
            raise
        health.connected(connection)
        return connection


class AsyncConnection(psycopg.AsyncConnection[TupleRow]):
    """A pooled async connection that reports its connection attempts."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> AsyncConnection:
        health: Health = kwargs.pop(_HEALTH)
        try:
            connection = await super().connect(conninfo, **kwargs)
        except psycopg.Error as error:
            health.failed(error)
            raise
        health.connected(connection)
        return connection


class Pools:
    """One store's pools: a sync pool per process, an async pool per event loop.

    A forked child never uses or closes its parent's sync pool: it opens its own.
    """

    def __init__(
        self, dsn: str, *, table: str, timeout: float, pool_size: int, synchronous_commit: bool
    ) -> None:
        self.dsn = dsn
        self.table = table
        self.timeout = timeout
        self.pool_size = pool_size
        self.synchronous_commit = synchronous_commit
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._health = Health()
        self._pid = 0
        self._abandoned: list[Any] = []  # a parent's pools, never touched in a child
        # Per event loop (an asyncio connection belongs to the loop that opened it).
        self._apools: dict[
            asyncio.AbstractEventLoop, tuple[AsyncConnectionPool[AsyncConnection], Health]
        ] = {}

    def _connect_options(self, health: Health) -> dict[str, Any]:
        ms = max(1, int(self.timeout * 1000))
        seconds = max(2, math.ceil(self.timeout))
        return {
            _HEALTH: health,
            "autocommit": True,
            "connect_timeout": seconds,
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"
            + ("" if self.synchronous_commit else " -c synchronous_commit=off"),
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": ms,
            "application_name": "resilience",
        }

    def _pool_options(self, health: Health) -> dict[str, Any]:
        return {
            "kwargs": self._connect_options(health),
            "min_size": 0,  # connections are opened on demand, kept while in use
            "max_size": self.pool_size,
            "open": False,
            "name": f"resilience:{self.table}",
            "timeout": self.timeout,
            # A failing attempt gives up soon: the next caller starts a fresh one,
            # so a server that comes back is found at once, not after a long backoff.
            "reconnect_timeout": max(1.0, self.timeout),
            "num_workers": 2,
        }

    def sync(self) -> tuple[ConnectionPool[Connection], Health]:
        """This process's sync pool (opened on first use), and its health."""
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool, self._health
        with self._lock:
            if self._pool is not None and self._pid != os.getpid():
                # Forked: the parent's connections are not ours to use, or to close.
                self._abandoned.append(self._pool)
                self._pool = None
            if self._pool is None:
                self._health = Health()
                pool = ConnectionPool(
                    self.dsn, connection_class=Connection, **self._pool_options(self._health)
                )
                pool.open()
                self._pool, self._pid = pool, os.getpid()
            return self._pool, self._health

    async def of_loop(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[AsyncConnectionPool[AsyncConnection], Health]:
        """The async pool of event loop ``loop`` (opened on first use), and its health."""
        entry = self._apools.get(loop)
        if entry is None:
            for other, _ in list(self._apools.items()):
                if other.is_closed():  # its loop is gone, and its pool with it
                    self._apools.pop(other, None)
            health = Health()
            pool = AsyncConnectionPool(
                self.dsn, connection_class=AsyncConnection, **self._pool_options(health)
            )
            entry = self._apools.setdefault(loop, (pool, health))
        if entry[0].closed:
            await entry[0].open()  # idempotent: tasks racing here open it once
        return entry

    def close(self) -> None:
        """Close this process's sync pool (the next call opens a new one)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close(timeout=self.timeout)

    async def aclose(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close event loop ``loop``'s async pool."""
        entry = self._apools.pop(loop, None)
        if entry is not None:
            await entry[0].close(timeout=self.timeout)

    def healths(self) -> list[Health]:
        """The health of every pool: this process's sync one, each loop's."""
        return [self._health, *(health for _, health in list(self._apools.values()))]
