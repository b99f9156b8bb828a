"""Build policies and pipelines from data: dicts, TOML files, environment variables.

A configuration document has three tables (every one optional)::

    [defaults.retry]                 # field defaults for every operation's retry
    attempts = 3

    [policies.payments-db]           # a named policy, shared by reference
    kind = "breaker"
    failure_threshold = 5

    [operations.payments]            # a pipeline, its policies in the standard order
    timeout = 30                     # shorthand for { seconds = 30 }
    retry = { attempts = 5 }         # merged over defaults.retry
    breaker = "payments-db"          # a reference to policies.payments-db

Environment variables override any field: ``RESILIENCE__PAYMENTS__RETRY__ATTEMPTS=5``
(``RESILIENCE__<OPERATION>__<KIND>__<FIELD>[__<SUBFIELD>]``; ``DEFAULTS`` as the
operation sets a default; values are parsed as JSON when they parse, else
taken as strings). Every error names the dotted field, the file (or variable)
the value came from, and is a :class:`~resilience.ConfigurationError`.

Policy kinds live in one table, :data:`POLICY_KINDS`: a name, its options model
and a builder. Cross-field rules in the manner of .NET's standard HTTP
resilience handler are checked on every operation (see :func:`check_pipeline`,
in :mod:`resilience._rules`); reading files and the environment lives in
:mod:`resilience._documents`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ._documents import ENV_PREFIX, load_toml, merge
from ._documents import env_overrides as _env_overrides
from ._policy import Policy
from ._retry_options import coerce_backoff
from ._rules import ConfigurationWarning, check_pipeline
from ._validation import build_options
from .clock import Clock
from .errors import ConfigurationError
from .pipeline import Pipeline

__all__ = [
    "DEFAULT_ORDER",
    "ENV_PREFIX",
    "HTTP_PRESET",
    "POLICY_KINDS",
    "ConfigurationWarning",
    "PolicyKind",
    "build_policy",
    "check_pipeline",
    "env_overrides",
    "http_pipeline",
    "load_toml",
    "merge",
    "policy_options",
]

# -- policy kinds ------------------------------------------------------------------------


def _same(values: dict[str, Any], owner: str) -> dict[str, Any]:
    return values


_ERROR_SELECTORS = ("retry_on", "failure_on", "on")


def _check_selectors(values: dict[str, Any], owner: str) -> dict[str, Any]:
    """Error selectors (``retry_on``…) are error classes, types or a predicate; a
    document may hold anything, so refuse other scalars here, naming the field."""
    for field in _ERROR_SELECTORS:
        value = values.get(field)
        if isinstance(value, bool | int | float):
            raise ConfigurationError(
                owner,
                [(field, f"expected error classes, exception types or a predicate; got {value!r}")],
            )
    return values


def _prepare_retry(values: dict[str, Any], owner: str) -> dict[str, Any]:
    """Backoffs arrive from files as dicts with a ``kind``: build them, naming the field."""
    _check_selectors(values, owner)
    if "backoff" in values:
        values["backoff"] = coerce_backoff(values["backoff"], "backoff", owner)
    by_class = values.get("backoff_by_class")
    if isinstance(by_class, Mapping):
        values["backoff_by_class"] = {
            key: coerce_backoff(value, f"backoff_by_class.{key}", owner)
            for key, value in by_class.items()
        }
    return values


@dataclass(frozen=True)
class PolicyKind:
    """How to build one kind of policy from a dict.

    ``module`` and ``policy``/``options`` name the classes, imported on first use,
    so that a kind can be declared before (or without) its module being loaded.
    The policy class must offer ``from_options(options)``.
    """

    name: str
    module: str
    policy: str
    options: str
    prepare: Callable[[dict[str, Any], str], dict[str, Any]] = _same
    shorthand: str | None = None
    """A field that a bare number stands for (``timeout = 30`` is ``seconds = 30``)."""

    def load(self) -> tuple[type[Policy], type[BaseModel]]:
        try:
            module = importlib.import_module(self.module)
        except ImportError as error:
            raise ConfigurationError(
                "resilience",
                [(self.name, f"policy kind not available: {error}")],
            ) from error
        return getattr(module, self.policy), getattr(module, self.options)

    def validate(self, values: Mapping[str, Any], owner: str) -> BaseModel:
        """The validated options model, before any policy (or store) is built from it."""
        _, model = self.load()
        return build_options(model, owner, **self.prepare(dict(values), owner))

    def build(self, values: Mapping[str, Any], owner: str) -> Policy:
        return self.load()[0].from_options(self.validate(values, owner))


def _kind(name: str, module: str, policy: str, options: str, **extra: Any) -> PolicyKind:
    return PolicyKind(name, f"resilience.{module}", policy, options, **extra)


POLICY_KINDS: dict[str, PolicyKind] = {
    kind.name: kind
    for kind in (
        _kind("retry", "retry", "Retry", "RetryOptions", prepare=_prepare_retry),
        _kind("timeout", "timeout", "Timeout", "TimeoutOptions", shorthand="seconds"),
        _kind("total_timeout", "timeout", "Timeout", "TimeoutOptions", shorthand="seconds"),
        _kind("attempt_timeout", "timeout", "Timeout", "TimeoutOptions", shorthand="seconds"),
        _kind("bulkhead", "bulkhead", "Bulkhead", "BulkheadOptions", shorthand="max_concurrent"),
        _kind("fallback", "fallback", "Fallback", "FallbackOptions", prepare=_check_selectors),
        _kind(
            "cached_fallback",
            "fallback",
            "CachedFallback",
            "CachedFallbackOptions",
            prepare=_check_selectors,
            shorthand="max_age",
        ),
        _kind("breaker", "breaker", "CircuitBreaker", "BreakerOptions", prepare=_check_selectors),
        _kind("rate_limiter", "ratelimit", "RateLimiter", "RateLimiterOptions"),
    )
}
"""Every kind a configuration may name; add an entry to teach it a new policy."""

#: The order of an operation's policies when it gives none: outermost first.
DEFAULT_ORDER: tuple[str, ...] = (
    "fallback",
    "cached_fallback",
    "rate_limiter",
    "bulkhead",
    "timeout",
    "total_timeout",
    "retry",
    "breaker",
    "attempt_timeout",
)


def _takes(kind: PolicyKind, field: str) -> bool:
    return field in kind.load()[1].model_fields


def build_policy(
    kind: str,
    options: Mapping[str, Any] | float | None = None,
    /,
    *,
    name: str | None = None,
    clock: Clock | None = None,
    **more: Any,
) -> Policy:
    """Build one policy of ``kind`` (``"retry"``, ``"breaker"``…, see :data:`POLICY_KINDS`)
    from a dict of its options (and/or keyword arguments), validated once. A bare
    number stands for the kind's main field (``build_policy("timeout", 30)``).

    ``clock`` is given to the policy if it takes one and the options do not set it.
    Raises :class:`~resilience.ConfigurationError` naming each bad field.
    """
    spec = POLICY_KINDS.get(kind)
    if spec is None:
        raise ConfigurationError(
            "resilience",
            [("kind", f"must be one of {', '.join(POLICY_KINDS)}, got {kind!r}")],
        )
    return spec.load()[0].from_options(
        policy_options(kind, options, name=name, clock=clock, **more)
    )


def policy_options(
    kind: str,
    options: Mapping[str, Any] | float | None = None,
    /,
    *,
    name: str | None = None,
    clock: Clock | None = None,
    **more: Any,
) -> BaseModel:
    """What :func:`build_policy` validates, without building the policy: the
    ``kind``'s options model (so that two requests can be compared before either
    makes a store of its own)."""
    spec = POLICY_KINDS.get(kind)
    if spec is None:
        raise ConfigurationError(
            "resilience",
            [("kind", f"must be one of {', '.join(POLICY_KINDS)}, got {kind!r}")],
        )
    values = _policy_values(spec, options, more)
    values.setdefault("name", kind if name is None else name)
    if clock is not None and _takes(spec, "clock"):
        values.setdefault("clock", clock)
    return spec.validate(values, f"{kind} {values.get('name', kind)!r}")


def _policy_values(
    spec: PolicyKind, options: Any, more: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The options as a dict with string keys; a bare value stands for the shorthand field."""
    if options is None or options is True:
        values: dict[str, Any] = {}
    elif isinstance(options, Mapping):
        values = dict(options)
    elif spec.shorthand is not None and not isinstance(options, bool | str | list):
        values = {spec.shorthand: options}
    else:
        raise ConfigurationError(
            spec.name,
            [("<root>", f"expected a table of options, got {options!r}")],
        )
    if more:
        values.update(more)
    bad = [key for key in values if not isinstance(key, str)]
    if bad:
        raise ConfigurationError(
            spec.name,
            [(repr(key), "option names must be strings") for key in bad],
        )
    return values


def env_overrides(
    document: Mapping[str, Any], env: Mapping[str, str], prefix: str = ENV_PREFIX
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Apply ``<PREFIX>__<NAME>__<KIND>__<FIELD>...`` variables to a copy of ``document``;
    return it and, for each path set, the variable that set it (see the module docs)."""
    shorthands = {name: kind.shorthand for name, kind in POLICY_KINDS.items() if kind.shorthand}
    return _env_overrides(document, env, prefix, shorthands=shorthands)


#: The standard HTTP pipeline, after .NET's ``AddStandardResilienceHandler``:
#: concurrency limit → total timeout → retry → breaker → attempt timeout.
HTTP_PRESET: dict[str, Any] = {
    # .NET's default limiter is a concurrency limiter: 1000 permits, no queue. Set a
    # ``rate_limiter`` table (rate, per, burst) to add a token bucket in front.
    "bulkhead": {"max_concurrent": 1000, "max_queued": 0},
    "total_timeout": {"seconds": 30.0},
    # 3 retries (4 attempts), exponential from 2 s, full jitter: worst case 2 + 4 + 8 s.
    "retry": {
        "attempts": 4,
        "backoff": {"kind": "exponential", "base": 2.0, "cap": 30.0, "jitter": "full"},
    },
    # Opens at a 10 % failure ratio over 30 s with at least 100 calls; breaks for 5 s.
    "breaker": {"failure_ratio": 0.1, "minimum_calls": 100, "window": 30.0, "break_duration": 5.0},
    "attempt_timeout": {"seconds": 10.0},
}

PRESETS: dict[str, Mapping[str, Any]] = {"http": HTTP_PRESET}


# -- operations: one pipeline from one table ----------------------------------------------

_OPERATION_KEYS = frozenset({"order", "preset"})


class Problems:
    """Errors gathered over a whole document, each named by its dotted path."""

    def __init__(self, owner: str, sources: Mapping[tuple[str, ...], str] | None = None) -> None:
        self.owner = owner
        self.sources = dict(sources or {})
        self.items: list[tuple[str, str]] = []

    def add(self, path: Sequence[str], message: str) -> None:
        field = ".".join(path)
        variable = self._source(tuple(path))
        self.items.append((field, f"{message} (set by {variable})" if variable else message))

    def add_error(self, prefix: Sequence[str], error: ConfigurationError) -> None:
        for field, line in zip(error.fields, error.errors, strict=True):
            message = line[len(field) + 2 :]
            inner = [] if field == "<root>" else field.split(".")
            self.add([*prefix, *inner], message)

    def _source(self, path: tuple[str, ...]) -> str | None:
        for length in range(len(path), 0, -1):
            variable = self.sources.get(path[:length])
            if variable is not None:
                return variable
        return None

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigurationError(self.owner, self.items)


def build_operation(
    name: str,
    table: Any,
    *,
    defaults: Mapping[str, Any] | None = None,
    resolve: Callable[[str], Policy | None] | None = None,
    clock: Clock | None = None,
    problems: Problems,
    path: Sequence[str] = (),
) -> tuple[Pipeline, dict[str, Policy]] | None:
    """Build the pipeline of one operation table; report errors to ``problems``.

    Returns the pipeline and its inline policies by kind, or ``None`` on errors.
    A string value refers to a named policy (``resolve(name)``); ``false`` drops
    a kind (from a preset or defaults).
    """
    where = list(path) or [name]
    if not isinstance(table, Mapping):
        problems.add(where, f"expected a table of policies, got {table!r}")
        return None
    table = dict(table)
    preset_name = table.pop("preset", None)
    if preset_name is not None:
        preset = PRESETS.get(preset_name) if isinstance(preset_name, str) else None
        if preset is None:
            problems.add([*where, "preset"], f"must be one of {', '.join(PRESETS)}")
            return None
        table = merge(preset, table)
    order = table.pop("order", None)
    stages: dict[str, Policy] = {}
    inline: dict[str, Policy] = {}
    failed = False
    for kind, value in table.items():
        spec = POLICY_KINDS.get(kind)
        if spec is None:
            known = ", ".join([*POLICY_KINDS, *sorted(_OPERATION_KEYS)])
            problems.add([*where, kind], f"unknown policy kind; expected one of {known}")
            failed = True
            continue
        if value is False or value is None:
            continue
        if isinstance(value, str):
            shared = resolve(value) if resolve is not None else None
            policy_type = spec.load()[0]
            if shared is None:
                problems.add([*where, kind], f"no policy named {value!r}")
                failed = True
            elif not isinstance(shared, policy_type):
                problems.add(
                    [*where, kind], f"{value!r} is a {type(shared).__name__}, not a {spec.name}"
                )
                failed = True
            else:
                stages[kind] = shared
            continue
        try:
            values = _policy_values(spec, value)
            base = (defaults or {}).get(kind)
            if isinstance(base, Mapping):
                values = merge(base, values)
            values.setdefault("name", f"{name}.{kind}")
            if clock is not None and _takes(spec, "clock"):
                values.setdefault("clock", clock)
            policy = spec.build(values, f"{kind} {values['name']!r}")
        except ConfigurationError as error:
            problems.add_error([*where, kind], error)
            failed = True
            continue
        stages[kind] = inline[kind] = policy
    sequence = _operation_order(order, stages, problems, [*where, "order"])
    if failed or sequence is None:
        return None
    policies = [stages[kind] for kind in sequence]
    try:
        check_pipeline(
            policies, [".".join([*where, kind]) for kind in sequence], owner=problems.owner
        )
    except ConfigurationError as error:
        for field, line in zip(error.fields, error.errors, strict=True):
            problems.add(field.split("."), line[len(field) + 2 :])
        return None
    return Pipeline(*policies, name=name), inline


def _operation_order(
    order: Any, stages: Mapping[str, Policy], problems: Problems, where: list[str]
) -> list[str] | None:
    if order is None:
        return [kind for kind in DEFAULT_ORDER if kind in stages]
    if (
        not isinstance(order, list)
        or not all(isinstance(kind, str) for kind in order)
        or sorted(order) != sorted(stages)
    ):
        problems.add(
            where,
            f"must list each of the operation's policies once, outermost first: {sorted(stages)}",
        )
        return None
    return list(order)


def http_pipeline(name: str = "http", *, clock: Clock | None = None, **overrides: Any) -> Pipeline:
    """The standard HTTP pipeline (see :data:`HTTP_PRESET` for the defaults).

    Each keyword overrides one stage's options (``retry={"attempts": 3}``), adds one
    (``rate_limiter={"rate": 100, "per": 1.0}``), or drops it (``bulkhead=False``).
    The policies are named ``<name>.<kind>``.
    """
    problems = Problems(f"http pipeline {name!r}")
    built = build_operation(
        name, merge(HTTP_PRESET, overrides), clock=clock, problems=problems, path=[name]
    )
    problems.raise_if_any()
    assert built is not None
    return built[0]
