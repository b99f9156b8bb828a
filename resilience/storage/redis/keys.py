"""The Redis keys of a :class:`~resilience.storage.redis.RedisStore`'s buckets and circuits.

``{prefix}:{<name>}:b`` is a limiter's unkeyed bucket, ``{prefix}:{<name>}:k:<key>``
a keyed bucket (a key longer than :data:`LONG_KEY` bytes is replaced by its SHA-256,
``...:h:<hex>``) and ``{prefix}:{<name>}:c`` a circuit (one hash). The braces are
Redis Cluster's hash tag: by default the policy name, so all keys of one limiter or
breaker live in one slot. With ``hash_tag=`` the tag is chosen instead
(``{prefix}:{<tag>}:n<len>:<name>:...``), which limiters acquired together on a
cluster must share: one script may touch only one slot.

A job queue's keys start with ``{prefix}:jobs:{<queue>}`` (the queue name is the
hash tag, so one script reaches all of a queue's keys on a cluster); a name that
contains a brace, or is empty, goes hex-encoded instead: ``{prefix}:jobx:{=<hex>}``.
Two keys are shared by every queue of a store: ``{prefix}:jobs:ids`` (the id
counter) and ``{prefix}:jobs:queues`` (the set of queue names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from ...errors import ConfigurationError
from ..buckets import BucketRequest
from .wire import utf8

__all__ = ["LONG_KEY", "RedisKeys"]

#: Keys (UTF-8) longer than this are stored under their SHA-256 instead.
LONG_KEY = 512

#: Keys remembered per store (keyed limiters may see unbounded keys: past this, built anew).
_CACHED = 10_000


class RedisKeys:
    """One store's key names: built from its prefix and hash tags, cached as bytes."""

    __slots__ = ("_bucket_keys", "_circuit_keys", "_job_bases", "hash_tag", "prefix")

    def __init__(self, prefix: str, hash_tag: str | Mapping[str, str] | None) -> None:
        self.prefix = prefix
        self.hash_tag = hash_tag
        self._bucket_keys: dict[tuple[str, str | None], bytes] = {}
        self._circuit_keys: dict[str, bytes] = {}
        self._job_bases: dict[str, bytes] = {}

    def tag(self, name: str) -> str:
        """The hash tag of policy ``name``'s keys."""
        tag = self.hash_tag
        if tag is None:
            return name
        if isinstance(tag, str):
            return tag
        return tag.get(name, name)

    def base(self, name: str) -> str:
        """What every key of policy ``name`` starts with."""
        if not isinstance(name, str):
            raise TypeError(f"RedisStore: policy names are str, got {type(name).__name__}")
        if "{" in name or "}" in name:
            raise ConfigurationError(
                "RedisStore", [("name", f"policy names may not contain braces, got {name!r}")]
            )
        tag = self.tag(name)
        if tag == name:
            return f"{self.prefix}:{{{name}}}"
        return f"{self.prefix}:{{{tag}}}:n{len(name)}:{name}"

    def bucket(self, name: str, key: str | None) -> bytes:
        """The key of bucket ``(name, key)``."""
        cache_key = (name, key)
        found = self._bucket_keys.get(cache_key)
        if found is not None:
            return found
        base = utf8(self.base(name))
        if key is None:
            made = base + b":b"
        elif not isinstance(key, str):
            raise TypeError(f"RedisStore: bucket keys are str, got {type(key).__name__}")
        else:
            raw = utf8(key)
            if len(raw) > LONG_KEY:  # bounded in Redis and here; never cached
                return base + b":h:" + hashlib.sha256(raw).hexdigest().encode()
            made = base + b":k:" + raw
        if len(self._bucket_keys) < _CACHED:
            self._bucket_keys[cache_key] = made
        return made

    def circuit(self, name: str) -> bytes:
        """The key (a hash) of circuit ``name``."""
        found = self._circuit_keys.get(name)
        if found is None:
            found = utf8(f"{self.base(name)}:c")
            if len(self._circuit_keys) < _CACHED:
                self._circuit_keys[name] = found
        return found

    def job_base(self, queue: str) -> bytes:
        """What every key of job queue ``queue`` starts with (its hash tag included)."""
        found = self._job_bases.get(queue)
        if found is not None:
            return found
        if not isinstance(queue, str):
            raise TypeError(f"RedisStore: queue names are str, got {type(queue).__name__}")
        if queue and "{" not in queue and "}" not in queue:
            made = utf8(f"{self.prefix}:jobs:{{{queue}}}")
        else:  # a brace would end the hash tag early, an empty tag hashes the whole key
            made = utf8(f"{self.prefix}:jobx:{{=") + utf8(queue).hex().encode() + b"}"
        if len(self._job_bases) < _CACHED:
            self._job_bases[queue] = made
        return made

    def job_ids(self) -> bytes:
        """The counter that numbers the jobs of every queue."""
        return utf8(f"{self.prefix}:jobs:ids")

    def job_queues(self) -> bytes:
        """The set of the names of the queues that hold jobs."""
        return utf8(f"{self.prefix}:jobs:queues")

    def check_one_slot(self, requests: Sequence[BucketRequest]) -> None:
        """Refuse, before any I/O, a Redis Cluster acquisition over several hash tags."""
        if len({self.tag(request.name) for request in requests}) > 1:
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
