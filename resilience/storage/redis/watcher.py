"""The pub/sub watcher of a :class:`~resilience.storage.redis.RedisStore` built with
``pubsub=True``: one background thread that pushes circuit transitions to breakers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..breakers import CircuitSnapshot, SnapshotCallback
from .wire import text, utf8

if TYPE_CHECKING:
    from .store import RedisStore

__all__ = ["Watcher"]

_log = logging.getLogger(__package__)  # the package's logger, where users look for it


class Watcher:
    """One background thread per store, subscribed to the channels of watched circuits.

    Robustness: messages are hints, never the only source of truth. While the
    subscription is down (Redis restarting), the thread reconnects with backoff;
    after every (re)subscription it reloads each watched circuit and hands the
    snapshot to its callbacks, so a transition published while disconnected is
    not lost. Callbacks ignore snapshots older than what they hold; a circuit
    Redis lost (and made again) is reported with newer versions (see
    :class:`~resilience.storage.redis.lineage.Lineage`), so a breaker follows it.
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
            channel = utf8(channel)
        with self._lock:
            name = self._names.get(channel)
        if name is None:
            return
        try:
            snapshot = self._store._circuit(name, json.loads(text(message["data"])), current=False)
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
