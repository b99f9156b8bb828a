"""Error classification: stdlib, HTTP clients, database drivers, user classifiers."""

from __future__ import annotations

import email.utils
import errno
import socket
import subprocess
import sys
import urllib.error
from email.message import Message

import pytest
from hypothesis import given
from hypothesis import strategies as st

import resilience as rs
from resilience.classify import classify_status, make_classifier, parse_retry_after

EC = rs.ErrorClass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), EC.TIMEOUT),
        (ConnectionRefusedError(), EC.NETWORK),
        (ConnectionResetError(), EC.NETWORK),
        (BrokenPipeError(), EC.NETWORK),
        (socket.gaierror(socket.EAI_AGAIN, "temporary failure"), EC.NETWORK),
        (OSError(errno.ENETUNREACH, "unreachable"), EC.NETWORK),
        (OSError(errno.EHOSTUNREACH, "no route"), EC.NETWORK),
        (OSError(errno.ETIMEDOUT, "timed out"), EC.TIMEOUT),
        (TypeError(), EC.PERMANENT),
        (ValueError(), EC.PERMANENT),
        (AttributeError(), EC.PERMANENT),
        (KeyError("k"), EC.PERMANENT),
        (IndexError(), EC.PERMANENT),
        (NotImplementedError(), EC.PERMANENT),
        (AssertionError(), EC.PERMANENT),
        (ZeroDivisionError(), EC.PERMANENT),
        (FileNotFoundError(), EC.PERMANENT),
        (RuntimeError(), EC.UNKNOWN),
        (Exception(), EC.UNKNOWN),
        (OSError(errno.EIO, "io"), EC.UNKNOWN),
    ],
)
def test_stdlib(exc: BaseException, expected: rs.ErrorClass) -> None:
    assert rs.classify(exc) == rs.Classification(expected)


def test_own_errors_carry_retry_after() -> None:
    assert rs.classify(rs.CircuitOpenError("b", 3.0)) == rs.Classification(EC.TRANSIENT, 3.0)
    assert rs.classify(rs.RateLimitExceeded("l", 0.5)) == rs.Classification(EC.RATE_LIMITED, 0.5)
    assert rs.classify(rs.TimeoutExceeded("t", 1.0)).error_class is EC.TIMEOUT
    assert rs.classify(rs.StoreUnavailable("redis", "down")).error_class is EC.NETWORK
    assert rs.classify(rs.ConfigurationError("x", [("f", "bad")])).error_class is EC.PERMANENT


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, EC.RATE_LIMITED),
        (408, EC.TRANSIENT),
        (425, EC.TRANSIENT),
        (500, EC.TRANSIENT),
        (502, EC.TRANSIENT),
        (503, EC.TRANSIENT),
        (504, EC.TRANSIENT),
        (400, EC.PERMANENT),
        (401, EC.PERMANENT),
        (403, EC.PERMANENT),
        (404, EC.PERMANENT),
        (422, EC.PERMANENT),
        (501, EC.PERMANENT),
    ],
)
def test_status_codes(status: int, expected: rs.ErrorClass) -> None:
    found = classify_status(status)
    assert found is not None
    assert found.error_class is expected


def test_success_statuses_are_not_failures() -> None:
    assert classify_status(200) is None
    assert classify_status(304) is None


# -- Retry-After -----------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**6))
def test_retry_after_seconds(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == float(seconds)


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 120, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(120.0)
    # A date in the past means "now", never a negative wait.
    past = email.utils.formatdate(now - 50, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize("junk", ["", "   ", "soon", "-5", "nan", "inf", "Mon, 99 Foo 2020"])
def test_retry_after_junk(junk: str) -> None:
    value = parse_retry_after(junk)
    assert value is None or value == 0.0


def test_retry_after_bytes_and_none() -> None:
    assert parse_retry_after(b"7") == 7.0
    assert parse_retry_after(None) is None


# -- HTTP client libraries ------------------------------------------------------------


def test_httpx() -> None:
    import httpx

    request = httpx.Request("GET", "http://127.0.0.1/")

    def status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
        response = httpx.Response(status, headers=headers, request=request)
        return httpx.HTTPStatusError("boom", request=request, response=response)

    assert rs.classify(status_error(429, {"Retry-After": "12"})) == rs.Classification(
        EC.RATE_LIMITED, 12.0
    )
    assert rs.classify(status_error(503)).error_class is EC.TRANSIENT
    assert rs.classify(status_error(404)).error_class is EC.PERMANENT
    assert rs.classify(httpx.ReadTimeout("t", request=request)).error_class is EC.TIMEOUT
    assert rs.classify(httpx.ConnectTimeout("t", request=request)).error_class is EC.TIMEOUT
    assert rs.classify(httpx.ConnectError("c", request=request)).error_class is EC.NETWORK
    assert rs.classify(httpx.RemoteProtocolError("r", request=request)).error_class is EC.NETWORK
    assert rs.classify(httpx.UnsupportedProtocol("u", request=request)).error_class is EC.PERMANENT


def test_requests() -> None:
    import requests

    def http_error(status: int, retry_after: str | None = None) -> requests.HTTPError:
        response = requests.Response()
        response.status_code = status
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return requests.HTTPError("boom", response=response)

    assert rs.classify(http_error(429, "3")) == rs.Classification(EC.RATE_LIMITED, 3.0)
    assert rs.classify(http_error(502)).error_class is EC.TRANSIENT
    assert rs.classify(http_error(400)).error_class is EC.PERMANENT
    assert rs.classify(requests.HTTPError("no response")).error_class is EC.UNKNOWN
    assert rs.classify(requests.ConnectTimeout()).error_class is EC.TIMEOUT
    assert rs.classify(requests.ReadTimeout()).error_class is EC.TIMEOUT
    assert rs.classify(requests.ConnectionError()).error_class is EC.NETWORK
    assert rs.classify(requests.exceptions.MissingSchema()).error_class is EC.PERMANENT


def test_aiohttp() -> None:
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict({"Retry-After": "4"}))
    error = aiohttp.ClientResponseError(None, (), status=429, headers=headers)  # type: ignore[arg-type]
    assert rs.classify(error) == rs.Classification(EC.RATE_LIMITED, 4.0)
    error = aiohttp.ClientResponseError(None, (), status=500)  # type: ignore[arg-type]
    assert rs.classify(error).error_class is EC.TRANSIENT
    assert rs.classify(aiohttp.ServerTimeoutError()).error_class is EC.TIMEOUT
    assert rs.classify(aiohttp.ServerDisconnectedError()).error_class is EC.NETWORK


def test_urllib() -> None:
    headers = Message()
    headers["Retry-After"] = "9"
    error = urllib.error.HTTPError("http://127.0.0.1/", 503, "busy", headers, None)
    assert rs.classify(error) == rs.Classification(EC.TRANSIENT, 9.0)
    error = urllib.error.HTTPError("http://127.0.0.1/", 403, "no", Message(), None)
    assert rs.classify(error).error_class is EC.PERMANENT
    assert rs.classify(urllib.error.URLError(TimeoutError())).error_class is EC.TIMEOUT
    assert rs.classify(urllib.error.URLError("refused")).error_class is EC.NETWORK


def test_redis() -> None:
    import redis.exceptions as rex

    assert rs.classify(rex.TimeoutError()).error_class is EC.TIMEOUT
    assert rs.classify(rex.ConnectionError()).error_class is EC.NETWORK
    assert rs.classify(rex.BusyLoadingError()).error_class is EC.TRANSIENT
    assert rs.classify(rex.AuthenticationError()).error_class is EC.PERMANENT
    assert rs.classify(rex.ResponseError("WRONGTYPE")).error_class is EC.PERMANENT


def test_psycopg() -> None:
    import psycopg
    import psycopg.errors as pe

    assert rs.classify(pe.QueryCanceled()).error_class is EC.TIMEOUT
    assert rs.classify(pe.SerializationFailure()).error_class is EC.TRANSIENT
    assert rs.classify(pe.DeadlockDetected()).error_class is EC.TRANSIENT
    assert rs.classify(pe.AdminShutdown()).error_class is EC.NETWORK
    assert rs.classify(psycopg.OperationalError("connection lost")).error_class is EC.NETWORK
    assert rs.classify(pe.UniqueViolation()).error_class is EC.PERMANENT
    assert rs.classify(pe.UndefinedTable()).error_class is EC.PERMANENT


def test_never_imports_absent_libraries() -> None:
    code = (
        "import sys, resilience as rs\n"
        "rs.classify(ConnectionError()); rs.classify(RuntimeError())\n"
        "loaded = [m for m in ('httpx', 'requests', 'aiohttp', 'redis', 'psycopg')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- user classifiers ----------------------------------------------------------------


class QuotaError(Exception):
    pass


class HardQuotaError(QuotaError):
    pass


def test_mapping_classifier_most_specific_wins() -> None:
    classify = make_classifier({QuotaError: "rate_limited", HardQuotaError: EC.PERMANENT})
    assert classify(QuotaError()).error_class is EC.RATE_LIMITED
    assert classify(HardQuotaError()).error_class is EC.PERMANENT
    assert classify(TimeoutError()).error_class is EC.TIMEOUT  # falls back to the default


def test_callable_classifiers_first_answer_wins() -> None:
    def never(exc: BaseException) -> rs.Classification | None:
        return None

    def quota(exc: BaseException) -> rs.Classification | None:
        if isinstance(exc, QuotaError):
            return rs.Classification(EC.RATE_LIMITED, 60.0)
        return None

    assert rs.classify(QuotaError(), never, quota) == rs.Classification(EC.RATE_LIMITED, 60.0)
    assert rs.classify(ValueError(), never, quota).error_class is EC.PERMANENT


def test_bad_classifier_is_rejected() -> None:
    with pytest.raises(TypeError):
        make_classifier(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="classifier"):
        rs.Retry(classifier=42)  # type: ignore[arg-type]
