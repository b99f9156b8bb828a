"""Configuration documents: TOML files, environment overrides, merging tables.

Pure data handling, before any policy is built: :mod:`resilience.config` turns
the resulting tables into policies.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = ["ENV_PREFIX", "env_overrides", "load_toml", "merge"]

ENV_PREFIX = "RESILIENCE"


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file; a syntax error becomes a ``ConfigurationError`` naming the file."""
    file = Path(path)
    try:
        with file.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(str(file), [("<file>", str(error))]) from error


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _env_key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).upper()


def env_overrides(
    document: Mapping[str, Any],
    env: Mapping[str, str],
    prefix: str = ENV_PREFIX,
    *,
    shorthands: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Apply ``<PREFIX>__<NAME>__<KIND>__<FIELD>...`` variables to a copy of ``document``.

    ``NAME`` matches an operation (or a named policy, or ``DEFAULTS``) ignoring case
    and punctuation; an unknown name starts a new operation. Returns the new
    document and, for each path set, the variable that set it.
    """
    result = _deep_copy(document)
    sources: dict[tuple[str, ...], str] = {}
    start = f"{prefix}__"
    for variable in sorted(env):
        if not variable.startswith(start):
            continue
        parts = variable[len(start) :].split("__")
        if len(parts) < 3 or not all(parts):
            raise ConfigurationError(
                "resilience environment",
                [(variable, f"expected {prefix}__<OPERATION>__<KIND>__<FIELD>")],
            )
        target, kind, fields = parts[0], parts[1].lower(), [p.lower() for p in parts[2:]]
        keys = (*_env_target(result, target, kind), *fields)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if not isinstance(child, dict):
                # A shorthand (timeout = 30) or a bare ``true`` becomes a table.
                at_kind = depth == len(keys) - len(fields) - 1
                child = _expand(shorthands or {}, key, child) if at_kind else {}
                node[key] = child
            node = child
        node[keys[-1]] = _parse_env_value(env[variable])
        sources[keys] = variable
    return result, sources


def _expand(shorthands: Mapping[str, str], kind: str, value: Any) -> dict[str, Any]:
    """A shorthand value (``timeout = 30``) as the table it stands for."""
    field = shorthands.get(kind)
    if field is not None and value is not None and not isinstance(value, bool | str):
        return {field: value}
    return {}  # absent, or ``true``: the policy with its defaults


def _env_target(document: dict[str, Any], name: str, kind: str) -> tuple[str, ...]:
    """The path of the table a variable's fields go into."""
    if name == "DEFAULTS":
        return ("defaults", kind)
    policies = document.get("policies")
    if isinstance(policies, dict):
        for key, table in policies.items():
            if _env_key(key) == name and isinstance(table, dict) and table.get("kind") == kind:
                return ("policies", key)  # a named policy's fields sit in its own table
    operations = document.get("operations")
    if isinstance(operations, dict):
        for key in operations:
            if _env_key(key) == name:
                return ("operations", key, kind)
    return ("operations", name.lower(), kind)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, table by table; a table with its own ``kind``
    (a backoff) replaces the one under it rather than mixing fields of two kinds."""
    result = dict(base)
    for key, value in override.items():
        below = result.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(below, Mapping)
            and value.get("kind", below.get("kind")) == below.get("kind")
        ):
            result[key] = merge(below, value)
        else:
            result[key] = value
    return result
