"""Reaching the real Redis and PostgreSQL servers the backend tests use.

On a machine without them, backend tests skip with the reason; with
``RESILIENCE_REQUIRE_BACKENDS=1`` (CI sets it) a missing server fails instead.
Override the addresses with ``RESILIENCE_TEST_REDIS_URL`` and
``RESILIENCE_TEST_POSTGRES_DSN``.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

REDIS_URL = os.environ.get("RESILIENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_DSN = os.environ.get(
    "RESILIENCE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRED = os.environ.get("RESILIENCE_REQUIRE_BACKENDS") == "1"
# Store calls in tests that are not about faults get a generous timeout: a
# loaded CI machine must not turn a slow answer into a StoreUnavailable.
STORE_TIMEOUT = 5.0


def _reachable(url: str, default_port: int) -> str | None:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as error:
        return f"no server at {host}:{port} ({error})"


def require(url: str, default_port: int, what: str) -> None:
    """Skip the calling test (or fail, when backends are required) if ``url`` is down."""
    problem = _reachable(url, default_port)
    if problem is None:
        return
    message = f"{what} backend tests need a server: {problem}"
    if REQUIRED:
        pytest.fail(f"{message} (RESILIENCE_REQUIRE_BACKENDS=1)")
    pytest.skip(message)


def require_redis() -> str:
    require(REDIS_URL, 6379, "Redis")
    return REDIS_URL


def require_postgres() -> str:
    require(POSTGRES_DSN, 5432, "PostgreSQL")
    return POSTGRES_DSN


def drop_postgres_tables(dsn: str, table: str) -> None:
    """Remove the tables and functions a ``PostgresStore(table=table)`` created."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as admin:
        for suffix in ("buckets", "circuits", "jobs"):
            admin.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"{table}_{suffix}"))
            )
        for function in ("take_v4", "refund_v2", "lock_v1"):
            admin.execute(
                sql.SQL("DROP FUNCTION IF EXISTS {}").format(sql.Identifier(f"{table}_{function}"))
            )
