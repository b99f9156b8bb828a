"""Secrets never reach logs or span attributes: property tests over generated payloads."""

from __future__ import annotations

import json
import string
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.telemetry import Redactor
from resilience.telemetry.redaction import DEFAULT_SENSITIVE_KEYS

redactor = Redactor()
# Secrets carry a marker that cannot appear by accident in the rest of a payload.
secrets = st.text(
    string.ascii_letters + string.digits + "!$%()*+./:<>?@[]^_{|}~-", min_size=6, max_size=30
).map(lambda s: f"QZXV{s}")
plain_words = st.text(string.ascii_lowercase, min_size=1, max_size=10).filter(
    lambda w: not redactor.is_sensitive(w)
)


def key_variants(fragment: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            fragment,
            fragment.upper(),
            fragment.title(),
            f"x-{fragment}",
            f"{fragment}_id",
            fragment.replace("_", "-"),
        ]
    )


sensitive_keys = st.sampled_from(DEFAULT_SENSITIVE_KEYS).flatmap(key_variants) | st.sampled_from(
    [
        "Authorization",
        "Proxy-Authorization",
        "Set-Cookie",
        "X-API-Key",
        "client_secret",
        "refresh_token",
        "DB_PASSWORD",
    ]
)

payloads = st.recursive(
    st.dictionaries(sensitive_keys, secrets, min_size=1, max_size=3),
    # A secret only ever sits under a sensitive key; plain keys hold nested payloads.
    lambda children: (
        st.dictionaries(plain_words, children, min_size=1, max_size=3)
        | st.dictionaries(sensitive_keys, children | secrets, min_size=1, max_size=3)
        | st.lists(children, min_size=1, max_size=3)
    ),
    max_leaves=12,
)


def contains_secret(value: object) -> bool:
    return "QZXV" in json.dumps(value, default=str)


@given(payloads)
def test_secrets_under_sensitive_keys_are_masked(payload: object) -> None:
    assert not contains_secret(redactor.redact(payload))


@given(
    st.sampled_from(DEFAULT_SENSITIVE_KEYS).flatmap(key_variants),
    secrets,
    st.sampled_from(["{k}={v}", "{k}: {v}", '"{k}": "{v}"', "?{k}={v}&page=2", "{k} = '{v}'"]),
)
def test_secrets_in_key_value_text_are_masked(key: str, secret: str, template: str) -> None:
    text = "request failed: " + template.format(k=key, v=secret.replace("'", "").replace('"', ""))
    secret_core = secret[:12]
    assert secret_core not in redactor.redact_text(text)


@given(secrets.map(lambda s: s.replace("@", "").replace("/", "").replace(":", "")), plain_words)
def test_url_credentials_and_auth_schemes_are_masked(secret: str, user: str) -> None:
    url = f"connect to postgresql://{user}:{secret}@db.internal:5432/app failed"
    assert secret not in redactor.redact_text(url)
    token = secret.strip("!$%()*+.<>?[]^{|}~").replace(" ", "") or "QZXVx"
    assert f"Bearer {token}" not in redactor.redact_text(f"sent Bearer {token} upstream")


@given(plain_words, plain_words)
def test_harmless_text_is_untouched(key: str, value: str) -> None:
    text = f"{key}={value}"
    assert redactor.redact_text(text) == text


def test_configurable_keys_patterns_and_mask() -> None:
    custom = Redactor(extra_keys=["ssn"], patterns=[r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"], mask="[x]")
    assert custom.redact({"SSN": "123-45-6789"}) == {"SSN": "[x]"}
    assert custom.redact_text("card 1234-5678-9012-3456 declined") == "card [x] declined"
    with pytest.raises(ValueError, match="keys"):
        Redactor(keys=[])


# -- issue 11, defect 13: the forms that leaked ----------------------------------------

# A secret of random content, between markers that cannot occur elsewhere: a
# leak of either end (or of the whole) is caught, wherever masking stopped.
any_text = st.text(st.characters(codec="utf-8"), max_size=40)
line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40)
random_secrets = any_text.map(lambda s: f"QZXV{s}VXZQ")
line_secrets = line_text.map(lambda s: f"QZXV{s}VXZQ")


def leaks(output: object) -> bool:
    text = output if isinstance(output, str) else repr(output)
    return "QZXV" in text or "VXZQ" in text


def spellings(name: str) -> list[str]:
    """Case-insensitive, ``-`` and ``_`` alike."""
    return [name, name.upper(), name.title(), name.replace("_", "-"), name.replace("-", "_")]


#: The sensitive field names the issue lists, and a few more, in every spelling.
FIELD_NAMES = [
    spelling
    for name in (
        "key",
        "api_key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "auth",
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "access_token",
        "client_secret",
        "session_id",
        "x-auth-token",
        "jwt",
    )
    for spelling in spellings(name)
] + ["apiKey", "userKey", "XApiKey", "authKey"]
field_names = st.sampled_from(FIELD_NAMES)
header_names = st.sampled_from(
    [
        spelling
        for name in ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-Api-Key")
        for spelling in spellings(name)
    ]
)
schemes = st.sampled_from(["Negotiate", "ApiKey", "Digest", "NTLM", "Bearer", "Basic"]) | (
    st.from_regex(r"[A-Za-z][A-Za-z0-9._~+-]{0,12}", fullmatch=True)
)


def test_sensitive_field_names_are_recognised_and_whole_words_only() -> None:
    for name in FIELD_NAMES:
        assert redactor.is_sensitive(name), name
    for harmless in (
        "monkey",
        "keyboard",
        "KEYBOARD",
        "author",
        "passenger_count",
        "compass",
        "state",
        "attempt",
    ):
        assert not redactor.is_sensitive(harmless), harmless
        text = f"{harmless}=42; {harmless}: 7"
        assert redactor.redact_text(text) == text


@given(field_names, random_secrets | st.lists(random_secrets, max_size=2) | st.integers())
def test_values_under_sensitive_field_names_are_masked(name: str, value: object) -> None:
    marked = value if not isinstance(value, int) else f"QZXV{value}VXZQ"
    payload = {"request": {name: marked, "path": "/items"}}
    redacted = redactor.redact(payload)
    assert not leaks(redacted)
    assert redacted["request"]["path"] == "/items"


@given(field_names, random_secrets)
def test_field_values_are_masked_in_repr_and_json_text(name: str, secret: str) -> None:
    payload = {name: secret, "page": 2}
    for text in (repr(payload), str([payload]), json.dumps(payload), json.dumps([payload])):
        out = redactor.redact_text(f"request failed: {text}")
        assert not leaks(out), (text, out)
        assert "page" in out


@given(
    st.sampled_from(["redis", "rediss", "postgresql", "amqp", "https", "mongodb+srv"]),
    st.sampled_from(["", "bob", "svc.user"]),
    random_secrets,
    st.booleans(),
)
def test_url_passwords_are_masked_with_or_without_a_user(
    scheme: str, user: str, secret: str, encoded: bool
) -> None:
    # A password in a URL is percent-encoded, or written raw from the characters
    # a userinfo may hold (an unencoded @ is a common slip, and masked too).
    raw_safe = "".join(c for c in secret if c.isalnum() or c in "-._~!$&'()*+,;=:@%")
    password = quote(secret, safe="") if encoded else raw_safe
    url = f"{scheme}://{user}:{password}@cache.internal:6379/0"
    out = redactor.redact_text(f"store {url} unavailable")
    assert not leaks(out), out
    assert out.endswith("@cache.internal:6379/0 unavailable")


@given(header_names, schemes, line_secrets)
def test_header_lines_of_any_scheme_are_masked(name: str, scheme: str, secret: str) -> None:
    request = f"GET /v1 HTTP/1.1\r\nHost: api\r\n{name}: {scheme} {secret}\r\nAccept: */*\r\n"
    out = redactor.redact_text(request)
    assert not leaks(out), out
    assert "Host: api\r\n" in out and "Accept: */*" in out


@given(
    st.sampled_from(["Negotiate", "NTLM", "ApiKey", "Bearer", "basic", "DIGEST"]),
    st.text(string.ascii_letters + string.digits + "-._~+/", min_size=1, max_size=30),
)
def test_credentials_after_a_scheme_in_free_text_are_masked(scheme: str, token: str) -> None:
    out = redactor.redact_text(f"sent {scheme} QZXV{token}== upstream; got 401")
    assert out == f"sent {scheme} *** upstream; got 401"


@given(st.text(string.ascii_letters + string.digits + " !#$%&()*+,./:;<=>?@[]^_{|}~-", max_size=20))
def test_digest_parameters_are_masked(secret: str) -> None:
    header = f'Digest username="ops", realm="api", nonce="QZXV{secret}VXZQ", response="QZXV1"'
    assert not leaks(redactor.redact_text(f"retrying with {header}"))
    assert not leaks(redactor.redact_text(f"Authorization={header}"))


# Headers as lists (or tuples) of pairs, str or bytes, as httpx, ASGI and requests hold them.
header_pairs = st.lists(
    st.tuples(header_names | field_names, random_secrets)
    | st.tuples(header_names.map(str.encode), random_secrets.map(lambda s: s.encode()))
    | st.tuples(st.sampled_from(["Accept", "Host", "User-Agent"]), st.just("plain")),
    min_size=1,
    max_size=5,
)


@given(header_pairs, st.sampled_from([list, tuple]), st.sampled_from([list, tuple]))
def test_header_pairs_are_masked_in_lists_and_tuples(
    pairs: list[tuple[object, object]], outer: type, inner: type
) -> None:
    headers = outer(inner(pair) for pair in pairs)
    redacted = redactor.redact({"headers": headers})
    assert not leaks(redacted)
    assert type(redacted["headers"]) is outer
    assert all(type(pair) is inner for pair in redacted["headers"])
    # Plain headers keep their values; the text forms are masked too.
    assert all(pair[1] == "plain" for pair in redacted["headers"] if pair[0] == "Accept")
    assert not leaks(redactor.redact_text(f"request headers: {headers!r}"))


@given(st.lists(st.tuples(header_names, random_secrets), min_size=1, max_size=3))
def test_header_pairs_are_masked_in_json_text(pairs: list[tuple[str, str]]) -> None:
    assert not leaks(redactor.redact_text(json.dumps({"headers": pairs})))


def test_redaction_takes_linear_time_on_long_runs() -> None:
    # A run of key characters full of fragments, with no separator: the key
    # patterns must not backtrack over it quadratically (this finishes at once).
    text = "token" * 40_000 + " api_key" * 5_000 + "x=" * 20_000
    assert redactor.redact_text(text).startswith("token")
