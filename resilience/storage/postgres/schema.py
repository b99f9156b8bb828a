"""The SQL of a :class:`~resilience.storage.postgres.PostgresStore`: its tables and
PL/pgSQL functions (the DDL, created on first use), the query that tells whether they
are in place, and every statement the store runs, named for one table prefix. The
jobs table's DDL and statements live in :mod:`.jobs`; it is created here with the rest.

Table and function names are composed with :class:`psycopg.sql.Identifier`, never
interpolated as text; values are always bound parameters. A function's name carries
its version (``<table>_take_v4``): :meth:`Schema.probe` asks for the versions this
release calls, and creating them leaves older ones in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from psycopg import sql

from .jobs import INDEXES, jobs_ddl

__all__ = ["Query", "Schema"]

#: A statement and its parameters.
Query: TypeAlias = tuple[sql.Composed | sql.SQL, Sequence[Any] | dict[str, Any]]

_NOW = "extract(epoch FROM clock_timestamp())::float8"

#: The functions' names after the table prefix.
_TAKE, _REFUND, _LOCK = "take_v4", "refund_v2", "lock_v1"


_TABLES = """
CREATE TABLE IF NOT EXISTS {buckets} (
    name text NOT NULL,
    key text NOT NULL,
    tat double precision NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS {circuits} (
    name text PRIMARY KEY,
    state text NOT NULL,
    version bigint NOT NULL,
    trips integer NOT NULL,
    reason text NOT NULL,
    open_until double precision NOT NULL,
    probes_out integer NOT NULL,
    probe_successes integer NOT NULL,
    probes_lapse_at double precision NOT NULL DEFAULT 0
);
ALTER TABLE {circuits} ADD COLUMN IF NOT EXISTS
    probes_lapse_at double precision NOT NULL DEFAULT 0;
"""

_TAKE_FUNCTION = """
CREATE OR REPLACE FUNCTION {take}(
    p_names text[], p_keys text[], p_incs float8[], p_heads float8[], p_leads float8[],
    p_intervals float8[], p_capacities float8[], p_bursts float8[],
    p_max_wait float8, p_sweep integer)
RETURNS TABLE (granted boolean, wait float8, retry_after float8, tokens float8,
               olds float8[], news float8[])
LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    n integer := cardinality(p_names);
    t float8[] := ARRAY[]::float8[];
    nw float8[] := ARRAY[]::float8[];
    r record;
    now_ float8;
    s float8;
    d float8;
    reached float8;
    lft float8;
    x float8;
BEGIN
    -- Lock every bucket, one row at a time, in one order for everybody (so
    -- composite takes never deadlock); a bucket never used gets a full row first.
    IF n = 1 THEN  -- the common case, inline
        LOOP
            SELECT b.tat INTO x FROM {buckets} AS b
            WHERE b.name = p_names[1] AND b.key = p_keys[1]
            FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO {buckets} (name, key, tat) VALUES (p_names[1], p_keys[1], '-Infinity')
            ON CONFLICT (name, key) DO NOTHING;
        END LOOP;
        t[1] := x;
    ELSE
        FOR r IN
            SELECT u.name, u.key, u.ord
            FROM unnest(p_names, p_keys) WITH ORDINALITY AS u(name, key, ord)
            ORDER BY u.name, u.key
        LOOP
            t[r.ord] := {lock_one}(r.name, r.key);
        END LOOP;
    END IF;
    now_ := extract(epoch FROM clock_timestamp())::float8;
    -- resilience._core.bucket.take_all, operation for operation.
    s := now_;
    FOR i IN 1..n LOOP
        IF t[i] - p_heads[i] > now_ THEN
            s := greatest(s, t[i] - p_leads[i]);
        END IF;
    END LOOP;
    d := 0;
    IF s > now_ THEN
        d := s - now_;
        LOOP  -- exact_delay: now + d must reach s despite rounding
            reached := now_ + d;
            EXIT WHEN reached >= s;
            d := greatest(d + (s - reached), d + d * 2.220446049250313e-16);
        END LOOP;
    END IF;
    IF d > p_max_wait THEN
        FOR i IN 1..n LOOP
            x := CASE WHEN t[i] <= now_ THEN p_bursts[i]
                      ELSE greatest((p_capacities[i] - (t[i] - now_)) / p_intervals[i], 0) END;
            lft := least(lft, x);
        END LOOP;
        granted := false; wait := 0; retry_after := d; tokens := lft;
        RETURN NEXT;
        RETURN;
    END IF;
    FOR i IN 1..n LOOP
        nw := array_append(nw, greatest(t[i], s) + p_incs[i]);
        x := CASE WHEN nw[i] <= now_ THEN p_bursts[i]
                  ELSE greatest((p_capacities[i] - (nw[i] - now_)) / p_intervals[i], 0) END;
        lft := least(lft, x);
    END LOOP;
    FOR i IN 1..n LOOP
        UPDATE {buckets} SET tat = nw[i] WHERE name = p_names[i] AND key = p_keys[i];
    END LOOP;
    IF p_sweep > 0 THEN
        DELETE FROM {buckets} AS b WHERE b.ctid = ANY (ARRAY(
            SELECT c.ctid FROM {buckets} AS c
            WHERE c.tat <= now_ LIMIT p_sweep FOR UPDATE SKIP LOCKED));
    END IF;
    granted := true; wait := d; retry_after := 0; tokens := lft; olds := t; news := nw;
    RETURN NEXT;
END;
$body$
"""

_LOCK_FUNCTION = """
CREATE OR REPLACE FUNCTION {lock_one}(p_name text, p_key text)
RETURNS float8
LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    x float8;
BEGIN
    LOOP
        SELECT b.tat INTO x FROM {buckets} AS b
        WHERE b.name = p_name AND b.key = p_key
        FOR UPDATE;
        IF FOUND THEN
            RETURN x;
        END IF;
        -- Never used, or swept meanwhile: a full row, then lock it.
        INSERT INTO {buckets} (name, key, tat) VALUES (p_name, p_key, '-Infinity')
        ON CONFLICT (name, key) DO NOTHING;
    END LOOP;
END;
$body$
"""

_REFUND_FUNCTION = """
CREATE OR REPLACE FUNCTION {refund}(
    p_names text[], p_keys text[], p_befores float8[], p_afters float8[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $body$
DECLARE
    r record;
BEGIN
    -- The take's lock order; then resilience._core.bucket.refund: back to before
    -- only if the bucket is still at after.
    FOR r IN
        SELECT u.name, u.key, u.before, u.after
        FROM unnest(p_names, p_keys, p_befores, p_afters) AS u(name, key, before, after)
        ORDER BY u.name, u.key
    LOOP
        UPDATE {buckets} SET tat = r.before
        WHERE name = r.name AND key = r.key AND tat = r.after;
    END LOOP;
END;
$body$
"""


def _quoted(name: str) -> str:
    """A name as a quoted identifier, for to_regclass/to_regproc (which parse text)."""
    return '"' + name.replace('"', '""') + '"'


class Schema:
    """The tables, functions and statements of one table prefix (``table``)."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.buckets = sql.Identifier(f"{table}_buckets")
        self.circuits = sql.Identifier(f"{table}_circuits")
        self.take_fn = sql.Identifier(f"{table}_{_TAKE}")
        self.refund_fn = sql.Identifier(f"{table}_{_REFUND}")
        self.lock_fn = sql.Identifier(f"{table}_{_LOCK}")

    def statements(self) -> list[sql.Composed]:
        """The DDL, in order; each statement can run again (``IF NOT EXISTS``, ``OR REPLACE``)."""
        names = {
            "buckets": self.buckets,
            "circuits": self.circuits,
            "take": self.take_fn,
            "refund": self.refund_fn,
            "lock_one": self.lock_fn,
        }
        return [
            sql.SQL(_TABLES).format(**names),
            sql.SQL(_LOCK_FUNCTION).format(**names),
            sql.SQL(_TAKE_FUNCTION).format(**names),
            sql.SQL(_REFUND_FUNCTION).format(**names),
            jobs_ddl(self.table),
        ]

    def probe(self) -> Query:
        """One query: is everything this version of the store needs in place?"""
        return (
            sql.SQL(
                "SELECT to_regproc(%s) IS NOT NULL AND to_regproc(%s) IS NOT NULL "
                "AND to_regclass(%s) IS NOT NULL AND EXISTS (SELECT 1 FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attname = 'probes_lapse_at' "
                "AND NOT attisdropped) "
                # The jobs table, and its last index (created after the others).
                "AND to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL"
            ),
            (
                _quoted(f"{self.table}_{_TAKE}"),
                _quoted(f"{self.table}_{_REFUND}"),
                _quoted(f"{self.table}_buckets"),
                _quoted(f"{self.table}_circuits"),
                _quoted(f"{self.table}_jobs"),
                _quoted(f"{self.table}_{INDEXES[-1]}"),
            ),
        )

    def queries(self) -> dict[str, sql.Composed]:
        """Every statement the store runs, by name (composed once per store)."""
        names = {"buckets": self.buckets, "circuits": self.circuits, "now": sql.SQL(_NOW)}
        returning = " RETURNING c.state, c.version, c.trips, c.reason, c.open_until - {now}"
        texts = {
            "take": (
                "SELECT * FROM {take}(%s::text[], %s::text[], %s::float8[], %s::float8[], "
                "%s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::float8, %s::int)"
            ),
            "refund": "SELECT {refund}(%s::text[], %s::text[], %s::float8[], %s::float8[])",
            "penalize": (
                "INSERT INTO {buckets} AS b (name, key, tat) VALUES (%s, %s, ({now} + %s) + %s) "
                "ON CONFLICT (name, key) DO UPDATE SET tat = greatest(b.tat, excluded.tat)"
            ),
            "tokens": ("SELECT {now}, (SELECT tat FROM {buckets} WHERE name = %s AND key = %s)"),
            "count": "SELECT count(*) FROM {buckets} WHERE %s::text IS NULL OR name = %s",
            "load": (
                "SELECT state, version, trips, reason, open_until - {now} "
                "FROM {circuits} WHERE name = %s"
            ),
            "create": (
                "INSERT INTO {circuits} AS c (name, state, version, trips, reason, open_until, "
                "probes_out, probe_successes, probes_lapse_at) VALUES (%(name)s, %(state)s, 1, "
                "%(trips)s, %(reason)s, CASE WHEN %(open)s THEN {now} + %(duration)s::float8 "
                "ELSE 0 END, 0, 0, 0) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state, "
                "version = c.version + 1, trips = excluded.trips, reason = excluded.reason, "
                "open_until = excluded.open_until, probes_out = 0, probe_successes = 0, "
                "probes_lapse_at = 0 WHERE c.version = 0" + returning
            ),
            "transition": (
                "UPDATE {circuits} AS c SET state = %(state)s, version = c.version + 1, "
                "trips = %(trips)s, reason = %(reason)s, "
                "open_until = CASE WHEN %(open)s THEN {now} + %(duration)s::float8 ELSE 0 END, "
                "probes_out = 0, probe_successes = 0, probes_lapse_at = 0 "
                "WHERE c.name = %(name)s AND c.version = %(expected)s" + returning
            ),
            # resilience._core.breaker.take_probe, on the server's clock (read once).
            "acquire": (
                "UPDATE {circuits} AS c SET "
                "probes_out = CASE WHEN c.probes_lapse_at <= n.t THEN 0 "
                "ELSE c.probes_out END + 1, "
                "probes_lapse_at = n.t + %(lease)s::float8 "
                "FROM (SELECT {now} AS t) AS n "
                "WHERE c.name = %(name)s AND c.version = %(version)s "
                "AND c.state = 'half_open' AND CASE WHEN c.probes_lapse_at <= n.t THEN 0 "
                "ELSE c.probes_out END < %(limit)s RETURNING 1"
            ),
            "release": (
                "UPDATE {circuits} SET probes_out = greatest(probes_out - 1, 0), "
                "probe_successes = probe_successes + %s WHERE name = %s AND version = %s "
                "RETURNING probe_successes"
            ),
            "release0": (
                "INSERT INTO {circuits} AS c (name, state, version, trips, reason, open_until, "
                "probes_out, probe_successes) VALUES (%s, 'closed', 0, 0, 'initial state', 0, 0, "
                "%s) ON CONFLICT (name) DO UPDATE SET "
                "probes_out = greatest(c.probes_out - 1, 0), "
                "probe_successes = c.probe_successes + excluded.probe_successes "
                "WHERE c.version = 0 RETURNING c.probe_successes"
            ),
        }
        names_all = {**names, "take": self.take_fn, "refund": self.refund_fn}
        return {key: sql.SQL(text).format(**names_all) for key, text in texts.items()}
