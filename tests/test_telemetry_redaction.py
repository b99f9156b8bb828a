"""Secrets never reach logs or span attributes: property tests over generated payloads."""

from __future__ import annotations

import json
import string

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
