"""The URLs a :class:`~resilience.storage.redis.RedisStore` is built from: the store's own
options taken out of the query, the rest checked the way redis-py will read it, and
passwords kept out of every message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.connection

from ...errors import ConfigurationError

__all__ = ["check_url", "redact", "split_url", "url_secrets"]


def redact(url: str) -> str:
    """``url`` with the password (or a lone user-info part, maybe one) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, sep, rest = url.partition(":")
    netloc_end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            netloc_end = min(netloc_end, found)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    # redis-py also takes the password as a query parameter (?password=...).
    tail = _QUERY_PASSWORD.sub(r"\1***", tail)
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    return f"{scheme}{sep}{netloc}{tail}"


_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&#;]*", re.IGNORECASE)


def url_secrets(url: str) -> tuple[str, ...]:
    """The passwords in ``url`` (user info or ``?password=``), as written and decoded."""
    parts = urlsplit(url)
    found = {parts.password or ""}
    found |= {value for field, value in parse_qsl(parts.query) if field.lower() == "password"}
    found |= {unquote(secret) for secret in found}
    # Longest first: a password that contains another is scrubbed whole.
    return tuple(sorted((secret for secret in found if secret), key=len, reverse=True))


def _flag(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(value)
    return lowered in ("1", "true", "yes", "on")


_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prefix": str,
    "timeout": float,
    "breaker_staleness": float,
    "probe_lease": float,
    "expiry_margin": float,
    "max_connections": int,
    "hash_tag": str,
    "cluster": _flag,
    "pubsub": _flag,
}

#: redis-py's own URL query options that must be numbers: checked up front, so that a
#: bad one is a ConfigurationError naming it rather than a raw ValueError.
_NUMBERS: dict[str, tuple[Callable[[str], float], float, str]] = {
    # option: (parser, smallest allowed value, what it is)
    "db": (int, 0, "a database number >= 0"),
    "socket_timeout": (float, 0.0, "a number of seconds > 0"),
    "socket_connect_timeout": (float, 0.0, "a number of seconds > 0"),
    "socket_read_size": (int, 1, "a whole number of bytes > 0"),
    "health_check_interval": (int, 0, "a whole number of seconds >= 0"),
    "ssl_min_version": (int, 0, "a whole number"),
    "protocol": (int, 2, "2 or 3"),
}
_POSITIVE = {"socket_timeout", "socket_connect_timeout"}


def check_url(url: str) -> tuple[str, list[tuple[str, str]]]:
    """The URL in the form redis-py reads, and what is wrong with it (no secrets shown)."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as error:
        return url, [("url", f"{error} in {shown!r}")]
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        problem = f"expected redis://, rediss:// or unix://, got {shown!r}"
        return url, [("url", problem)]
    if not url.partition(":")[2].startswith("//"):
        return url, [("url", f"expected {scheme}://host..., got {shown!r}")]
    problems: list[tuple[str, str]] = []
    if scheme != "unix":
        if port is None and parts.netloc.rpartition("@")[2].endswith(":"):
            problems.append(("url", f"an empty port in {shown!r}"))
        db = unquote(parts.path).replace("/", "")
        if db and not (db.isascii() and db.isdigit()):
            problems.append(("url.db", f"the path must be a database number, got {db!r}"))
    elif not parts.path:
        problems.append(("url", f"unix:// needs a socket path, got {shown!r}"))
    parsers = getattr(redis.connection, "URL_QUERY_ARGUMENT_PARSERS", {})
    for field, value in parse_qsl(parts.query, keep_blank_values=True):
        if not value:
            continue  # redis-py ignores blank values
        number = _NUMBERS.get(field)
        if number is not None:
            parse, low, what = number
            try:
                parsed = parse(value)
            except ValueError:
                parsed = math.nan
            bad = not (math.isfinite(parsed) and parsed >= low)
            if bad or (field in _POSITIVE and parsed <= 0):
                problems.append((f"url.{field}", f"expected {what}, got {value!r}"))
            continue
        parse_other = parsers.get(field)
        if parse_other is not None:
            try:
                parse_other(value)
            except (TypeError, ValueError):
                problems.append((f"url.{field}", f"invalid value {value!r}"))
    # redis-py requires the scheme in lower case and the '//' it names.
    rebuilt = f"{scheme}://{url.partition('://')[2]}"
    return rebuilt, problems


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """Take the store's own options out of a URL's query (and ``+cluster`` out of its scheme)."""
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise ConfigurationError("RedisStore", [("url", f"{error} in {redact(url)!r}")]) from None
    options: dict[str, Any] = {}
    scheme = parts.scheme.lower()
    if scheme.endswith("+cluster"):
        scheme = scheme.removesuffix("+cluster")
        options["cluster"] = True
    kept: list[str] = []
    problems: list[tuple[str, str]] = []
    for item in parts.query.split("&") if parts.query else []:
        pairs = parse_qsl(item, keep_blank_values=True)
        if not pairs:
            kept.append(item)
            continue
        field, value = pairs[0]
        parse = _URL_OPTIONS.get(field)
        if parse is None:
            kept.append(item)  # redis-py's: passed on as written
            continue
        try:
            options[field] = parse(value)
        except ValueError:
            what = "true or false" if parse is _flag else "a number"
            problems.append((f"url.{field}", f"expected {what}, got {value!r}"))
    if problems:
        raise ConfigurationError("RedisStore", problems)
    rest = url.partition(":")[2]
    base = rest.split("?", 1)[0].split("#", 1)[0]
    rebuilt = f"{scheme}:{base}" + (f"?{'&'.join(kept)}" if kept else "")
    if parts.fragment:
        rebuilt += f"#{parts.fragment}"
    return rebuilt, options
