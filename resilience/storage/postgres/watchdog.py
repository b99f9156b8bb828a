"""The client-side deadline of a :class:`~resilience.storage.postgres.PostgresStore`'s calls.

Server-side timeouts and TCP keepalives cannot help when the server's host still
acknowledges packets but the server does not answer (a frozen process, a stopped
VM). So a call that has no answer by its deadline has its connection's socket shut
down: it then fails at once, and the connection is discarded. Sync calls are
watched by :data:`WATCHDOG`, one daemon thread per process; async calls by a timer
on their event loop, which calls :func:`cut_connection`.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import time
from typing import Any

import psycopg

__all__ = ["WATCHDOG", "Watchdog", "cut_connection"]


def cut_connection(connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down: a call waiting on it wakes with an error at once.

    (Closing the descriptor would not wake a thread blocked on it, and could hand
    its number to another file; a shutdown on a duplicate acts on the socket.)
    """
    try:
        duplicate = os.dup(connection.fileno())
    except (psycopg.Error, OSError):
        return
    try:
        with socket.socket(fileno=duplicate) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_LINGER = 5.0  # seconds the watchdog thread stays awake with nothing to watch


class Watchdog:
    """Cuts the connection of a sync call still waiting for its answer at its deadline.

    One daemon thread per process, started on first use. Arming and disarming
    take a lock for a dict operation; the thread sleeps until the earliest
    deadline in flight (or for good when there has been none for a while), so a
    steady stream of calls wakes it about once per deadline span, not per call.
    A cut happens under the lock, so a call that disarms knows for sure whether
    its connection was cut (and must then be discarded, not pooled).
    """

    def __init__(self) -> None:
        self._reinit()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reinit)

    def _reinit(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._calls: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._tickets = itertools.count(1)
        self._next = math.inf
        self._running = False

    def arm(self, connection: psycopg.Connection[Any], seconds: float) -> int:
        deadline = time.monotonic() + seconds
        with self._lock:
            ticket = next(self._tickets)
            self._calls[ticket] = (deadline, connection)
            if not self._running:
                self._running = True
                threading.Thread(
                    target=self._run, name="resilience-postgres-watchdog", daemon=True
                ).start()
            elif deadline < self._next:
                self._wake.notify()
        return ticket

    def disarm(self, ticket: int) -> bool:
        """False if the deadline passed first and the connection was cut."""
        with self._lock:
            return self._calls.pop(ticket, None) is not None

    def _run(self) -> None:
        lingered = False
        with self._lock:
            while True:
                now = time.monotonic()
                for ticket in [t for t, (deadline, _) in self._calls.items() if deadline <= now]:
                    cut_connection(self._calls.pop(ticket)[1])
                if self._calls:
                    self._next = min(deadline for deadline, _ in self._calls.values())
                    lingered = False
                elif not lingered:
                    self._next = now + _LINGER
                    lingered = True
                else:
                    self._next = math.inf
                self._wake.wait(None if self._next == math.inf else self._next - now)


WATCHDOG = Watchdog()
