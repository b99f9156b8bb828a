"""Token buckets, circuits and job queues in Redis (or Redis Cluster), sync and asyncio.

:class:`RedisStore` implements :class:`~resilience.storage.buckets.BucketStore`,
:class:`~resilience.storage.breakers.BreakerStore` and
:class:`~resilience.storage.jobs.JobStore`, so one store serves every rate
limiter, circuit breaker and job queue of a service::

    store = RedisStore.from_url("redis://cache:6379/0")
    limiter = RateLimiter("emails", rate=100, per=60.0, store=store)
    breaker = CircuitBreaker("payments", failure_threshold=5, store=store)

Design
------
* **One script per state change.** Each operation is one Lua script
  (:mod:`~resilience.storage.redis.scripts`), executed atomically by the
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
* **Job queues** (:mod:`~resilience.storage.redis.job_scripts` tells the keys)
  keep each job in a hash and index it in sorted sets kept by the scripts, so
  that a claim takes due jobs in claim order at O(log n) a job, and stats and
  batch progress are counters, not scans. Every change is one script on the
  server's ``TIME``. All keys of a queue share its hash tag
  (``{prefix}:jobs:{<queue>}:...``). Redis is not transactional with the
  caller's database, so ``connection=`` is refused.
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

Modules
-------
``store`` (:class:`RedisStore`), ``scripts`` (the Lua), ``keys`` (key names and
hash tags), ``wire`` (values to and from the scripts), ``lineage`` (versions
across lost circuits), ``clients`` (pools, timeouts, retries), ``urls`` (URL
options, checks, redaction), ``watcher`` (the pub/sub thread), ``jobs`` (the job
queue methods) and ``job_scripts`` (their Lua and key layout).
"""

from __future__ import annotations

# The driver first, here: a missing redis-py is reported on importing this package
# even when a submodule is already loaded (store_from_url names the extra to install).
import redis  # noqa: F401

from .clients import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from .store import RedisStore

__all__ = ["RedisStore"]

# The class goes by its public path (in pickles, docs and reprs), wherever it is defined.
RedisStore.__module__ = __name__
