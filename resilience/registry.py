"""Registry: named policies and pipelines, shared across an application.

Every part of a program that asks a registry for ``"payments"`` gets the same
breaker (or limiter, or pipeline), so their state is one. A registry is built
in code, from a dict, or from a TOML file with environment overrides (see
:mod:`resilience.config`), and reports every policy's statistics and state as
one JSON-serialisable :meth:`Registry.snapshot` for a health or metrics endpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from ._policy import Policy
from .clock import Clock
from .config import (
    ENV_PREFIX,
    POLICY_KINDS,
    Problems,
    build_operation,
    build_policy,
    env_overrides,
    load_toml,
    policy_options,
)
from .errors import ConfigurationError
from .pipeline import Pipeline

if TYPE_CHECKING:
    from .breaker import CircuitBreaker
    from .bulkhead import Bulkhead
    from .jobs import JobQueue
    from .ratelimit import RateLimiter
    from .retry import Retry
    from .timeout import Timeout

__all__ = ["PolicySnapshot", "QueueSnapshot", "Registry", "RegistrySnapshot"]

T = TypeVar("T", bound=Policy)

_SECTIONS = ("defaults", "policies", "operations")

Scalar = str | int | float | bool | None


class PolicySnapshot(BaseModel):
    """One policy's state and counters at the time of a snapshot."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: str
    """The policy's class: ``Retry``, ``CircuitBreaker``, ``Pipeline``…"""
    state: str | None = None
    """A breaker's state (``closed``, ``open``…); ``None`` for stateless policies."""
    statistics: dict[str, Scalar] = Field(default_factory=dict)
    policies: list[str] = Field(default_factory=list)
    """For a pipeline: its policies' names, outermost first."""


class QueueSnapshot(BaseModel):
    """One durable job queue, read from its store at the time of a snapshot."""

    model_config = ConfigDict(frozen=True)

    name: str
    stats: dict[str, Scalar] = Field(default_factory=dict)
    """Counts by state (``pending``, ``running``, ``done``, ``dead``), ``due`` and ``lag``."""
    error: str | None = None
    """Why the store could not be read (the stats are then empty)."""


class RegistrySnapshot(BaseModel):
    """Every registered policy, by registered name (``snapshot.model_dump_json()``)."""

    model_config = ConfigDict(frozen=True)

    taken_at: datetime.datetime
    policies: dict[str, PolicySnapshot]
    queues: dict[str, QueueSnapshot] = Field(default_factory=dict)
    """Every registered job queue (:meth:`Registry.queue`), by name."""


def describe_queue(name: str, queue: JobQueue) -> QueueSnapshot:
    """A queue's stats now; a store that does not answer gives the error instead."""
    from .errors import StoreUnavailable

    try:
        stats = queue.stats()
    except StoreUnavailable as error:
        return QueueSnapshot(name=name, error=str(error))
    return QueueSnapshot(
        name=name,
        stats={key: _scalar(value) for key, value in dataclasses.asdict(stats).items()},
    )


def _scalar(value: Any) -> Scalar:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no infinity
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def describe(name: str, policy: Policy) -> PolicySnapshot:
    """A snapshot of any policy: its ``statistics`` dataclass, and ``state`` if it has one."""
    statistics: dict[str, Scalar] = {}
    stats = getattr(policy, "statistics", None)
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        statistics = {key: _scalar(value) for key, value in dataclasses.asdict(stats).items()}
    state = getattr(policy, "state", None)
    members = (
        [getattr(inner, "name", type(inner).__name__) for inner in policy.policies]
        if isinstance(policy, Pipeline)
        else []
    )
    statistics.pop("name", None)
    state_value = _scalar(state) if state is not None else None
    statistics.pop("state", None)
    return PolicySnapshot(
        name=name,
        type=type(policy).__name__,
        state=None if state_value is None else str(state_value),
        statistics=statistics,
        policies=members,
    )


class Registry:
    """Named policies and pipelines. Thread-safe; names are unique.

    ``registry.breaker("payments", failure_threshold=5)`` (and ``retry``,
    ``timeout``, ``bulkhead``, ``rate_limiter``…, through :meth:`policy`) returns
    the policy registered under that name, building it on first use.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._policies: dict[str, Policy] = {}
        # The options each policy built by policy() was asked for, to compare requests.
        self._requested: dict[str, BaseModel] = {}
        self._queues: dict[str, JobQueue] = {}
        self._lock = threading.RLock()
        self.clock = clock
        """Given to every policy this registry builds that takes a clock."""

    # -- building from data ----------------------------------------------------------

    @classmethod
    def from_dict(
        cls,
        document: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        source: str = "resilience",
    ) -> Registry:
        """A registry holding the document's named policies and operations.

        ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
        """
        registry = cls(clock=clock)
        registry.load(document, env=env, source=source)
        return registry

    @classmethod
    def from_toml(
        cls,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> Registry:
        """A registry built from a TOML file (errors name the file and the field)."""
        return cls.from_dict(load_toml(path), env=env, clock=clock, source=os.fspath(path))

    def load(
        self,
        document: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        source: str = "resilience",
        prefix: str = ENV_PREFIX,
    ) -> None:
        """Add a document's policies and operations; all or nothing.

        Named policies are registered under their names, operations' pipelines
        under the operation's name and their own policies as ``<operation>.<kind>``.
        """
        document, sources = env_overrides(
            document, os.environ if env is None else env, prefix=prefix
        )
        problems = Problems(source, sources)
        for key in document:
            if key not in _SECTIONS:
                problems.add([key], f"unknown section; expected one of {', '.join(_SECTIONS)}")
        sections = {key: document.get(key) or {} for key in _SECTIONS}
        for key, section in sections.items():
            if not isinstance(section, Mapping):
                problems.add([key], f"expected a table, got {section!r}")
                sections[key] = {}
        defaults = sections["defaults"]
        for kind, table in defaults.items():
            if kind not in POLICY_KINDS:
                problems.add(["defaults", kind], "unknown policy kind")
            elif not isinstance(table, Mapping):
                problems.add(["defaults", kind], f"expected a table of options, got {table!r}")
        staged: dict[str, Policy] = {}
        self._stage_policies(sections["policies"], staged, problems)
        for name, table in sections["operations"].items():
            if name in staged or name in self:
                problems.add(["operations", name], "name already used by another policy")
                continue
            built = build_operation(
                name,
                table,
                defaults=defaults,
                resolve=lambda ref: staged[ref] if ref in staged else self._policies.get(ref),
                clock=self.clock,
                problems=problems,
                path=["operations", name],
            )
            if built is not None:
                pipeline, inline = built
                staged[name] = pipeline
                for kind, policy in inline.items():
                    staged[f"{name}.{kind}"] = policy
        problems.raise_if_any()
        with self._lock:
            taken = [name for name in staged if name in self._policies]
            if taken:
                raise ConfigurationError(
                    problems.owner, [(name, "name already registered") for name in taken]
                )
            self._policies.update(staged)

    def _stage_policies(
        self, section: Mapping[str, Any], staged: dict[str, Policy], problems: Problems
    ) -> None:
        for name, table in section.items():
            where = ["policies", name]
            if not isinstance(table, Mapping) or not isinstance(table.get("kind"), str):
                problems.add([*where, "kind"], "a named policy needs a kind (retry, breaker…)")
                continue
            if name in self:
                problems.add(where, "name already registered")
                continue
            options = {key: value for key, value in table.items() if key != "kind"}
            try:
                staged[name] = build_policy(table["kind"], options, name=name, clock=self.clock)
            except ConfigurationError as error:
                problems.add_error(where, error)

    # -- registering and looking up ------------------------------------------------------

    def register(self, name: str, policy: T, *, replace: bool = False) -> T:
        """Register ``policy`` under ``name`` and return it."""
        if not isinstance(policy, Policy):
            raise TypeError(f"expected a Policy, got {type(policy).__name__}")
        with self._lock:
            if not replace and name in self._policies:
                raise ConfigurationError(
                    "registry", [(name, "name already registered (pass replace=True)")]
                )
            self._policies[name] = policy
            self._requested.pop(name, None)
        return policy

    def get_or_create(self, name: str, factory: Callable[[], T]) -> T:
        """The policy registered as ``name``, built by ``factory()`` the first time."""
        with self._lock:
            policy = self._policies.get(name)
            if policy is None:
                policy = self._policies[name] = factory()
            return policy  # type: ignore[return-value]

    def policy(self, kind: str, name: str, /, **options: Any) -> Policy:
        """The ``kind`` policy named ``name``, built from ``options`` on first use.

        Asking again with no options (or the same ones) returns the same object;
        asking with different options is an error rather than a silent surprise.
        """
        with self._lock:
            existing = self._policies.get(name)
            if existing is None:
                requested = policy_options(kind, options, name=name, clock=self.clock)
                policy = POLICY_KINDS[kind].load()[0].from_options(requested)
                self.register(name, policy)
                self._requested[name] = requested
                return policy
        spec = POLICY_KINDS.get(kind)
        if spec is not None and not isinstance(existing, spec.load()[0]):
            raise ConfigurationError(
                "registry", [(name, f"registered as a {type(existing).__name__}, not a {kind}")]
            )
        if options:
            # Compared as requested, before either request made what a policy adds
            # (a rate limiter's own in-memory store is never equal to another's).
            wanted = policy_options(kind, options, name=name, clock=self.clock)
            had = self._requested.get(name, getattr(existing, "options", None))
            if wanted != had:
                raise ConfigurationError(
                    "registry", [(name, "already registered with different options")]
                )
        return existing

    # The typed accessors: policy() has checked that the registered object is of the kind.

    def retry(self, name: str, /, **options: Any) -> Retry:
        """The :class:`~resilience.Retry` named ``name`` (see :meth:`policy`)."""
        return cast("Retry", self.policy("retry", name, **options))

    def timeout(self, name: str, /, **options: Any) -> Timeout:
        """The :class:`~resilience.Timeout` named ``name`` (see :meth:`policy`)."""
        return cast("Timeout", self.policy("timeout", name, **options))

    def bulkhead(self, name: str, /, **options: Any) -> Bulkhead:
        """The :class:`~resilience.Bulkhead` named ``name`` (see :meth:`policy`)."""
        return cast("Bulkhead", self.policy("bulkhead", name, **options))

    def breaker(self, name: str, /, **options: Any) -> CircuitBreaker:
        """The :class:`~resilience.CircuitBreaker` named ``name`` (see :meth:`policy`)."""
        return cast("CircuitBreaker", self.policy("breaker", name, **options))

    def rate_limiter(self, name: str, /, **options: Any) -> RateLimiter:
        """The :class:`~resilience.RateLimiter` named ``name`` (see :meth:`policy`)."""
        return cast("RateLimiter", self.policy("rate_limiter", name, **options))

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline registered as ``name`` (an operation of a loaded configuration)."""
        policy = self[name]
        if not isinstance(policy, Pipeline):
            raise TypeError(f"{name!r} is a {type(policy).__name__}, not a Pipeline")
        return policy

    def __getitem__(self, name: str) -> Policy:
        with self._lock:
            try:
                return self._policies[name]
            except KeyError:
                known = ", ".join(sorted(self._policies)) or "none"
                raise KeyError(f"no policy named {name!r} (registered: {known})") from None

    def get(self, name: str) -> Policy | None:
        return self._policies.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._policies

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._policies))

    def __len__(self) -> int:
        return len(self._policies)

    def queue(self, name: str, /, **options: Any) -> JobQueue:
        """The durable job queue named ``name``, built with ``options`` (those of
        :class:`~resilience.jobs.JobQueue`) on first use; a registered queue
        (:meth:`register_queue`) is returned as it is."""
        from .jobs import JobQueue

        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = JobQueue(name, **options)
            return queue

    def register_queue(self, queue: JobQueue, *, replace: bool = False) -> JobQueue:
        """Register ``queue`` under its name (for :meth:`snapshot`) and return it."""
        from .jobs import JobQueue

        if not isinstance(queue, JobQueue):
            raise TypeError(f"expected a JobQueue, got {type(queue).__name__}")
        with self._lock:
            if not replace and queue.name in self._queues:
                raise ConfigurationError(
                    "registry", [(queue.name, "queue already registered (pass replace=True)")]
                )
            self._queues[queue.name] = queue
        return queue

    def queues(self) -> list[str]:
        """The names of the registered job queues."""
        with self._lock:
            return sorted(self._queues)

    def remove(self, name: str) -> Policy:
        """Unregister ``name`` and return its policy."""
        with self._lock:
            return self._policies.pop(name)

    # -- reporting -----------------------------------------------------------------------

    def snapshot(self) -> RegistrySnapshot:
        """Every policy's statistics and state, JSON-serialisable
        (``registry.snapshot().model_dump_json()``), and every job queue's stats
        (read from its store now)."""
        with self._lock:
            items = list(self._policies.items())
            queues = list(self._queues.items())
        return RegistrySnapshot(
            taken_at=datetime.datetime.now(datetime.UTC),
            policies={name: describe(name, policy) for name, policy in items},
            queues={name: describe_queue(name, queue) for name, queue in queues},
        )

    def __repr__(self) -> str:
        return f"Registry({sorted(self._policies)})"
