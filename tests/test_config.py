"""Configuration: policies from dicts, TOML and the environment; cross-field rules;
the HTTP preset. Every invalid input is a ConfigurationError naming a field."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience as rs
from resilience.breaker import CircuitBreaker
from resilience.bulkhead import Bulkhead
from resilience.config import (
    HTTP_PRESET,
    POLICY_KINDS,
    ConfigurationWarning,
    build_policy,
    check_pipeline,
    env_overrides,
    http_pipeline,
)
from resilience.fallback import CachedFallback
from resilience.pipeline import Pipeline
from resilience.registry import Registry
from resilience.testing import FakeClock
from resilience.timeout import Timeout

# -- one policy from a dict ------------------------------------------------------------------


def test_build_each_kind_from_a_dict() -> None:
    clock = FakeClock()
    retry = build_policy(
        "retry",
        {"attempts": 5, "backoff": {"kind": "constant", "delay": 1.0}, "retry_on": ["network"]},
        clock=clock,
    )
    assert isinstance(retry, rs.Retry)
    assert retry.options.attempts == 5
    assert retry.options.backoff == rs.Backoff.constant(1.0)
    assert retry.options.clock is clock
    assert isinstance(build_policy("timeout", {"seconds": "2.5"}), Timeout)
    assert isinstance(build_policy("bulkhead", {"max_concurrent": 4}), Bulkhead)
    assert build_policy("fallback", {"value": []}).call(_fail) == []
    assert isinstance(build_policy("cached_fallback", {"max_age": 60}), CachedFallback)
    breaker = build_policy("breaker", {"failure_threshold": 3}, name="db")
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.name == "db"


def _fail() -> None:
    raise ConnectionError


def test_shorthands_and_keyword_options() -> None:
    timeout = build_policy("timeout", 30)
    assert isinstance(timeout, Timeout)
    assert timeout.seconds == 30.0
    bulkhead = build_policy("bulkhead", None, max_concurrent=2)
    assert isinstance(bulkhead, Bulkhead)
    assert bulkhead.options.max_concurrent == 2
    with pytest.raises(rs.ConfigurationError) as caught:
        build_policy("fallback", "n/a")  # a string in a document names a shared policy
    assert caught.value.fields == ("<root>",)


def test_unknown_kind_and_unknown_field_are_named() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        build_policy("retyr", {})
    assert caught.value.fields == ("kind",)
    with pytest.raises(rs.ConfigurationError) as caught:
        build_policy("retry", {"atempts": 3})
    assert caught.value.fields == ("atempts",)
    with pytest.raises(rs.ConfigurationError) as caught:
        build_policy("retry", {"backoff": {"kind": "exponential", "base": -1}})
    assert caught.value.fields == ("backoff.base",)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-2, 2), max_size=3),
    st.dictionaries(st.sampled_from(["kind", "base", "delay", "x"]), st.integers(-1, 3)),
)


def _fields(kind: str) -> list[str]:
    return [name for name in POLICY_KINDS[kind].load()[1].model_fields if name != "clock"]


@st.composite
def option_dicts(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(POLICY_KINDS)))
    keys = st.sampled_from([*_fields(kind), "bogus"])
    return kind, draw(st.dictionaries(keys, VALUES, max_size=4))


@settings(max_examples=400, deadline=None)
@given(option_dicts())
def test_any_option_dict_builds_or_names_a_field(case: tuple[str, dict[str, Any]]) -> None:
    kind, options = case
    try:
        build_policy(kind, options)
    except rs.ConfigurationError as error:
        assert error.fields
        model = POLICY_KINDS[kind].load()[1]
        required = {name for name, info in model.model_fields.items() if info.is_required()}
        for name in error.fields:
            assert name.split(".")[0] in {*options, *required}, name


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["timeout", "total_timeout", "attempt_timeout"]),
    st.one_of(
        st.floats(max_value=0.0),
        st.just(float("nan")),
        st.text(min_size=1).filter(lambda text: not _is_number(text)),
    ),
)
def test_invalid_seconds_are_always_named(kind: str, seconds: Any) -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        build_policy(kind, {"seconds": seconds})
    assert caught.value.fields == ("seconds",)


# -- documents, files, environment -------------------------------------------------------------

DOCUMENT: dict[str, Any] = {
    "defaults": {"retry": {"attempts": 4, "backoff": {"kind": "constant", "delay": 0.5}}},
    "operations": {
        "payments": {"timeout": 30, "retry": {"attempts": 6}},
        "search": {"retry": True, "bulkhead": 8},
    },
}


def test_defaults_are_merged_under_each_operation() -> None:
    registry = Registry.from_dict(DOCUMENT, env={})
    payments = registry["payments.retry"]
    search = registry["search.retry"]
    assert isinstance(payments, rs.Retry)
    assert isinstance(search, rs.Retry)
    assert payments.options.attempts == 6
    assert payments.options.backoff == rs.Backoff.constant(0.5)
    assert search.options.attempts == 4
    assert [type(p).__name__ for p in registry.pipeline("search")] == ["Bulkhead", "Retry"]


def test_a_nested_table_of_another_kind_replaces_the_default() -> None:
    document = {
        "defaults": {"retry": {"backoff": {"kind": "constant", "delay": 0.5}}},
        "operations": {"op": {"retry": {"backoff": {"kind": "linear", "base": 1, "step": 1}}}},
    }
    retry = Registry.from_dict(document, env={})["op.retry"]
    assert isinstance(retry, rs.Retry)
    assert retry.options.backoff == rs.Backoff.linear(1, 1)


def test_env_overrides_fields_parsing_json() -> None:
    env = {
        "RESILIENCE__PAYMENTS__RETRY__ATTEMPTS": "9",
        "RESILIENCE__PAYMENTS__RETRY__BACKOFF__DELAY": "0.25",
        "RESILIENCE__PAYMENTS__TIMEOUT__SECONDS": "12.5",
        "RESILIENCE__DEFAULTS__RETRY__RETRY_ON": '["network", "timeout"]',
        "RESILIENCE__NEW_OP__BULKHEAD__MAX_CONCURRENT": "3",
        "OTHER__PAYMENTS__RETRY__ATTEMPTS": "1",
    }
    registry = Registry.from_dict(DOCUMENT, env=env)
    retry = registry["payments.retry"]
    assert isinstance(retry, rs.Retry)
    assert retry.options.attempts == 9
    assert retry.options.backoff == rs.Backoff.constant(0.25)
    assert retry.options.retry_on == (rs.ErrorClass.NETWORK, rs.ErrorClass.TIMEOUT)
    timeout = registry["payments.timeout"]
    assert isinstance(timeout, Timeout)
    assert timeout.seconds == 12.5
    assert isinstance(registry["new_op.bulkhead"], Bulkhead)


def test_env_names_match_operations_ignoring_case_and_punctuation() -> None:
    document = {"operations": {"payments-api": {"retry": {}}}}
    document_after, sources = env_overrides(
        document, {"RESILIENCE__PAYMENTS_API__RETRY__ATTEMPTS": "2"}
    )
    assert document_after["operations"]["payments-api"]["retry"] == {"attempts": 2}
    assert sources == {
        (
            "operations",
            "payments-api",
            "retry",
            "attempts",
        ): "RESILIENCE__PAYMENTS_API__RETRY__ATTEMPTS"
    }
    assert document == {"operations": {"payments-api": {"retry": {}}}}  # not modified


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict(DOCUMENT, env={"RESILIENCE__PAYMENTS__RETRY__ATTEMPTS": "many"})
    assert caught.value.fields == ("operations.payments.retry.attempts",)
    assert "RESILIENCE__PAYMENTS__RETRY__ATTEMPTS" in str(caught.value)
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict(DOCUMENT, env={"RESILIENCE__PAYMENTS": "1"})
    assert caught.value.fields == ("RESILIENCE__PAYMENTS",)


def test_toml_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(
        """
[operations.payments]
timeout = 30
retry = { attempts = 0 }

[operations.search.bulkhead]
max_concurrent = 4
max_queued = -1
"""
    )
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_toml(path, env={})
    assert caught.value.fields == (
        "operations.payments.retry.attempts",
        "operations.search.bulkhead.max_queued",
    )
    assert str(path) in str(caught.value)


def test_toml_syntax_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[operations.payments\n")
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_toml(path, env={})
    assert str(path) in str(caught.value)


def test_structural_errors_are_named() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict(
            {
                "operation": {},
                "defaults": {"retri": {}},
                "policies": {"x": {"failure_threshold": 1}},
                "operations": {"a": {"retri": {}}, "b": 5, "c": {"breaker": "nope"}},
            },
            env={},
        )
    assert caught.value.fields == (
        "operation",
        "defaults.retri",
        "policies.x.kind",
        "operations.a.retri",
        "operations.b",
        "operations.c.breaker",
    )


def test_order_is_explicit_or_standard() -> None:
    operation = {"retry": {}, "timeout": 5, "fallback": {"value": 0}, "breaker": {}}
    standard = Registry.from_dict({"operations": {"op": operation}}, env={}).pipeline("op")
    assert [p.kind for p in standard] == ["fallback", "timeout", "retry", "circuit_breaker"] or [
        type(p).__name__ for p in standard
    ] == ["Fallback", "Timeout", "Retry", "CircuitBreaker"]
    custom = {**operation, "order": ["retry", "breaker", "timeout", "fallback"]}
    pipeline = Registry.from_dict({"operations": {"op": custom}}, env={}).pipeline("op")
    assert [type(p).__name__ for p in pipeline] == [
        "Retry",
        "CircuitBreaker",
        "Timeout",
        "Fallback",
    ]
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict({"operations": {"op": {**operation, "order": ["retry"]}}}, env={})
    assert caught.value.fields == ("operations.op.order",)


# -- cross-field rules -------------------------------------------------------------------------


def test_attempt_timeout_must_not_exceed_total_timeout() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict(
            {"operations": {"op": {"total_timeout": 5, "retry": {}, "attempt_timeout": 10}}},
            env={},
        )
    assert caught.value.fields == ("operations.op.attempt_timeout.seconds",)
    assert "total timeout" in str(caught.value)


def test_breaker_window_must_be_twice_the_attempt_timeout() -> None:
    operation = {
        "retry": {},
        "breaker": {"failure_ratio": 0.5, "window": 15.0},
        "attempt_timeout": 10,
    }
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict({"operations": {"op": operation}}, env={})
    assert caught.value.fields == ("operations.op.breaker.window",)
    operation["breaker"] = {"failure_ratio": 0.5, "window": 20.0}
    Registry.from_dict({"operations": {"op": operation}}, env={})


def test_worst_case_retry_delays_beyond_the_total_timeout_warn() -> None:
    operation = {
        "total_timeout": 10,
        "retry": {"attempts": 4, "backoff": {"kind": "exponential", "base": 2, "cap": 60}},
    }
    # ceilings 2 + 4 + 8 = 14 s > 10 s
    with pytest.warns(ConfigurationWarning, match=r"op\.retry\.attempts.*14s"):
        Registry.from_dict({"operations": {"op": operation}}, env={})
    operation["total_timeout"] = 14
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Registry.from_dict({"operations": {"op": operation}}, env={})


def test_check_pipeline_on_a_programmatic_pipeline() -> None:
    retry = rs.Retry(attempts=3, backoff=rs.Backoff.constant(10.0))
    with pytest.raises(rs.ConfigurationError) as caught:
        check_pipeline([Timeout(5.0), Pipeline(retry, Timeout(6.0))])
    assert caught.value.fields == ("policies[1][1].seconds",)
    with pytest.warns(ConfigurationWarning, match=r"policies\[1\]\.attempts"):
        check_pipeline([Timeout(5.0), retry])
    with pytest.warns(ConfigurationWarning, match="deadline"):
        check_pipeline([rs.Retry(attempts=3, backoff=rs.Backoff.constant(10.0), deadline=5.0)])
    check_pipeline([Timeout(5.0)])  # nothing to compare


# -- the HTTP preset ---------------------------------------------------------------------------


def test_http_pipeline_defaults() -> None:
    pipeline = http_pipeline(clock=FakeClock())
    assert [type(p).__name__ for p in pipeline] == [
        "Bulkhead",
        "Timeout",
        "Retry",
        "CircuitBreaker",
        "Timeout",
    ]
    bulkhead, total, retry, breaker, attempt = pipeline
    assert isinstance(bulkhead, Bulkhead)
    assert bulkhead.options.max_concurrent == 1000
    assert isinstance(total, Timeout)
    assert total.seconds == 30.0
    assert isinstance(retry, rs.Retry)
    assert retry.options.attempts == 4
    assert isinstance(attempt, Timeout)
    assert attempt.seconds == 10.0
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.options.failure_ratio == 0.1
    assert breaker.options.window == 30.0
    assert attempt.name == "http.attempt_timeout"
    assert HTTP_PRESET["total_timeout"] == {"seconds": 30.0}  # not modified


def test_http_pipeline_overrides_are_validated() -> None:
    pipeline = http_pipeline("api", retry={"attempts": 2}, bulkhead=False)
    assert [type(p).__name__ for p in pipeline] == ["Timeout", "Retry", "CircuitBreaker", "Timeout"]
    with pytest.raises(rs.ConfigurationError) as caught:
        http_pipeline(attempt_timeout=20)
    assert caught.value.fields == ("http.breaker.window",)  # 30 s < 2 x 20 s
    with pytest.raises(rs.ConfigurationError) as caught:
        http_pipeline(attempt_timeout=40, breaker={"window": 120})
    assert caught.value.fields == ("http.attempt_timeout.seconds",)  # 40 s > 30 s total


def test_http_preset_in_a_document() -> None:
    document = {"operations": {"github": {"preset": "http", "total_timeout": 60}}}
    pipeline = Registry.from_dict(document, env={}).pipeline("github")
    assert isinstance(pipeline[1], Timeout)
    assert pipeline[1].seconds == 60.0
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict({"operations": {"x": {"preset": "grpc"}}}, env={})
    assert caught.value.fields == ("operations.x.preset",)


DOCUMENT_VALUES = st.one_of(
    VALUES,
    st.dictionaries(st.sampled_from(["attempts", "seconds", "max_concurrent", "x"]), VALUES),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    kinds = st.sampled_from([*sorted(POLICY_KINDS), "order", "preset", "nope"])
    operations = st.dictionaries(
        st.sampled_from(["a", "b"]), st.dictionaries(kinds, DOCUMENT_VALUES, max_size=4)
    )
    document: dict[str, Any] = {"operations": draw(operations)}
    if draw(st.booleans()):
        document["defaults"] = draw(st.dictionaries(kinds, DOCUMENT_VALUES, max_size=2))
    if draw(st.booleans()):
        document[draw(st.sampled_from(["policies", "extra"]))] = draw(DOCUMENT_VALUES)
    return document


@settings(max_examples=300, deadline=None)
@given(documents())
def test_any_document_loads_or_names_its_fields(document: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigurationWarning)
        try:
            registry = Registry.from_dict(document, env={})
        except rs.ConfigurationError as error:
            assert error.fields
            for name in error.fields:
                assert name.split(".")[0] in document, name
        else:
            assert set(document.get("operations", {})) <= set(registry)


def test_defaults_must_be_tables() -> None:
    with pytest.raises(rs.ConfigurationError) as caught:
        Registry.from_dict({"defaults": {"retry": 3}}, env={})
    assert caught.value.fields == ("defaults.retry",)
