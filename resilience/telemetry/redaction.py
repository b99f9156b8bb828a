"""Keep secrets out of logs and span attributes.

A :class:`Redactor` masks the values of sensitive keys (``Authorization``,
``Cookie``, tokens, passwords, API keys, secrets…) in mappings at any depth,
and the secrets inside free text: credentials in URLs, ``Bearer …`` schemes,
and ``key=value`` / ``key: value`` pairs whose key is sensitive. Every log
record and span attribute the library writes goes through the active redactor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_SENSITIVE_KEYS", "Redactor", "configure_redaction", "get_redactor"]

#: Key fragments that mark a value as secret (matched case-insensitively, ``-``
#: and ``_`` alike, anywhere in the key: ``X-Auth-Token`` contains ``token``).
DEFAULT_SENSITIVE_KEYS: tuple[str, ...] = (
    "authorization",
    "auth_token",
    "cookie",
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
    "session",
    "signature",
)


def _normalize(key: str) -> str:
    return key.lower().replace("-", "_")


class Redactor:
    """Masks secrets in text and (nested) mappings."""

    __slots__ = ("_fragments", "_key_value", "_mask", "_patterns")

    def __init__(
        self,
        *,
        keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS,
        extra_keys: Iterable[str] = (),
        patterns: Iterable[str | re.Pattern[str]] = (),
        mask: str = "***",
    ) -> None:
        fragments = tuple(dict.fromkeys(_normalize(k) for k in (*keys, *extra_keys) if k))
        if not fragments:
            raise ValueError("keys: at least one sensitive key is needed")
        self._fragments = fragments
        self._mask = mask
        words = "|".join(re.escape(f).replace("_", "[-_]?") for f in fragments)
        # key=value, key: value, "key": "value" - the key may carry a prefix or suffix.
        self._key_value = re.compile(
            rf"""(?ix)
            (?P<key>["']?[\w.-]*(?:{words})[\w.-]*["']?)   # a key containing a fragment
            (?P<sep>\s*[:=]\s*)
            (?P<value>"[^"]*"|'[^']*'|(?:(?:bearer|basic|digest|token)\s+)?[^\s&,;"'}}]+)
            """
        )
        self._patterns = (
            re.compile(r"(?i)\b(bearer|basic|digest)\s+[A-Za-z0-9._~+/=-]+"),
            re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^/\s@]+@"),
            *(re.compile(p) if isinstance(p, str) else p for p in patterns),
        )

    def is_sensitive(self, key: str) -> bool:
        """Whether values under ``key`` must be masked."""
        normalized = _normalize(key)
        return any(fragment in normalized for fragment in self._fragments)

    def redact_text(self, text: str) -> str:
        """Mask the secrets in a piece of free text."""
        mask = self._mask
        text = self._key_value.sub(lambda m: f"{m['key']}{m['sep']}{mask}", text)
        scheme, userinfo, *custom = self._patterns
        text = scheme.sub(lambda m: f"{m[1]} {mask}", text)
        text = userinfo.sub(lambda m: f"{m[1]}:{mask}@", text)
        for pattern in custom:
            text = pattern.sub(mask, text)
        return text

    def redact(self, value: Any) -> Any:
        """Mask secrets in ``value``: mappings (by key), sequences and text, at any depth."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {
                key: (
                    self._mask
                    if isinstance(key, str) and self.is_sensitive(key)
                    else self.redact(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(item) for item in value]
        if isinstance(value, bytes):
            return self.redact_text(value.decode("utf-8", "replace"))
        return value


_active = Redactor()


def get_redactor() -> Redactor:
    """The redactor the logging and OpenTelemetry adapters use."""
    return _active


def configure_redaction(redactor: Redactor | None = None, **options: Any) -> Redactor:
    """Replace the active redactor (``Redactor(**options)`` when none is given)."""
    global _active
    _active = redactor if redactor is not None else Redactor(**options)
    return _active
