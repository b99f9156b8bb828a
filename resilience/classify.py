"""Error classification: what kind of failure an exception is.

A retry policy asks one question of every failure: is it worth trying again,
and how soon? :func:`classify` answers it with an :class:`ErrorClass` and, when
the failure carries one (an HTTP 429 or 503 with ``Retry-After``), the delay the
server asked for.

The default classifier knows the standard library and, when they are already
imported, httpx, requests, aiohttp, urllib, redis-py and psycopg. It never
imports them: an exception from a library can only exist once that library is
loaded, so the lookup goes through the exception's own class hierarchy.
"""

from __future__ import annotations

import calendar
import datetime
import errno
import math
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

from .clock import MAX_DURATION
from .errors import (
    BulkheadFull,
    CircuitOpenError,
    ConfigurationError,
    RateLimitExceeded,
    ResilienceError,
    StoreUnavailable,
    TimeoutExceeded,
)

__all__ = [
    "ErrorClass",
    "ErrorFilter",
    "ErrorSelector",
    "Classification",
    "Classifier",
    "ClassifierLike",
    "classify",
    "classify_status",
    "error_filter",
    "default_classifier",
    "make_classifier",
    "checked_classifier",
    "normalize_error_selector",
    "parse_retry_after",
]


class ErrorClass(StrEnum):
    """The kinds of failure a policy tells apart."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    NETWORK = "network"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Classification:
    """An error's class and, if the failure said so, how long to wait."""

    error_class: ErrorClass
    retry_after: float | None = None


Classifier: TypeAlias = Callable[[BaseException], Classification | None]
"""A callable that classifies an exception, or returns ``None`` to pass."""

ClassifierLike: TypeAlias = Classifier | Mapping[type[BaseException], ErrorClass | str] | None
"""What users may pass as ``classifier=``: a callable, or a mapping of types."""

_PERMANENT = Classification(ErrorClass.PERMANENT)
_TRANSIENT = Classification(ErrorClass.TRANSIENT)
_TIMEOUT = Classification(ErrorClass.TIMEOUT)
_NETWORK = Classification(ErrorClass.NETWORK)
_UNKNOWN = Classification(ErrorClass.UNKNOWN)


# --------------------------------------------------------------------------
# HTTP status codes and Retry-After


_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 section 5.6.7, case-sensitive, ASCII digits only ([0-9], never \d).
_IMF_FIXDATE = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(rf"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME_DATE = re.compile(rf"{_DAY} {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")
_DELAY_SECONDS = re.compile(r"[0-9]+")
_MAX_DIGITS = len(str(int(MAX_DURATION)))  # more digits than this: past the ceiling


def _http_date(text: str, now: float) -> float | None:
    """The POSIX time of an RFC 9110 HTTP-date (any of its three formats), or None."""
    match = _IMF_FIXDATE.fullmatch(text)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
    else:
        match = _RFC850_DATE.fullmatch(text)
        if match is not None:
            day, month, short_year, hour, minute, second = match.groups()
            # A two-digit year more than 50 years ahead is the last such year past.
            this_year = time.gmtime(now).tm_year if math.isfinite(now) else 2000
            century = this_year - this_year % 100
            year = str(century + int(short_year))
            if int(year) > this_year + 50:
                year = str(int(year) - 100)
        else:
            match = _ASCTIME_DATE.fullmatch(text)
            if match is None:
                return None
            month, day, hour, minute, second, year = match.groups()
    try:
        parsed = (int(year), _MONTHS.index(month) + 1, int(day.strip()))
        datetime.date(*parsed)  # a day the month has
    except ValueError:
        return None
    h, m, sec = int(hour), int(minute), int(second)
    if h > 23 or m > 59 or sec > 60:  # 60: a leap second
        return None
    return float(calendar.timegm((*parsed, h, m, sec, 0, 0, 0)))


def parse_retry_after(value: str | bytes | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header value as RFC 9110 defines it.

    ``delay-seconds`` is one or more ASCII digits (no sign, no fraction, no
    exponent, no ``_``); otherwise the value must be an HTTP-date in one of
    its three formats (IMF-fixdate, the obsolete RFC 850 and asctime forms),
    and a date in the past means ``0.0``. Anything else is garbage: ``None``.

    Returns seconds to wait, in ``[0, MAX_DURATION]``: a longer delay (or a
    date further ahead) is clamped to ``MAX_DURATION`` (1e9 s); a retry then
    bounds it further by its own ``max_delay``. ``now`` is the current
    wall-clock time (``time.time()``) for dates.
    """
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.strip(" \t")  # optional whitespace around a field value
    if _DELAY_SECONDS.fullmatch(text):
        if len(text.lstrip("0")) > _MAX_DIGITS:
            return MAX_DURATION  # no int() of a huge digit string
        return min(float(int(text)), MAX_DURATION)
    current = time.time() if now is None else now
    when = _http_date(text, current)
    if when is None:
        return None
    delay = when - current
    if not delay > 0.0:  # in the past (or a NaN ``now``): now
        return 0.0
    return min(delay, MAX_DURATION)


def classify_status(status: int, retry_after: float | None = None) -> Classification | None:
    """Classify an HTTP status code; ``None`` for statuses that are not failures."""
    if status == 429:
        return Classification(ErrorClass.RATE_LIMITED, retry_after)
    if status in (408, 425, 500, 502, 503, 504):
        return Classification(ErrorClass.TRANSIENT, retry_after)
    if 400 <= status < 600:
        return _PERMANENT
    return None


def _header(headers: Any, name: str) -> Any:
    if headers is None:
        return None
    try:
        return headers.get(name)
    except Exception:  # an odd headers object must not break classification
        return None


def _from_response(status: Any, headers: Any) -> Classification:
    if not isinstance(status, int):
        return _UNKNOWN
    retry_after = parse_retry_after(_header(headers, "Retry-After"))
    return classify_status(status, retry_after) or _UNKNOWN


# --------------------------------------------------------------------------
# Library-specific classifiers, looked up by the root module of the
# exception's classes. Each is only ever called with an exception whose class
# hierarchy already includes that library, so the imports below are free.


def _classify_httpx(exc: BaseException) -> Classification | None:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return _from_response(exc.response.status_code, exc.response.headers)
    if isinstance(exc, httpx.TimeoutException):
        return _TIMEOUT
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError):
        return _NETWORK
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL | httpx.TooManyRedirects):
        return _PERMANENT
    if isinstance(exc, httpx.TransportError):
        return _TRANSIENT
    return None


def _classify_requests(exc: BaseException) -> Classification | None:
    import requests

    if isinstance(exc, requests.HTTPError):
        response = exc.response
        if response is None:
            return _UNKNOWN
        return _from_response(response.status_code, response.headers)
    if isinstance(exc, requests.Timeout):  # before ConnectionError: ConnectTimeout is both
        return _TIMEOUT
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return _NETWORK
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema
        | requests.exceptions.InvalidHeader
        | requests.TooManyRedirects,
    ):
        return _PERMANENT
    return None


def _classify_aiohttp(exc: BaseException) -> Classification | None:
    import aiohttp

    if isinstance(exc, aiohttp.ClientResponseError):
        return _from_response(exc.status, exc.headers)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # before connection errors: it is both
        return _TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectionError):
        return _NETWORK
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _TRANSIENT
    if isinstance(exc, aiohttp.InvalidURL):
        return _PERMANENT
    return None


def _classify_urllib(exc: BaseException) -> Classification | None:
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return _from_response(exc.code, exc.headers)
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return _TIMEOUT
        return _NETWORK
    return None


def _classify_redis(exc: BaseException) -> Classification | None:
    import redis.exceptions as rex

    if isinstance(exc, rex.TimeoutError):
        return _TIMEOUT
    if isinstance(exc, rex.BusyLoadingError | rex.ReadOnlyError | rex.TryAgainError):
        return _TRANSIENT
    if isinstance(exc, rex.ClusterDownError | rex.MasterDownError):
        return _TRANSIENT
    if isinstance(exc, rex.AuthenticationError | rex.DataError | rex.ResponseError):
        return _PERMANENT  # AuthenticationError is a ConnectionError: test it first
    if isinstance(exc, rex.ConnectionError):
        return _NETWORK
    return None


# SQLSTATE classes: https://www.postgresql.org/docs/current/errcodes-appendix.html
_SQLSTATE_CLASSES: tuple[tuple[str, Classification], ...] = (
    ("57014", _TIMEOUT),  # query_canceled (statement_timeout)
    ("55P03", _TRANSIENT),  # lock_not_available
    ("57P", _NETWORK),  # admin/crash shutdown, cannot connect now
    ("08", _NETWORK),  # connection exception
    ("40", _TRANSIENT),  # serialization failure, deadlock
    ("53", _TRANSIENT),  # insufficient resources
    ("22", _PERMANENT),  # data exception
    ("23", _PERMANENT),  # integrity constraint violation
    ("42", _PERMANENT),  # syntax error or access rule violation
)


def _classify_psycopg(exc: BaseException) -> Classification | None:
    import psycopg

    pool = sys.modules.get("psycopg_pool")  # a separate package: present only if imported
    if pool is not None and isinstance(exc, pool.PoolTimeout):
        return _TIMEOUT
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        for prefix, classification in _SQLSTATE_CLASSES:
            if sqlstate.startswith(prefix):
                return classification
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return _TIMEOUT
    if isinstance(exc, psycopg.OperationalError):
        return _NETWORK
    if isinstance(exc, psycopg.ProgrammingError | psycopg.DataError | psycopg.IntegrityError):
        return _PERMANENT
    return None


_LIBRARY_CLASSIFIERS: dict[str, Classifier] = {
    "httpx": _classify_httpx,
    "requests": _classify_requests,
    "aiohttp": _classify_aiohttp,
    "urllib": _classify_urllib,
    "redis": _classify_redis,
    "psycopg": _classify_psycopg,
    "psycopg_pool": _classify_psycopg,
}


# --------------------------------------------------------------------------
# The standard library and the library's own errors

_NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "EPIPE",
        "ENOTCONN",
        "EADDRNOTAVAIL",
        "ESHUTDOWN",
    )
    if hasattr(errno, name)
)

_PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    AttributeError,
    LookupError,  # KeyError, IndexError
    NameError,
    NotImplementedError,
    AssertionError,
    ImportError,
    SyntaxError,
    ArithmeticError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def _hint(retry_after: Any) -> float | None:
    """A rejection's ``retry_after`` as a wait: ``None`` unless a number >= 0
    (not NaN), and at most ``MAX_DURATION`` (``inf`` included)."""
    if isinstance(retry_after, bool) or not isinstance(retry_after, int | float):
        return None
    if not retry_after >= 0:
        return None
    return float(retry_after) if retry_after <= MAX_DURATION else MAX_DURATION


def _classify_own(exc: BaseException) -> Classification | None:
    if isinstance(exc, CircuitOpenError | BulkheadFull):
        # Waiting out the break (or for a free slot) may succeed: transient.
        return Classification(ErrorClass.TRANSIENT, _hint(exc.retry_after))
    if isinstance(exc, RateLimitExceeded):
        return Classification(ErrorClass.RATE_LIMITED, _hint(exc.retry_after))
    if isinstance(exc, TimeoutExceeded):
        return _TIMEOUT
    if isinstance(exc, StoreUnavailable):
        return _NETWORK
    if isinstance(exc, ConfigurationError):
        return _PERMANENT
    return None


def _classify_stdlib(exc: BaseException) -> Classification | None:
    if isinstance(exc, TimeoutError):  # also asyncio.TimeoutError and socket.timeout
        return _TIMEOUT
    if isinstance(exc, ConnectionError | socket.gaierror | socket.herror):
        return _NETWORK
    if isinstance(exc, _PROGRAMMING_ERRORS):
        return _PERMANENT
    if isinstance(exc, OSError):
        if exc.errno == errno.ETIMEDOUT:
            return _TIMEOUT
        if exc.errno in _NETWORK_ERRNOS:
            return _NETWORK
    return None


# Classifications that depend on the exception's type alone (no status code, no
# errno, no retry_after), remembered per type: the failure path of a retry then
# costs one dict lookup for the common stdlib errors. Bounded, in case a program
# mints exception types dynamically.
_BY_TYPE: dict[type[BaseException], Classification] = {}
_BY_TYPE_LIMIT = 512


def _depends_only_on_type(exc: BaseException) -> bool:
    if isinstance(exc, ResilienceError):
        return False  # retry_after lives on the instance
    # Generic OSErrors are classified by errno; their named subclasses are not.
    return not isinstance(exc, OSError) or isinstance(
        exc, TimeoutError | ConnectionError | socket.gaierror | socket.herror
    )


def default_classifier(exc: BaseException) -> Classification:
    """Classify ``exc`` with the built-in knowledge only; ``UNKNOWN`` if none applies."""
    exc_type = type(exc)
    known = _BY_TYPE.get(exc_type)
    if known is not None:
        return known
    own = _classify_own(exc)
    if own is not None:
        return own
    seen: set[str] = set()
    for cls in exc_type.__mro__:
        root = cls.__module__.partition(".")[0]
        if root in seen:
            continue
        seen.add(root)
        library = _LIBRARY_CLASSIFIERS.get(root)
        if library is not None:
            found = library(exc)
            if found is not None:
                return found  # library answers may read the instance: never cached
    found = _classify_stdlib(exc) or _UNKNOWN
    if len(_BY_TYPE) < _BY_TYPE_LIMIT and _depends_only_on_type(exc):
        _BY_TYPE[exc_type] = found
    return found


def _mapping_classifier(
    mapping: Mapping[type[BaseException], ErrorClass | str],
) -> Classifier:
    # Most specific type first, so {OSError: NETWORK, FileNotFoundError: PERMANENT}
    # does what it says whatever the dict order.
    items: list[tuple[type[BaseException], Classification]] = []
    for exc_type, error_class in mapping.items():
        if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
            raise TypeError(f"classifier mapping keys must be exception types, got {exc_type!r}")
        items.append((exc_type, Classification(ErrorClass(error_class))))
    items.sort(key=lambda item: -len(item[0].__mro__))

    def classify_by_type(exc: BaseException) -> Classification | None:
        for exc_type, classification in items:
            if isinstance(exc, exc_type):
                return classification
        return None

    return classify_by_type


def make_classifier(
    *classifiers: ClassifierLike | Sequence[ClassifierLike],
) -> Callable[[BaseException], Classification]:
    """Chain user classifiers in front of the default one; the first answer wins.

    Each argument is a callable returning a :class:`Classification` (or ``None``
    to pass), a mapping ``{ExceptionType: ErrorClass}``, or a list of those.
    """
    chain: list[Classifier] = []

    def add(item: Any) -> None:
        if item is None:
            return
        if isinstance(item, Mapping):
            chain.append(_mapping_classifier(item))
        elif callable(item):
            chain.append(item)
        elif isinstance(item, Iterable) and not isinstance(item, str | bytes):
            for inner in item:
                add(inner)
        else:
            raise TypeError(f"not a classifier: {item!r}")

    for classifier in classifiers:
        add(classifier)
    if not chain:
        return default_classifier
    user = tuple(chain)

    def chained(exc: BaseException) -> Classification:
        for classifier in user:
            found = classifier(exc)
            if found is not None:
                return found
        return default_classifier(exc)

    return chained


def classify(exc: BaseException, *classifiers: ClassifierLike) -> Classification:
    """Classify ``exc``: user ``classifiers`` first, then the built-in knowledge."""
    if classifiers:
        return make_classifier(*classifiers)(exc)
    return default_classifier(exc)


# --------------------------------------------------------------------------
# Error selectors: which errors a policy acts on (retry_on=, failure_on=, on=)

ErrorSelector: TypeAlias = (
    Iterable[ErrorClass | str | type[BaseException]] | Callable[[BaseException], bool] | None
)
"""Error classes (or their names), exception types, or a predicate; ``None``: all
but PERMANENT."""

ErrorFilter: TypeAlias = Callable[[BaseException, Classification | None], bool]
"""``(exception, classification if already known) -> selected?``"""


def checked_classifier(value: Any) -> Any:
    """An options model's ``classifier`` field: refused now if it cannot make a classifier."""
    try:
        make_classifier(value)
    except (TypeError, ValueError) as error:
        raise ValueError(str(error)) from None
    return value


def normalize_error_selector(
    value: Any,
) -> Callable[[BaseException], bool] | tuple[ErrorClass | type[BaseException], ...] | None:
    """Validate an error selector: ``None``, a predicate, or a tuple of classes and
    types. Raises ``ValueError`` (which option models report with the field)."""
    if value is None or (callable(value) and not isinstance(value, type)):
        return value
    if isinstance(value, str | ErrorClass | type):
        value = [value]
    if not isinstance(value, Iterable):
        raise ValueError(f"expected error classes, exception types or a predicate; got {value!r}")
    items: list[ErrorClass | type[BaseException]] = []
    for item in value:
        if isinstance(item, type) and issubclass(item, BaseException):
            items.append(item)
            continue
        try:
            items.append(ErrorClass(item))
        except ValueError:
            raise ValueError(
                f"expected error classes ({', '.join(c.value for c in ErrorClass)}), "
                f"exception types or a predicate; got {item!r}"
            ) from None
    return tuple(items)


def error_filter(
    selector: Any, classify: Callable[[BaseException], Classification] = default_classifier
) -> ErrorFilter:
    """Turn a normalized selector into a filter; ``classify`` runs only when needed
    and only if the caller has not classified the exception already."""
    if selector is None:
        permanent = ErrorClass.PERMANENT
        return lambda exc, known: (known or classify(exc)).error_class is not permanent
    if callable(selector):
        predicate: Callable[[BaseException], bool] = selector
        return lambda exc, known: bool(predicate(exc))
    classes = frozenset(item for item in selector if isinstance(item, ErrorClass))
    types = tuple(item for item in selector if isinstance(item, type))
    if not classes:
        return lambda exc, known: isinstance(exc, types)
    return lambda exc, known: (
        isinstance(exc, types) or (known or classify(exc)).error_class in classes
    )
