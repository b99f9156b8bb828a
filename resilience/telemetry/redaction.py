"""Keep secrets out of logs, span attributes and messages.

A :class:`Redactor` masks the values of sensitive keys (``Authorization``,
``Cookie``, ``key``, tokens, passwords, API keys, secrets…) in mappings and in
``(name, value)`` pairs (header lists) at any depth, and the secrets inside free
text: credentials in URLs (``redis://:password@host`` too), ``Name: value``
header lines, ``key=value`` / ``"key": "value"`` / ``("key", "value")`` forms
whose key is sensitive, and ``Bearer …``-style credentials. Every log record
and span attribute the library writes goes through the active redactor.

Rate-limiter keys (often API keys, e-mail addresses or client addresses) are
shown as a short keyed hash, :func:`key_label` (``key#3f2a9c1e07d4``), unless
:func:`configure_keys` (or ``RESILIENCE_TELEMETRY_SHOW_KEYS=1``) asks to show
them: see docs/telemetry.md.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_SENSITIVE_KEYS",
    "DEFAULT_SENSITIVE_WORDS",
    "Redactor",
    "configure_keys",
    "configure_redaction",
    "describe_key",
    "get_redactor",
    "key_label",
    "keys_shown",
]

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

#: Words that mark a value as secret when they are a whole word of the key
#: (``key``, ``X-Key``, ``key_id``, ``userKey`` in a mapping; not ``monkey``).
DEFAULT_SENSITIVE_WORDS: tuple[str, ...] = (
    "key",
    "auth",
    "pass",
    "pw",
    "jwt",
    "otp",
    "csrf",
    "xsrf",
)

# Authorization schemes masked wherever they appear in free text. Bearer, Basic
# and Digest in any case (as before); the others in their registered spelling
# only, so that "failed to negotiate TLS" stays readable. After a sensitive key
# (``Authorization: …``, ``"authorization": "…"``) any scheme is masked.
_SCHEMES_ANY_CASE = ("bearer", "basic", "digest")
_SCHEMES_EXACT = (
    "Negotiate",
    "NTLM",
    "ApiKey",
    "APIKey",
    "Api-Key",
    "DPoP",
    "GNAP",
    "HOBA",
    "Kerberos",
    "PrivateToken",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SharedKey",
    "SSWS",
    "AWS4-HMAC-SHA256",
    "vapid",
)
_KNOWN_SCHEMES = frozenset(s.lower() for s in (*_SCHEMES_ANY_CASE, *_SCHEMES_EXACT, "token"))

_QUOTED = r"""b?"(?:[^"\\]|\\.)*+"|b?'(?:[^'\\]|\\.)*+'"""
# One level of brackets of quoted strings or words: {'auth': ('user', 'pw')}, ['a', 'b'].
_GROUP = rf"""[\[(](?:\s*+(?:{_QUOTED}|[^\s,\])'"]++)\s*+,?)*+\s*+[\])]"""
_HTTP_TOKEN = r"[\w!#$%&'*+.^`|~-]++"
_AUTH_PARAM = rf"""{_HTTP_TOKEN}[ \t]*=[ \t]*(?:"(?:[^"\\]|\\.)*+"|[^\s,"]*+)"""
# RFC 9110 credentials: a list of auth-params (Digest), or a token68-ish run.
_CREDENTIALS = rf"""{_AUTH_PARAM}(?:[ \t]*,[ \t]*{_AUTH_PARAM})*+|[^\s"'<>,;]++"""
_WORD_SPLIT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def _normalize(key: str) -> str:
    return key.lower().replace("-", "_")


def _words(key: str) -> set[str]:
    """The words of a key: split at punctuation and camelCase (``XApiKey`` -> x, api, key)."""
    return {word.lower() for word in _WORD_SPLIT.findall(key)}


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


class Redactor:
    """Masks secrets in text, (nested) mappings, sequences and ``(name, value)`` pairs."""

    __slots__ = (
        "_fragments",
        "_header",
        "_key_value",
        "_mask",
        "_pair",
        "_patterns",
        "_scheme",
        "_userinfo",
        "_words",
    )

    def __init__(
        self,
        *,
        keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS,
        extra_keys: Iterable[str] = (),
        patterns: Iterable[str | re.Pattern[str]] = (),
        mask: str = "***",
        words: Iterable[str] = DEFAULT_SENSITIVE_WORDS,
    ) -> None:
        fragments = tuple(dict.fromkeys(_normalize(k) for k in (*keys, *extra_keys) if k))
        if not fragments:
            raise ValueError("keys: at least one sensitive key is needed")
        self._fragments = fragments
        self._words = frozenset(_normalize(w) for w in words if w)
        self._mask = mask
        alternatives = [re.escape(f).replace("_", "[-_]?") for f in fragments]
        if self._words:
            ordered = sorted(self._words)
            whole = "|".join(re.escape(w).replace("_", "[-_]?") for w in ordered)
            camel = "|".join(re.escape(w.capitalize()) for w in ordered)
            # A whole word between non-alphanumerics (x-api-key, KEY), or a
            # capitalised word in camelCase (userKey, authKeyId): not "monkey".
            alternatives.append(rf"(?<![a-z0-9])(?:{whole})(?![a-z0-9])")
            alternatives.append(rf"(?-i:(?<=[a-z0-9])(?:{camel})(?![a-z]))")
        # One run of key characters containing a sensitive fragment or word. The
        # match starts only where a run starts, the lookahead finds the fragment
        # and the run is consumed possessively: linear time on any input.
        key_run = rf"(?<![\w.-])(?=[\w.-]*?(?:{'|'.join(alternatives)}))[\w.-]++"
        # A header line, ``Name: value``: the value runs to the end of the line
        # (``Authorization: Digest a="b", c="d"``, ``Cookie: a=1; b=2``); after a
        # name that is only a sensitive word (``key: …``), to the end of the word.
        self._header = re.compile(
            rf"(?i)(?<![\"'/\\])(?P<key>{key_run})(?P<sep>[ \t]*:[ \t]*)(?!//)"
            r"(?P<value>[^\r\n]*[^\s])"
        )
        # ("Authorization", "Bearer x"), [b'cookie', b'a=1']: pairs, as repr and JSON show them.
        self._pair = re.compile(
            rf"""(?ix)
            (?P<key>[(\[]\s*b?(?P<q>["']){key_run}(?P=q))
            (?P<sep>\s*,\s*)
            (?P<value>{_QUOTED}|{_GROUP}|[^\s,)\]]++)
            """
        )
        # key=value, "key": "value", 'key' = 'value' - the key may carry a prefix or suffix.
        self._key_value = re.compile(
            rf"""(?ix)
            (?P<key>(?:\\?["'])?{key_run}(?:\\?["'])?)
            (?P<sep>\s*[:=]\s*)
            (?P<value>
                {_QUOTED}
              | {_GROUP}
              | (?P<scheme>[a-z][\w.+-]*+)[ \t]++(?P<credentials>{_CREDENTIALS})
              | [^\s&,;"'}}]++
            )
            """
        )
        any_case = "|".join(_SCHEMES_ANY_CASE)
        exact = "|".join(re.escape(s) for s in _SCHEMES_EXACT)
        self._scheme = re.compile(
            rf"(?<![\w-])(?P<scheme>(?i:{any_case})|{exact})[ \t]+(?:{_CREDENTIALS})"
        )
        # scheme://user:password@ and scheme://:password@; the password runs to the
        # last @ of the authority (an unencoded @ in a password is a common slip).
        self._userinfo = re.compile(r"(?i)\b(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s]*@")
        self._patterns = tuple(re.compile(p) if isinstance(p, str) else p for p in patterns)

    def is_sensitive(self, key: str) -> bool:
        """Whether values under ``key`` must be masked."""
        normalized = _normalize(key)
        if any(fragment in normalized for fragment in self._fragments):
            return True
        return not self._words.isdisjoint(_words(key))

    def _sensitive_name(self, key: object) -> bool:
        if isinstance(key, str):
            return self.is_sensitive(key)
        if isinstance(key, bytes | bytearray):
            return self.is_sensitive(bytes(key).decode("latin-1"))
        return False

    def _mask_value(self, match: re.Match[str]) -> str:
        return f"{match['key']}{match['sep']}{self._mask}"

    def _mask_header(self, match: re.Match[str]) -> str:
        normalized = _normalize(match["key"])
        value = match["value"]
        first = value.split(None, 1)[0]
        if (
            "auth" in normalized
            or first.lower() in _KNOWN_SCHEMES
            or any(fragment in normalized for fragment in self._fragments)
        ):
            return self._mask_value(match)
        # ``key: sk_live_…`` masks the key; ``key: must be a str`` keeps its sense.
        return f"{match['key']}{match['sep']}{self._mask}{value[len(first) :]}"

    def _mask_key_value(self, match: re.Match[str]) -> str:
        scheme = match["scheme"]
        if (
            scheme is not None
            and scheme.lower() not in _KNOWN_SCHEMES
            and "auth" not in match["key"].lower()
        ):
            # Not a scheme: ``password=hunter2 and more`` - the secret is the first
            # word; what follows is text (and may hold secrets of its own).
            rest = match["value"][len(scheme) :]
            return f"{match['key']}{match['sep']}{self._mask}{self._key_value_sub(rest)}"
        return self._mask_value(match)

    def _key_value_sub(self, text: str) -> str:
        return self._key_value.sub(self._mask_key_value, text)

    def redact_text(self, text: str) -> str:
        """Mask the secrets in a piece of free text."""
        mask = self._mask
        text = self._userinfo.sub(lambda m: f"{m['head']}:{mask}@", text)
        text = self._header.sub(self._mask_header, text)
        text = self._pair.sub(self._mask_value, text)
        text = self._key_value_sub(text)
        text = self._scheme.sub(lambda m: f"{m['scheme']} {mask}", text)
        for pattern in self._patterns:
            text = pattern.sub(mask, text)
        return text

    def redact(self, value: Any) -> Any:
        """Mask secrets in ``value``: mappings (by key), ``(name, value)`` pairs,
        sequences, bytes and text, at any depth. Tuples stay tuples."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {
                key: self._mask if self._sensitive_name(key) else self.redact(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            if len(value) == 2 and self._sensitive_name(value[0]):
                # A header pair: ("Authorization", "Negotiate …"), [b"cookie", b"…"].
                items = [value[0], self._mask]
            else:
                items = [self.redact(item) for item in value]
            return tuple(items) if isinstance(value, tuple) else items
        if isinstance(value, set | frozenset):
            return [self.redact(item) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.redact_text(bytes(value).decode("utf-8", "replace"))
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


# -- rate-limiter keys ------------------------------------------------------------------

SHOW_KEYS_ENV = "RESILIENCE_TELEMETRY_SHOW_KEYS"
KEY_SALT_ENV = "RESILIENCE_TELEMETRY_KEY_SALT"


def _salt_bytes(salt: str | bytes) -> bytes:
    raw = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    if not raw:
        raise ValueError("key_salt: must not be empty")
    # BLAKE2b takes keys of at most 64 bytes: longer salts are hashed down first.
    return raw if len(raw) <= 64 else hashlib.sha256(raw).digest()


class _KeySettings:
    __slots__ = ("salt", "show")

    def __init__(self) -> None:
        self.show = _truthy(os.environ.get(SHOW_KEYS_ENV))
        env_salt = os.environ.get(KEY_SALT_ENV)
        # Without a configured salt, a random one per process: labels cannot be
        # reversed by hashing guesses (e-mail addresses, client IPs) offline.
        self.salt = _salt_bytes(env_salt) if env_salt else os.urandom(32)


_KEYS = _KeySettings()


def configure_keys(*, show_keys: bool | None = None, key_salt: str | bytes | None = None) -> None:
    """How rate-limiter keys appear in messages, logs, spans and metrics.

    ``show_keys=True`` shows them as they are (an opt-in: keys are often API
    keys or personal data); by default each is shown as :func:`key_label`.
    ``key_salt`` is the secret the labels are keyed with: give every process of
    a fleet the same one (or set ``RESILIENCE_TELEMETRY_KEY_SALT``) for the same
    key to carry the same label everywhere; by default it is random per process.
    """
    if show_keys is not None:
        _KEYS.show = bool(show_keys)
    if key_salt is not None:
        _KEYS.salt = _salt_bytes(key_salt)


def keys_shown() -> bool:
    """Whether rate-limiter keys are shown as they are (see :func:`configure_keys`)."""
    return _KEYS.show


def key_label(key: object) -> str:
    """How a rate-limiter key appears in telemetry: ``key#`` and 12 hex digits of a
    keyed BLAKE2b hash (stable for one salt), or the key itself when shown."""
    text = key if isinstance(key, str) else str(key)
    if _KEYS.show:
        return text
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=6, key=_KEYS.salt
    ).hexdigest()
    return f"key#{digest}"


def describe_key(key: object) -> str:
    """A key in a message: ``key 'alice'`` when keys are shown, else its label."""
    return f"key {key!r}" if _KEYS.show else key_label(key)
