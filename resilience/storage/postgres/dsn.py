"""The DSN of a :class:`~resilience.storage.postgres.PostgresStore`: checked at
construction (through libpq's own parser) and shown without its password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = ["check_dsn", "display"]

_NAMING = ("host", "hostaddr", "port", "dbname", "user", "service")


def check_dsn(dsn: object) -> tuple[dict[str, Any] | None, str | None]:
    """``(libpq's parse, None)``, or ``(None, what is wrong)`` (never quoting the DSN)."""
    if not isinstance(dsn, str):
        return None, f"expected a libpq connection string or URL, got {type(dsn).__name__}"
    if not dsn.strip():
        return None, "is empty: give a postgresql:// URL or a key=value connection string"
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        # libpq's message quotes pieces of the string, which may hold a password.
        return None, "is not a libpq connection string or URL (postgresql://user@host/db)"
    if not any(info.get(field) for field in _NAMING):
        return None, "names no server or database (no host, port, dbname, user or service)"
    for port in str(info.get("port") or "").split(","):
        if port and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
            return None, "has a port that is not a number from 1 to 65535"
    return info, None


def display(info: dict[str, Any]) -> str:
    """``postgresql://user@host:port/db`` for messages and reprs: never the password.

    A part the DSN does not give stays empty (libpq's own defaults then apply:
    a Unix socket, the user's name); nothing is made up.
    """
    user = f"{quote(str(info['user']), safe='')}@" if info.get("user") else ""
    host = str(info.get("host") or info.get("hostaddr") or "")
    port = str(info.get("port") or "")
    hosts = host.split(",") if host else [""]
    ports = port.split(",") if port else [""]
    if len(ports) == 1:
        ports = ports * len(hosts)
    netloc = ",".join(
        (f"[{h}]" if ":" in h else quote(h, safe="")) + (f":{p}" if p else "")
        for h, p in zip(hosts, ports, strict=False)
    )
    dbname = quote(str(info.get("dbname") or ""), safe="")
    service = f"?service={quote(str(info['service']), safe='')}" if info.get("service") else ""
    return f"postgresql://{user}{netloc}/{dbname}{service}"
