"""Cross-field rules of a pipeline, after .NET's standard HTTP resilience handler.

Which timeout is the *total* one and which the *attempt* one follows from
where each sits around the retry, so the rules apply alike to configuration
documents and to pipelines built in code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from ._policy import Policy
from .breaker import CircuitBreaker
from .errors import ConfigurationError
from .pipeline import Pipeline
from .retry import Retry
from .timeout import Timeout

__all__ = ["ConfigurationWarning", "check_pipeline"]


class ConfigurationWarning(UserWarning):
    """A configuration that is valid but probably not what was meant."""


def _worst_case_delays(retry: Retry) -> float:
    """The sum of the longest delays a retry can wait between its attempts."""
    options = retry.options
    cap = math.inf if options.max_delay is None else options.max_delay
    return math.fsum(
        min(options.backoff.ceiling(number), cap) for number in range(1, options.attempts)
    )


def check_pipeline(
    policies: Sequence[Policy], paths: Sequence[str] | None = None, *, owner: str = "pipeline"
) -> None:
    """Check the rules of .NET's standard HTTP resilience handler on policies in order
    (outermost first); ``paths`` name them in errors (``policies[i]`` by default).

    * the attempt timeout (the first ``Timeout`` inside the retry) must not exceed the
      total timeout (the nearest ``Timeout`` outside it): error;
    * a time-window breaker's ``window`` must be at least twice the attempt timeout
      (shorter, and one slow attempt can fill the window): error;
    * the retry's summed worst-case delays (``Backoff.ceiling``) beyond its total
      timeout (or its own ``deadline``): :class:`ConfigurationWarning`, since the
      retry then stops early.
    """
    names = list(paths) if paths is not None else [f"policies[{i}]" for i in range(len(policies))]
    flat: list[tuple[str, Policy]] = []
    for path, policy in zip(names, policies, strict=True):
        if isinstance(policy, Pipeline):
            flat.extend((f"{path}[{i}]", inner) for i, inner in enumerate(policy.policies))
        else:
            flat.append((path, policy))
    retry_at = next((i for i, (_, p) in enumerate(flat) if isinstance(p, Retry)), None)
    if retry_at is None:
        return
    retry_path, retry = flat[retry_at]
    assert isinstance(retry, Retry)
    total = next(
        ((path, p) for path, p in reversed(flat[:retry_at]) if isinstance(p, Timeout)), None
    )
    attempt = next(((path, p) for path, p in flat[retry_at:] if isinstance(p, Timeout)), None)
    problems: list[tuple[str, str]] = []
    if total is not None and attempt is not None and attempt[1].seconds > total[1].seconds:
        problems.append(
            (
                f"{attempt[0]}.seconds",
                f"the attempt timeout ({attempt[1].seconds:g}s) must not exceed the total "
                f"timeout {total[0]}.seconds ({total[1].seconds:g}s)",
            )
        )
    if attempt is not None:
        for path, policy in flat[retry_at:]:
            if not isinstance(policy, CircuitBreaker) or policy.options.window is None:
                continue  # only a time window can be filled by one slow attempt
            window = policy.options.window
            if window < 2 * attempt[1].seconds:
                problems.append(
                    (
                        f"{path}.window",
                        f"the breaker's window ({window:g}s) must be at least twice the "
                        f"attempt timeout {attempt[0]}.seconds ({attempt[1].seconds:g}s)",
                    )
                )
    if problems:
        raise ConfigurationError(owner, problems)
    budget_path, budget = (
        (f"{total[0]}.seconds", total[1].seconds)
        if total is not None
        else (f"{retry_path}.deadline", retry.options.deadline)
    )
    if budget is not None:
        worst = _worst_case_delays(retry)
        if worst > budget:
            warnings.warn(
                f"{owner}: {retry_path}.attempts: the retry's worst-case delays add up to "
                f"{worst:g}s, more than {budget_path} ({budget:g}s); it will give up early",
                ConfigurationWarning,
                stacklevel=3,
            )
