"""PostgreSQL + pgvector: one table is one collection.

    postgresql://user@host:5432/db?table=docs&column=embedding&id=id&schema=public
    postgresql://postgres@/db?table=docs&host=/run/postgresql      (unix socket)

Other query options (sslmode, sslrootcert, sslcert, sslkey, application_name,
options ...) go to libpq unchanged. The password: ``?password_file=PATH`` (a file
holding only the password) or ``?password_env=VAR``, else libpq's PGPASSWORD /
~/.pgpass; one typed into the URI is used but never stored (see credentials.py).

A lost connection (server restart, failover, network) is retried with backoff:
``?retries=N&retry_delay=SECONDS`` (or EMBEDMIGRATE_RETRIES / EMBEDMIGRATE_RETRY_DELAY;
default 3 retries after 0.5, 1, 2 s). Each retry reconnects and runs the whole call
again, so only calls that are safe to repeat retry: reads, ``write`` (one idempotent
upsert transaction) and ``scan``, which continues after the last batch it yielded.

How each operation maps onto PostgreSQL:

- rows are points: the ``id`` column (a primary key or unique column) is the id,
  the ``column`` column (``vector(d)`` or ``halfvec(d)``) the vector, every other
  column a payload field, copied back with its own type;
- ``scan`` is keyset pagination on the id (``WHERE id > last ORDER BY id LIMIT n``):
  stable, resumable from the last id, constant memory, exact float32;
- ``sample`` orders the ids by ``md5(id::text || seed)``: a seeded, uniform random
  permutation of the ids. Postgres hashes every id (an index-only scan of the key,
  no vectors), but only the n sampled rows cross the wire. TABLESAMPLE was not
  used: it samples pages, so neighbouring rows come together;
- ``create_like`` copies the table with ``LIKE ... INCLUDING ALL`` (defaults,
  constraints, non-vector indexes, comments, storage, identity), changes the
  vector column to the new dimension, and remembers the vector indexes (method,
  opclass, HNSW / IVFFlat parameters) in a table comment; ``finish_write`` builds
  them after the bulk load, which is several times faster than inserting into a
  live HNSW graph, and then copies the foreign keys. The build runs with
  ``maintenance_work_mem`` raised to ``?maintenance_work_mem=`` (default 1GB; never
  lowered; ``=server`` keeps the server's value) for that transaction only;
- ``write`` is binary COPY into a temporary staging table, then
  ``INSERT ... ON CONFLICT (id) DO UPDATE``: one transaction per batch, idempotent;
- ``cutover`` renames the live table to ``<live>__pre_<timestamp>`` and this table
  to the live name in one transaction: readers wait on the lock for milliseconds
  and then see the new table, never a missing one.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Iterator

import numpy as np

from ..errors import (ConflictError, DataError, EmbedMigrateError, NotFoundError,
                      UnavailableError, UsageError)
from .base import (Batch, CollectionInfo, Connector, Cursor, Part, check_batch,
                   id_range_bounds, quantile_positions, retry_delays, retry_settings)
from .credentials import secret
from .uri import CollectionURI

# connectors/__init__.py imports this module only once psycopg is known to be installed
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format

# everything else in the query string goes to libpq
OWN_OPTIONS = ("column", "id", "schema", "retries", "retry_delay", "password_file",
               "password_env", "maintenance_work_mem")
# libpq's words for a TLS failure that retrying cannot fix (bad CA, host name mismatch,
# missing certificate file, a server without TLS under sslmode=require)
TLS_FAILURES = ("SSL error", "certificate", "does not support SSL")
CONNECT_TIMEOUT_S = 5  # per attempt; a user value is capped at MAX_CONNECT_TIMEOUT_S
MAX_CONNECT_TIMEOUT_S = 30
# finish_write raises the session's maintenance_work_mem to this for the vector index
# builds (never lowers it): with the server's usual 64MB, pgvector's HNSW graph stops
# fitting in memory after about 28,000 384-d rows and the build gets 3-4x slower
# (docs/benchmarks.md). ?maintenance_work_mem=server keeps the server's value.
INDEX_BUILD_MEMORY = "1GB"
SIZE_UNITS_KB = {"kb": 1, "mb": 1024, "gb": 1024 ** 2, "tb": 1024 ** 3}
MAX_MAINTENANCE_KB = 2147483647  # PostgreSQL's upper bound for the setting
LOCK_TIMEOUT = "10s"  # cutover waits this long for readers' locks, then gives up
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1
VECTOR_TYPES = ("vector", "halfvec")
# pgvector's HNSW and IVFFlat indexes take at most this many dimensions per type
MAX_INDEXED_DIMS = {"vector": 2000, "halfvec": 4000}
METRIC_OF_OPS = {"cosine": "cosine", "ip": "dot", "l2": "l2"}
OPS_OF_METRIC = {"cosine": "cosine", "dot": "ip", "l2": "l2"}
COMMENT_KEY = "embedmigrate"
INT_TYPES = ("int2", "int4", "int8")
TEXT_TYPES = ("text", "varchar", "bpchar", "name", "citext")
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
              "MAINTAIN")

# psycopg logs a warning when it abandons a COPY on a dead connection; the loss is
# retried or reported by us in one line, so keep that log off the terminal
logging.getLogger("psycopg").addHandler(logging.NullHandler())
log = logging.getLogger(__name__)


class _ConnectionLost(UnavailableError):
    """The connection broke during a call (what ``_errors`` raises, and what the
    retrying wrappers below catch). Callers outside them see an UnavailableError."""

    def __init__(self, where: str, reason: str):
        self.reason = reason
        super().__init__(f"lost the connection to {where}: {reason}",
                         "check the server is up, then re-run: an interrupted apply resumes "
                         "where it stopped")


def _reconnecting(method):
    """Run the whole call again on a new connection when the connection is lost, with
    bounded backoff. Only for calls that are safe to repeat from the start."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return self.retrying(lambda: method(self, *args, **kwargs), method.__name__)
    return wrapper


def _resuming(scan):
    """A scan that loses its connection reconnects and continues after the last batch
    it yielded (keyset pagination: the cursor is the last id, so no row is read twice
    or skipped). The retry budget is per outage: it resets once a batch arrives."""
    @functools.wraps(scan)
    def wrapper(self, batch_size, after=None, *args, **kwargs):
        cursor, failures = after, 0
        while True:
            try:
                for batch, cursor in scan(self, batch_size, cursor, *args, **kwargs):
                    failures = 0
                    yield batch, cursor
                return
            except _ConnectionLost as lost:
                self.wait_to_retry(failures, lost, "scan")
                failures += 1
    return wrapper


@dataclass
class Column:
    name: str
    attnum: int
    type: str  # format_type(): "vector(64)", "text[]", "character varying(20)" ...
    typname: str  # pg_type.typname of the column, or of the domain's base type
    type_schema: str
    typmod: int
    copy_oid: int  # the type whose binary format COPY sends for this column
    generated: bool
    identity: str  # "" | "a" (ALWAYS) | "d" (BY DEFAULT)


@dataclass
class Layout:
    """A table as the connector sees it: which column is what."""

    oid: int
    schema: str
    table: str
    columns: list[Column]
    id: Column
    vector: Column
    dim: int
    comment: str | None
    payload: list[Column] = field(default_factory=list)  # every column but id and vector

    @property
    def vtype(self) -> str:
        return self.vector.typname


class PostgresConnector(Connector):
    engine = "postgres"

    @classmethod
    def cutover_description(cls, live: str, target: str) -> str:
        return (f"one transaction: ALTER TABLE {live} RENAME TO {live}__pre_<time>; "
                f"ALTER TABLE {target} RENAME TO {live}")

    @classmethod
    def rollback_outcome(cls, record: dict) -> str:
        live, migrated, retired = record["live"], record["migrated"], record.get("retired")
        if retired:
            return f"table '{live}' is the old table again; the migrated one is '{migrated}' again"
        return (f"the migrated table is '{migrated}' again; no table was called '{live}' before "
                "the cutover, so none is now")

    @classmethod
    def retired_collection(cls, record: dict) -> str | None:
        return record.get("retired")  # the live table's name after the rename

    def __init__(self, uri: CollectionURI):
        super().__init__(uri)
        self.column = uri.options.get("column") or "embedding"
        self.id_column = uri.options.get("id") or "id"
        self.schema = uri.options.get("schema") or "public"
        self.retries, self.retry_delay = retry_settings(uri.options)
        self.index_build_memory = _index_build_memory(uri.options)
        self._conn = None
        self._layout_cache: Layout | None = None

    # --- connection --------------------------------------------------------------
    def _conninfo(self) -> dict:
        u = self.uri
        params = {k: v for k, v in u.options.items() if k not in OWN_OPTIONS}
        if u.host and "host" not in params:
            params["host"] = u.host
        if u.port and "port" not in params:
            params["port"] = str(u.port)
        if u.username:
            params["user"] = u.username
        password = u.password or secret(u, "password", what="password")
        if password:  # else libpq reads PGPASSWORD / ~/.pgpass itself
            params["password"] = password
        if u.database:
            params["dbname"] = u.database
        try:
            timeout = int(params.get("connect_timeout", CONNECT_TIMEOUT_S))
        except ValueError:
            raise UsageError(f"connect_timeout={params['connect_timeout']!r} is not a number",
                             "pass ?connect_timeout=SECONDS") from None
        params["connect_timeout"] = str(max(1, min(timeout, MAX_CONNECT_TIMEOUT_S)))
        params.setdefault("application_name", "embedmigrate")
        return params

    @property
    def conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _connect(self):
        params = self._conninfo()
        where = self.uri.redacted()

        def once():
            try:
                return psycopg.connect(autocommit=True, **params)
            except psycopg.ProgrammingError as e:  # a bad libpq option: retrying cannot help
                raise UsageError(f"cannot connect to {where}: {_first_line(e)}",
                                 "fix or remove that query option in the URI") from None
            except psycopg.OperationalError as e:
                _raise_if_permanent(e, where, self.uri)
                raise _ConnectionLost(where, _first_line(e)) from None
        conn = self.retrying(once)
        _register_types(conn)
        # pgvector reports a graph that outgrew maintenance_work_mem as a NOTICE
        conn.add_notice_handler(_log_notice)
        return conn

    def is_transient(self, error: Exception) -> bool:
        return isinstance(error, _ConnectionLost)

    def backoff(self) -> list[float]:
        return retry_delays(self.retries, base=self.retry_delay)

    def unavailable(self, error: Exception, attempts: int, what: str) -> Exception:
        reason = getattr(error, "reason", _first_line(error))
        return self._unreachable(attempts, f"{what}: {reason}" if what else reason)

    def _unreachable(self, attempts: int, reason: str) -> UnavailableError:
        return UnavailableError(
            f"PostgreSQL at {self.uri.redacted()} is unreachable after {attempts} "
            f"attempt{'s' * (attempts > 1)}: {reason}",
            "check the host and port and that the server is running and accepts connections "
            "(for a unix socket pass ?host=/path/to/socket/dir), then re-run: an interrupted "
            "apply resumes where it stopped (?retries=N waits longer)")

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    @contextmanager
    def _errors(self):
        """Turn the database errors a user can act on into one-line EmbedMigrateErrors."""
        try:
            yield
        except EmbedMigrateError:
            raise
        except pg_errors.InsufficientPrivilege as e:
            raise UsageError(f"PostgreSQL refused: {_first_line(e)}",
                             "grant the connecting role the privilege it names, or connect as the "
                             "table's owner") from None
        except pg_errors.LockNotAvailable:
            raise ConflictError(f"table '{self.schema}.{self.name}' is locked by another session",
                                "retry when the long-running transactions on it have finished") \
                from None
        except pg_errors.UndefinedTable as e:
            raise NotFoundError(f"PostgreSQL: {_first_line(e)}",
                                "check ?table= and ?schema= in the URI") from None
        except (psycopg.DataError, psycopg.IntegrityError) as e:
            # DataError: the server's DataException, or psycopg refusing a value client-side
            # (a NUL in text); IntegrityError: a NOT NULL or CHECK constraint of the table
            raise DataError(f"PostgreSQL rejected the data: {_first_line(e)}",
                            "fix the values it names in the source") from None
        except psycopg.OperationalError as e:
            state = getattr(e, "sqlstate", None) or ""
            # no sqlstate: libpq lost the socket; 08: connection exception; 57P0x: shutdown
            if not state or state.startswith("08") or state in ("57P01", "57P02", "57P03"):
                self.close()
                raise _ConnectionLost(self.uri.redacted(), _first_line(e)) from None
            raise

    # --- table layout --------------------------------------------------------------
    def _ident(self, name: str | None = None):
        return sql.Identifier(self.schema, name or self.name)

    def _table_oid(self, name: str, schema: str | None = None) -> int | None:
        row = self.conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            (schema or self.schema, name)).fetchone()
        return row[0] if row else None

    def _layout(self, refresh: bool = False) -> Layout:
        if self._layout_cache is None or refresh:
            self._layout_cache = self._read_layout(self.schema, self.name, self.column,
                                                   self.id_column)
        return self._layout_cache

    def _read_layout(self, schema: str, table: str, vector_col: str, id_col: str) -> Layout:
        oid = self._table_oid(table, schema)
        if oid is None:
            db = self.uri.database or "(default)"
            raise NotFoundError(f"table '{schema}.{table}' does not exist in database '{db}'",
                                "check ?table= and ?schema= (default public) in the URI")
        rows = self.conn.execute(
            """SELECT a.attname, a.attnum, format_type(a.atttypid, a.atttypmod),
                      coalesce(b.typname, t.typname), coalesce(bn.nspname, tn.nspname),
                      a.atttypmod, coalesce(b.oid, t.oid), t.typtype, a.attgenerated <> '',
                      a.attidentity::text,
                      coalesce(b.typcategory, t.typcategory), coalesce(b.typelem, t.typelem)
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               JOIN pg_namespace tn ON tn.oid = t.typnamespace
               LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
               LEFT JOIN pg_namespace bn ON bn.oid = b.typnamespace
               WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum""", (oid,)).fetchall()
        columns = []
        for name, attnum, ftype, typname, tschema, typmod, base_oid, typtype, gen, ident, cat, \
                elem in rows:
            columns.append(Column(name, attnum, ftype, typname, tschema, typmod,
                                  self._copy_oid(base_oid, typtype, cat, elem, typname), gen,
                                  ident))
        by_name = {c.name: c for c in columns}
        vectors = [c.name for c in columns if c.typname in VECTOR_TYPES]
        where = f"table '{schema}.{table}'"
        if vector_col not in by_name:
            raise NotFoundError(f"{where} has no column '{vector_col}'",
                                _vector_column_fix(vectors))
        vec = by_name[vector_col]
        if vec.typname not in VECTOR_TYPES:
            raise UsageError(f"column '{vector_col}' of {where} is type {vec.type}, not vector",
                             _vector_column_fix(vectors))
        if id_col not in by_name:
            raise NotFoundError(f"{where} has no column '{id_col}'",
                                "pass ?id=<the primary key column> in the URI")
        if not self._is_unique(oid, by_name[id_col].attnum):
            raise UsageError(f"column '{id_col}' of {where} is not a primary key or unique",
                             "pass ?id=<the primary key column>, or add a primary key "
                             f"(ALTER TABLE {table} ADD PRIMARY KEY ({id_col}))")
        dim = vec.typmod if vec.typmod > 0 else self._dim_from_rows(schema, table, vec.name)
        comment = self.conn.execute("SELECT obj_description(%s, 'pg_class')", (oid,)).fetchone()[0]
        payload = [c for c in columns if c.name not in (vector_col, id_col)]
        return Layout(oid, schema, table, columns, by_name[id_col], vec, dim, comment, payload)

    def _copy_oid(self, oid: int, typtype: str, category: str, elem: int, typname: str) -> int:
        """The type whose binary format a COPY sends for a column of this type."""
        if typtype == "e" or typname == "json":
            # enum and json take their label / text bytes as binary input; json payloads
            # are read as str (see _register_types), so they round-trip byte for byte
            return 25
        if category == "A" and elem:
            elem_name = self.conn.adapters.types.get(elem)
            if elem_name is not None and elem_name.name == "json":
                return 1009  # json[] -> text[]
        return oid

    def _is_unique(self, table_oid: int, attnum: int) -> bool:
        return self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = %s AND indisunique "
            "AND indnkeyatts = 1 AND indkey[0] = %s AND indpred IS NULL)",
            (table_oid, attnum)).fetchone()[0]

    def _dim_from_rows(self, schema: str, table: str, col: str) -> int:
        """A vector column declared without a dimension: read it from a row."""
        row = self.conn.execute(
            sql.SQL("SELECT vector_dims({c}) FROM {t} WHERE {c} IS NOT NULL LIMIT 1").format(
                c=sql.Identifier(col), t=sql.Identifier(schema, table))).fetchone()
        return int(row[0]) if row else 0

    def _indexes(self, lay: Layout) -> list[dict]:
        """Every index on the table; ``vector`` ones hold what is needed to rebuild them."""
        rows = self.conn.execute(
            """SELECT ci.relname, am.amname, pg_get_indexdef(i.indexrelid), ci.reloptions,
                      i.indnkeyatts, i.indkey[0], i.indexprs IS NOT NULL, i.indpred IS NOT NULL,
                      opc.opcname,
                      EXISTS (SELECT 1 FROM pg_depend d
                              WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                                AND d.refobjid = i.indrelid AND d.refobjsubid = %s)
               FROM pg_index i
               JOIN pg_class ci ON ci.oid = i.indexrelid
               JOIN pg_am am ON am.oid = ci.relam
               LEFT JOIN pg_opclass opc ON opc.oid = i.indclass[0]
               WHERE i.indrelid = %s ORDER BY ci.relname""",
            (lay.vector.attnum, lay.oid)).fetchall()
        out = []
        for name, method, indexdef, reloptions, nkeys, key0, has_exprs, partial, opc, uses_vec \
                in rows:
            spec = {"name": name, "method": method, "definition": indexdef,
                    "uses_vector": bool(uses_vec)}
            ops = re.fullmatch(r"(?:vector|halfvec)_(\w+)_ops", opc or "")
            if uses_vec and ops and nkeys == 1 and key0 == lay.vector.attnum and not has_exprs \
                    and not partial:
                spec["ops"] = ops.group(1)  # cosine | ip | l2 | l1
                spec["options"] = dict(o.split("=", 1) for o in (reloptions or []))
            out.append(spec)
        return out

    def _pending(self, lay: Layout) -> dict | None:
        """What create_like left for finish_write (kept in the table comment, so a run
        resumed in a new process still builds the index)."""
        try:
            note = json.loads(lay.comment or "")
        except ValueError:
            return None
        return note.get(COMMENT_KEY) if isinstance(note, dict) else None

    # --- reading ------------------------------------------------------------------
    @_reconnecting
    def exists(self) -> bool:
        with self._errors():
            return self._table_oid(self.name) is not None

    @_reconnecting
    def describe(self) -> CollectionInfo:
        with self._errors():
            lay = self._layout(refresh=True)
            count, nulls = self.conn.execute(
                sql.SQL("SELECT count(*), count(*) FILTER (WHERE {v} IS NULL) FROM {t}").format(
                    v=sql.Identifier(lay.vector.name), t=self._ident())).fetchone()
            estimate = self.conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s",
                                         (lay.oid,)).fetchone()[0]
            indexes = self._indexes(lay)
            pending = self._pending(lay) or {}
            vector_indexes = [i for i in indexes if "ops" in i] or pending.get("indexes", [])
            metric, metric_source = "cosine", "default: the vector column has no index; cosine " \
                "assumed (say so explicitly if the application queries with <#> or <->)"
            if vector_indexes:
                ops = vector_indexes[0]["ops"]
                metric = METRIC_OF_OPS.get(ops, "l2")
                metric_source = f"index opclass {lay.vtype}_{ops}_ops" + (
                    " (l1 reported as l2)" if ops == "l1" else "")
            text_fields = [c.name for c in lay.payload if c.typname in TEXT_TYPES]
            settings = {
                "schema": lay.schema, "table": lay.table, "vector_type": lay.vtype,
                "id_column": lay.id.name, "id_type": lay.id.type,
                "columns": {c.name: c.type for c in lay.columns},
                "indexes": [i["definition"] for i in indexes],
                "vector_indexes": [{k: i.get(k) for k in ("name", "method", "ops", "options")}
                                   for i in vector_indexes],
                "metric_source": metric_source,
                "null_vectors": nulls, "estimated_rows": max(int(estimate), 0),
                "pending_index_build": bool(pending.get("indexes")),
            }
            return CollectionInfo(engine="postgres", name=self.name, count=count, dim=lay.dim,
                                  metric=metric, id_type=_id_kind(lay.id.typname),
                                  vector_name=lay.vector.name,
                                  payload_fields=[c.name for c in lay.payload],
                                  text_fields=text_fields, settings=settings)

    def _select(self, lay: Layout):
        cols = [lay.id, lay.vector, *lay.payload]
        return sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c.name) for c in cols), self._ident())

    def _to_batch(self, lay: Layout, rows: list) -> Batch:
        if any(r[1] is None for r in rows):
            bad = next(r[0] for r in rows if r[1] is None)
            raise DataError(f"row {lay.id.name}={bad!r} of '{lay.schema}.{lay.table}' has a NULL "
                            f"{lay.vector.name}",
                            f"fill or delete the rows where {lay.vector.name} IS NULL before "
                            "migrating")
        ids = [_id_out(r[0]) for r in rows]
        if rows:
            vectors = np.stack([r[1] for r in rows]).astype(np.float32)
        else:
            vectors = np.zeros((0, lay.dim), np.float32)
        names = [c.name for c in lay.payload]
        payloads = [dict(zip(names, r[2:])) for r in rows]
        return Batch(ids, vectors, payloads)

    @_reconnecting
    def sample(self, n: int, seed: int = 0) -> Batch:
        with self._errors():
            lay = self._layout()
            key = sql.SQL("md5({}::text || %(salt)s)").format(sql.Identifier(lay.id.name))
            query = sql.SQL("{select} WHERE {id} IN (SELECT {id} FROM {t} ORDER BY {key} "
                            "LIMIT %(n)s) ORDER BY {key}").format(
                select=self._select(lay), id=sql.Identifier(lay.id.name), t=self._ident(),
                key=key)
            rows = self.conn.execute(query, {"salt": f"/{int(seed)}", "n": max(int(n), 0)},
                                     binary=True).fetchall()
            if not rows and n > 0:
                raise DataError(f"table '{lay.schema}.{lay.table}' is empty: nothing to sample",
                                "point the URI at the table that holds the vectors")
            return self._to_batch(lay, rows)

    @_resuming
    def scan(self, batch_size: int, after: Cursor = None,
             part: Part = None) -> Iterator[tuple[Batch, Cursor]]:
        """Keyset pagination in id order; the cursor is the last id read. A part is
        ``{"from": id, "to": id}``: ids in [from, to), either end open (None)."""
        with self._errors():
            lay = self._layout()
        if batch_size < 1:
            raise UsageError(f"batch size {batch_size} must be at least 1", "pass --batch-size N")
        ident = sql.Identifier(lay.id.name)
        low, high = _part_bounds(part, lay.id.typname)
        last = _id_in(after, lay.id.typname) if after is not None else None
        while True:
            where, args = [], []
            if last is not None:
                where, args = [sql.SQL("{} > %s").format(ident)], [last]
            elif low is not None:
                where, args = [sql.SQL("{} >= %s").format(ident)], [low]
            if high is not None:
                where.append(sql.SQL("{} < %s").format(ident))
                args.append(high)
            query = sql.SQL("{} {} ORDER BY {} LIMIT %s").format(
                self._select(lay),
                sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""), ident)
            with self._errors():
                rows = self.conn.execute(query, (*args, batch_size), binary=True).fetchall()
                if not rows:
                    return
                batch = self._to_batch(lay, rows)
            last = rows[-1][0]
            yield batch, _id_out(last)
            if len(rows) < batch_size:
                return

    def scan_ids(self, page_size: int = 10_000) -> Iterator[list]:
        for ids, _ in self._id_pages(page_size):
            yield ids

    @_resuming
    def _id_pages(self, page_size: int, after: Cursor = None):
        """Keyset pages of the id column alone (an index-only scan of the key)."""
        with self._errors():
            lay = self._layout()
        ident = sql.Identifier(lay.id.name)
        last = _id_in(after, lay.id.typname) if after is not None else None
        while True:
            query = sql.SQL("SELECT {i} FROM {t} {w} ORDER BY {i} LIMIT %s").format(
                i=ident, t=self._ident(),
                w=sql.SQL("WHERE {} > %s").format(ident) if last is not None else sql.SQL(""))
            with self._errors():
                rows = self.conn.execute(query, (*([last] if last is not None else []),
                                                 page_size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [_id_out(r[0]) for r in rows], _id_out(last)

    @_reconnecting
    def partitions(self, n: int) -> list[Part]:
        """Id ranges of near-equal size, cut at the ids found at evenly spaced
        positions of the primary key (an index-only walk per cut)."""
        with self._errors():
            lay = self._layout()
            count = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._ident())
                                      ).fetchone()[0]
            if n <= 1 or count < 2:
                return [None]
            at = sql.SQL("SELECT {id} FROM {t} ORDER BY {id} OFFSET %s LIMIT 1").format(
                id=sql.Identifier(lay.id.name), t=self._ident())
            cuts = [_id_out(self.conn.execute(at, (pos,)).fetchone()[0])
                    for pos in quantile_positions(count, n)[1:]]
        bounds = [None, *dict.fromkeys(cuts), None]  # distinct cuts, in order
        return [{"from": a, "to": b} for a, b in zip(bounds, bounds[1:])]

    @_reconnecting
    def fetch(self, ids: list) -> Batch:
        with self._errors():
            lay = self._layout()
            keys = [_id_in(i, lay.id.typname) for i in ids]
            query = sql.SQL("{} WHERE {} = ANY(%s)").format(self._select(lay),
                                                             sql.Identifier(lay.id.name))
            rows = self.conn.execute(query, (keys,), binary=True).fetchall()
            by_id = {str(_id_out(r[0])): r for r in rows}
            return self._to_batch(lay, [by_id[str(_id_out(k))] for k in keys
                                        if str(_id_out(k)) in by_id])

    # --- writing the target ------------------------------------------------------
    def create_like(self, source: CollectionInfo, dim: int, *, if_exists: str = "error") -> None:
        if if_exists not in ("error", "resume", "replace"):
            raise UsageError(f"if_exists={if_exists!r} is not one of error, resume, replace",
                             "pass if_exists='error', 'resume' or 'replace'")
        if source.engine != "postgres":
            raise UsageError(f"cannot create a PostgreSQL table like a {source.engine} collection",
                             "create the target table yourself (id, vector and payload columns) "
                             "and resume into it")
        src_schema = source.settings.get("schema", "public")
        if (src_schema, source.name) == (self.schema, self.name):
            raise UsageError(f"the target table '{self.schema}.{self.name}' is the source table",
                             "name a new target table")
        with self._errors():
            if self._table_oid(source.name, src_schema) is None:
                raise NotFoundError(f"source table '{src_schema}.{source.name}' is not in the "
                                    f"target's database '{self.uri.database or '(default)'}'",
                                    "put the target in the source's database (create_like copies "
                                    "the table definition with CREATE TABLE ... LIKE)")
            src = self._read_layout(src_schema, source.name, source.vector_name or self.column,
                                    source.settings.get("id_column", self.id_column))
            vtype = _target_vector_type(src, dim, self._indexes(src))
            exists = self._table_oid(self.name) is not None
            if exists and if_exists == "error":
                raise ConflictError(f"table '{self.schema}.{self.name}' already exists",
                                    "pick another target table, or pass if_exists='resume' to "
                                    "continue writing into it or 'replace' to drop and recreate it")
            if exists and if_exists == "resume":
                have = self._layout(refresh=True)
                if have.dim != dim:
                    raise DataError(f"table '{self.schema}.{self.name}' holds {have.dim}-dim "
                                    f"vectors, not {dim}",
                                    "resume with the dimension it was created for, or pass "
                                    "if_exists='replace'")
                return
            with self.conn.transaction():
                if exists:  # replace: drop and recreate atomically
                    self.conn.execute(sql.SQL("DROP TABLE {}").format(self._ident()))
                self._create_copy(src, vtype, dim)
            self._layout_cache = None

    def _create_copy(self, src: Layout, vtype: str, dim: int) -> None:
        target, source = self._ident(), sql.Identifier(src.schema, src.table)
        run = self.conn.execute
        # ALL = comments, compression, constraints (CHECK/NOT NULL), defaults, generated,
        # identity, indexes (the primary key and payload indexes), statistics, storage
        run(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(target, source))
        made = self._read_layout(self.schema, self.name, src.vector.name, src.id.name)
        vector_indexes = []
        for index in self._indexes(made):
            if index["uses_vector"]:  # built after the load, for the new dimension
                run(sql.SQL("DROP INDEX {}").format(sql.Identifier(self.schema, index["name"])))
                if "ops" in index:
                    vector_indexes.append({k: index[k] for k in ("method", "ops", "options")})
        run(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
            target, sql.Identifier(src.vector.name), _vector_type_sql(src.vector, vtype, dim)))
        foreign_keys = [d for (d,) in run(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s "
            "AND contype = 'f' ORDER BY conname", (src.oid,)).fetchall()]
        for privilege, grantee in run(
                "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL "
                "ELSE pg_get_userbyid(a.grantee) END FROM pg_class c, aclexplode(c.relacl) a "
                "WHERE c.oid = %s", (src.oid,)).fetchall():
            if privilege in PRIVILEGES:  # applications keep their access after the cutover
                run(sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(privilege), target,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)))
        note = {COMMENT_KEY: {"indexes": vector_indexes, "foreign_keys": foreign_keys,
                              "comment": src.comment, "source": f"{src.schema}.{src.table}"}}
        run(sql.SQL("COMMENT ON TABLE {} IS {}").format(target, sql.Literal(json.dumps(note))))

    @_reconnecting
    def write(self, batch: Batch) -> None:
        with self._errors():
            lay = self._layout()
            batch = check_batch(batch, lay.dim)
            if not len(batch):
                return
            writable = {c.name: c for c in lay.payload if not c.generated}
            fields = list(dict.fromkeys(k for p in batch.payloads for k in p))
            unknown = [f for f in fields if f not in writable and
                       f not in {c.name for c in lay.payload}]
            if unknown:
                raise DataError(f"payload field '{unknown[0]}' has no column in table "
                                f"'{lay.schema}.{lay.table}'",
                                f"add the column (ALTER TABLE {lay.table} ADD COLUMN ...) or "
                                "drop the field from the payloads")
            cols = [lay.id, lay.vector, *[writable[f] for f in fields if f in writable]]
            _check_values(lay, batch, cols[2:])  # before the transaction: nothing half-sent
            rows = self._rows(lay, batch, cols[2:])
            self._upsert(lay, cols, rows)

    @_reconnecting
    def add_text_fields(self, names) -> None:
        with self._errors():
            lay = self._layout(refresh=True)
            have = {c.name for c in lay.payload}
            missing = [n for n in names if n not in have]
            if missing:
                self.conn.execute(sql.SQL("ALTER TABLE {} ").format(self._ident()) + sql.SQL(", ").join(
                    sql.SQL("ADD COLUMN IF NOT EXISTS {} text").format(sql.Identifier(n))
                    for n in missing))
                self._layout_cache = None

    def _rows(self, lay: Layout, batch: Batch, payload_cols: list[Column]):
        ids = [_id_in(i, lay.id.typname) for i in batch.ids]
        vectors = _encode(batch.vectors, ">f2" if lay.vtype == "halfvec" else ">f4")
        names = [c.name for c in payload_cols]
        for i, v, p in zip(ids, vectors, batch.payloads):
            yield (i, v, *[p.get(name) for name in names])

    def _upsert(self, lay: Layout, cols: list[Column], rows) -> None:
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in cols)
        stage = sql.Identifier("embedmigrate_stage")
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c.name)) for c in cols[1:])
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE" if any(c.identity == "a" for c in cols)
                             else "")
        with self.conn.transaction():
            # a temp table dropped at commit: the COPY goes there, the upsert merges it
            self.conn.execute(sql.SQL(
                "CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                stage, self._ident()))
            with self.conn.cursor() as cur:
                with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                        stage, names)) as copy:
                    copy.set_types([c.copy_oid for c in cols])
                    for k, row in enumerate(rows):
                        try:
                            copy.write_row(row)
                        except (TypeError, ValueError, OverflowError, IndexError,
                                RecursionError) as e:  # a value the column's type cannot take
                            raise DataError(f"row #{k} (id {_short(row[0])}) cannot be written "
                                            f"to '{lay.schema}.{lay.table}': {_first_line(e)}",
                                            "convert the payload values to the columns' types"
                                            ) from None
                cur.execute(sql.SQL(
                    "INSERT INTO {t} ({names}){over} SELECT {names} FROM {stage} "
                    "ON CONFLICT ({id}) DO UPDATE SET {updates}").format(
                    t=self._ident(), names=names, over=overriding, stage=stage,
                    id=sql.Identifier(lay.id.name), updates=updates))

    @_reconnecting
    def finish_write(self) -> None:
        """Build the vector indexes create_like postponed, copy the foreign keys, restore
        the table comment, move identity sequences past the copied ids, ANALYZE."""
        with self._errors():
            lay = self._layout(refresh=True)
            pending = self._pending(lay)
            target = self._ident()
            with self.conn.transaction():
                if pending is not None:
                    if pending.get("indexes"):
                        self._raise_index_build_memory()
                    for index in pending.get("indexes", []):
                        self.conn.execute(_index_sql(lay, index, target))
                    for definition in pending.get("foreign_keys", []):
                        # pg_get_constraintdef() output of the source table, from the catalog
                        self.conn.execute(sql.SQL("ALTER TABLE {} ADD {}").format(
                            target, sql.SQL(definition)))
                    self.conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
                        target, sql.Literal(pending.get("comment"))))
                for col in lay.columns:
                    if col.identity:
                        self.conn.execute(sql.SQL(
                            "SELECT setval(pg_get_serial_sequence(%s, %s), "
                            "coalesce(max({c}), 0) + 1, false) FROM {t}").format(
                            c=sql.Identifier(col.name), t=target),
                            (target.as_string(self.conn), col.name))
            self.conn.execute(sql.SQL("ANALYZE {}").format(target))
            self._layout_cache = None

    def _raise_index_build_memory(self) -> None:
        """SET LOCAL maintenance_work_mem to the URI's value when it is above the server's."""
        if self.index_build_memory is None:
            return
        have = self.conn.execute(
            "SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()[0]
        if self.index_build_memory * 1024 > have:
            self.conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(
                sql.Literal(f"{self.index_build_memory}kB")))

    def drop(self) -> None:
        with self._errors():
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._ident()))
            self._layout_cache = None

    # --- cutover ------------------------------------------------------------------
    def cutover(self, live_name: str) -> dict:
        if live_name == self.name:
            raise UsageError(f"table '{self.name}' is already the live name",
                             "pass the name applications query")
        with self._errors():
            lay = self._layout(refresh=True)
            if (self._pending(lay) or {}).get("indexes"):
                raise UsageError(f"the vector index of '{self.schema}.{self.name}' is not built "
                                 "yet", "finish the write (finish_write builds it) before cutover")
            retired = _retired_name(live_name, datetime.now(timezone.utc))
            sequences: list = []
            with self.conn.transaction():
                self.conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(LOCK_TIMEOUT)))
                live_oid = self._table_oid(live_name)
                if live_oid is not None:
                    self._refuse_dependents(live_name, live_oid)
                    if self._table_oid(retired) is not None:
                        raise ConflictError(f"table '{self.schema}.{retired}' already exists",
                                            "retry the cutover in a second")
                    sequences = self._shared_sequences(live_oid, lay.oid)
                    self._rename(live_name, retired)
                self._rename(self.name, live_name)
                if live_oid is not None:
                    self._own_sequences(self.schema, live_name, sequences)
            self._layout_cache = None
        return {"engine": "postgres", "schema": self.schema, "live": live_name,
                "retired": retired if live_oid is not None else None, "migrated": self.name,
                "sequences": sequences if live_oid is not None else [],
                "at": datetime.now(timezone.utc).isoformat()}

    def _shared_sequences(self, live_oid: int, target_oid: int) -> list[list[str]]:
        """Sequences owned by a live column (serial / bigserial) that the target's defaults
        also use (LIKE copies ``nextval('live_id_seq')``): [schema, sequence, column]."""
        return [list(r) for r in self.conn.execute(
            """SELECT sn.nspname, s.relname, a.attname
               FROM pg_depend own
               JOIN pg_class s ON s.oid = own.objid AND s.relkind = 'S'
               JOIN pg_namespace sn ON sn.oid = s.relnamespace
               JOIN pg_attribute a ON a.attrelid = own.refobjid AND a.attnum = own.refobjsubid
               WHERE own.classid = 'pg_class'::regclass AND own.refobjid = %s
                 AND own.deptype = 'a'
                 AND EXISTS (SELECT 1 FROM pg_depend use JOIN pg_attrdef ad
                               ON use.classid = 'pg_attrdef'::regclass AND use.objid = ad.oid
                             WHERE ad.adrelid = %s AND use.refobjid = s.oid)
               ORDER BY s.relname""", (live_oid, target_oid)).fetchall()]

    def _own_sequences(self, schema: str, table: str, sequences: list) -> None:
        """Hand shared sequences to the table now serving (so dropping the retired table
        later does not take the live table's id default with it)."""
        for seq_schema, seq, column in sequences:
            self.conn.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
                sql.Identifier(seq_schema, seq), sql.Identifier(schema, table, column)))

    def _rename(self, old: str, new: str) -> None:
        self.conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            self._ident(old), sql.Identifier(new)))

    def _refuse_dependents(self, live_name: str, oid: int) -> None:
        """Views and foreign keys follow the table, not its name: after the swap they would
        keep using the retired table. Refuse rather than leave them silently stale."""
        views = [v for (v,) in self.conn.execute(
            "SELECT DISTINCT r.ev_class::regclass::text FROM pg_depend d "
            "JOIN pg_rewrite r ON r.oid = d.objid WHERE d.classid = 'pg_rewrite'::regclass "
            "AND d.refobjid = %s AND r.ev_class <> %s", (oid, oid)).fetchall()]
        if views:
            raise ConflictError(f"views read table '{live_name}' and would keep reading the old "
                                f"table after the swap: {', '.join(views)}",
                                "drop those views, cut over, and recreate them")
        refs = [t for (t,) in self.conn.execute(
            "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint WHERE confrelid = %s "
            "AND contype = 'f' AND conrelid <> %s", (oid, oid)).fetchall()]
        if refs:
            raise ConflictError(f"foreign keys in {', '.join(refs)} reference table "
                                f"'{live_name}' and would keep pointing at the old table",
                                "drop those foreign keys, cut over, and re-add them")

    def rollback(self, record: dict) -> None:
        schema, live = record.get("schema", self.schema), record["live"]
        migrated, retired = record["migrated"], record.get("retired")
        with self._errors(), self.conn.transaction():
            self.conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(LOCK_TIMEOUT)))
            if retired is not None and self._table_oid(retired, schema) is None:
                raise NotFoundError(f"the retired table '{schema}.{retired}' no longer exists",
                                    "restore it from a backup; rollback needs it")
            if self._table_oid(migrated, schema) is not None:
                raise ConflictError(f"table '{schema}.{migrated}' exists again",
                                    "drop or rename it, then roll back")
            rename = sql.SQL("ALTER TABLE {} RENAME TO {}")
            self.conn.execute(rename.format(sql.Identifier(schema, live),
                                            sql.Identifier(migrated)))
            if retired is not None:
                self.conn.execute(rename.format(sql.Identifier(schema, retired),
                                                sql.Identifier(live)))
                self._own_sequences(schema, live, record.get("sequences", []))
        self._layout_cache = None


# --- helpers ----------------------------------------------------------------------------

def _index_build_memory(options: dict) -> int | None:
    """?maintenance_work_mem= as kB (None: keep the server's setting)."""
    text = options.get("maintenance_work_mem", INDEX_BUILD_MEMORY).strip()
    if text.lower() == "server":
        return None
    match = re.fullmatch(r"(\d+)\s*(kB|MB|GB|TB)", text, flags=re.IGNORECASE)
    kb = int(match.group(1)) * SIZE_UNITS_KB[match.group(2).lower()] if match else 0
    if not 1024 <= kb <= MAX_MAINTENANCE_KB:
        raise UsageError(f"maintenance_work_mem={text!r} is not a size from 1MB to 2TB",
                         "pass e.g. ?maintenance_work_mem=2GB, or =server to keep the "
                         "server's setting")
    return kb


def _log_notice(diag) -> None:
    log.info("PostgreSQL: %s", diag.message_primary)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _raise_if_permanent(err, where: str, uri: CollectionURI) -> None:
    """Connection failures that retrying cannot fix (libpq's text: psycopg gives no sqlstate)."""
    text = str(err)
    if "authentication failed" in text or "no password supplied" in text:
        raise UsageError(f"PostgreSQL at {where} refused user '{uri.username or '(default)'}': "
                         "authentication failed",
                         "check the user and the password (in the URI, PGPASSWORD or ~/.pgpass)")
    if any(sign in text for sign in TLS_FAILURES):
        raise UsageError(f"TLS connection to PostgreSQL at {where} failed: {_first_line(err)}",
                         "check ?sslmode= and ?sslrootcert= (the CA that signed the server's "
                         "certificate); verify-full also needs the host to match the certificate")
    bad_value = re.search(r'invalid (\w+) value: "[^"]*"', text)  # e.g. ?sslmode=bogus
    if bad_value:
        raise UsageError(f"cannot connect to {where}: {bad_value.group(0)}",
                         f"fix or remove ?{bad_value.group(1)}= in the URI")
    match = re.search(r'database "([^"]+)" does not exist', text)
    if match:
        raise NotFoundError(f"database '{match.group(1)}' does not exist at {where}",
                            "check the database name in the URI path")


def _register_types(conn) -> None:
    """pgvector's loaders/dumpers (only where the extension exists), and json read as str."""
    from psycopg.types.string import TextBinaryLoader, TextLoader
    conn.adapters.register_loader("json", TextLoader)
    conn.adapters.register_loader("json", TextBinaryLoader)
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                       "ON n.oid = e.extnamespace WHERE e.extname = 'vector'").fetchone()
    if row is None:
        return
    from pgvector.psycopg.halfvec import register_halfvec_info
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo
    # schema-qualified: the extension may live outside the search_path (e.g. 'extensions')
    nsp = sql.Identifier(row[0]).as_string(conn)
    vector = TypeInfo.fetch(conn, f"{nsp}.vector")
    register_vector_info(conn, vector)
    halfvec = TypeInfo.fetch(conn, f"{nsp}.halfvec")
    if halfvec is not None:
        register_halfvec_info(conn, halfvec)
    # our binary adapters on top (the by-oid ones that results and COPY set_types use):
    # arrays straight from/to the wire format, no pgvector object per row
    for info, dtype in ((vector, ">f4"), (halfvec, ">f2")):
        if info is not None:
            conn.adapters.register_loader(info.oid, type("", (_WireLoader,), {"dtype": dtype}))
            conn.adapters.register_dumper(
                _Wire, type("", (_WireDumper,), {"oid": info.oid, "dtype": dtype}))


class _Wire(bytes):
    """One vector already in pgvector's binary format (see _encode)."""


def _encode(vectors: np.ndarray, dtype: str) -> list:
    """pgvector's binary format for each row: int16 dim, int16 unused, big-endian floats.
    One numpy conversion for the whole batch instead of one object per row."""
    n, dim = vectors.shape
    header = np.zeros((n, 2), ">u2")
    header[:, 0] = dim
    wire = np.concatenate([header.view(np.uint8).reshape(n, 4),
                           vectors.astype(dtype).view(np.uint8).reshape(n, -1)], axis=1)
    return [_Wire(row) for row in map(bytes, wire)]


class _WireLoader(Loader):
    """A vector / halfvec value as a big-endian numpy row (cast once per batch)."""
    format = Format.BINARY
    dtype = ">f4"

    def load(self, data):
        return np.frombuffer(bytes(data), self.dtype, offset=4)


class _WireDumper(Dumper):
    format = Format.BINARY
    dtype = ">f4"

    def dump(self, obj):
        if not isinstance(obj, _Wire):
            obj = _encode(np.asarray(obj, np.float32).reshape(1, -1), self.dtype)[0]
        return obj


def _vector_column_fix(vectors: list[str]) -> str:
    if vectors:
        return ("pass ?column=<vector column> in the URI (vector columns here: "
                f"{', '.join(vectors)})")
    return "this table has no vector or halfvec column: point ?table= at the table with the vectors"


def _id_kind(typname: str) -> str:
    if typname in INT_TYPES:
        return "int"
    return "uuid" if typname == "uuid" else "str"


INT_RANGES = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
NUMBERS = (int, float, Decimal, np.integer, np.floating)
BOOLS = (bool, np.bool_)


def _short(value, limit: int = 60) -> str:
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _misfit(typname: str):
    """A check that a payload value would be stored *wrongly* by the binary COPY into a
    column of this type (True as 1 in an integer column, a str as the array of its
    characters, False as an empty array ...), or None. Values the column cannot take
    at all (a str in an integer column, a NUL in text) make psycopg or the server
    refuse the COPY, which rolls the batch back."""
    if typname in INT_TYPES or typname in ("float4", "float8", "numeric"):
        return lambda v: isinstance(v, BOOLS) or not isinstance(v, NUMBERS) or (
            typname in INT_TYPES and not isinstance(v, (int, np.integer)))
    if typname == "bool":
        return lambda v: not isinstance(v, BOOLS)
    if typname in TEXT_TYPES:
        return lambda v: not isinstance(v, str)
    if typname.startswith("_"):  # an array
        return lambda v: not isinstance(v, (list, tuple))
    return None


def _fine(typname: str) -> tuple:
    """The Python types that always fit a column of this type (the fast path of the checks)."""
    if typname in INT_TYPES:
        return (int,)
    if typname in ("float4", "float8", "numeric"):
        return (float, int)
    if typname == "bool":
        return (bool,)
    if typname in TEXT_TYPES:
        return (str,)
    return (list,) if typname.startswith("_") else ()


def _check_values(lay: "Layout", batch: Batch, payload_cols: list) -> None:
    """Ids and payload values that fit their columns, checked before anything is sent."""
    bound = INT_RANGES.get(lay.id.typname)
    for k, i in enumerate(batch.ids):
        if not (type(i) is int and bound and -bound <= i < bound):  # noqa: E721 - fast path
            _write_id(i, lay, k)
    for col in payload_cols:
        misfit, fine = _misfit(col.typname), _fine(col.typname)
        if misfit is None:
            continue
        for k, payload in enumerate(batch.payloads):
            value = payload.get(col.name)
            if value is not None and type(value) not in fine and misfit(value):
                raise DataError(f"payload field '{col.name}' of point #{k} = {_short(value)} "
                                f"does not fit column type {col.type}",
                                "convert that field to the column's type, or drop it")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False


def _write_id(value, lay: "Layout", k: int) -> None:
    """An id the key column stores as that very id: no bool, float or None in an integer
    key (int() would turn 1.5 into 1), no NUL in a text key."""
    typname = lay.id.typname
    if typname in INT_TYPES:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,19}", value):
            value = int(value)  # "42" from an engine whose ids are strings
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, BOOLS) and \
            -INT_RANGES[typname] <= int(value) < INT_RANGES[typname]
    elif typname == "uuid":
        ok = isinstance(value, uuid.UUID) or isinstance(value, str) and _is_uuid(value)
    elif typname in TEXT_TYPES:
        ok = isinstance(value, (str, int, np.integer, uuid.UUID)) and \
            not isinstance(value, BOOLS) and "\x00" not in str(value)
    else:
        ok = value is not None
    if not ok:
        raise DataError(f"id {_short(value)} of point #{k} cannot be a key of column "
                        f"'{lay.id.name}' ({lay.id.type})",
                        f"map the ids to {lay.id.type} values before writing")


def _id_in(value, typname: str):
    """An id (or cursor) as the Python value the id column's dumper takes."""
    if typname in INT_TYPES:
        return int(value)
    if typname == "uuid":
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    return value if typname not in TEXT_TYPES else str(value)


def _part_bounds(part, typname: str) -> tuple:
    return tuple(None if bound is None else _id_in(bound, typname)
                 for bound in id_range_bounds(part, "PostgreSQL"))


def _id_out(value):
    """An id as it leaves the connector: int or str (uuid as its canonical string), so
    a cursor is plain JSON."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _target_vector_type(src: Layout, dim: int, indexes: list[dict]) -> str:
    """vector, or halfvec above pgvector's 2,000-dimension index limit for vector."""
    if dim < 1:
        raise DataError(f"dimension {dim} must be at least 1", "pass the target model's dimension")
    if not any(i.get("ops") for i in indexes):
        return src.vtype  # no index to build: any dimension the type takes
    if dim > MAX_INDEXED_DIMS["halfvec"]:
        raise DataError(f"dimension {dim} is above pgvector's index limit of "
                        f"{MAX_INDEXED_DIMS['halfvec']} (halfvec)",
                        "pick a target model of at most 4000 dimensions, or drop the vector index "
                        "on the source first")
    if src.vtype == "vector" and dim > MAX_INDEXED_DIMS["vector"]:
        return "halfvec"
    return src.vtype


def _vector_type_sql(col: Column, vtype: str, dim: int):
    return sql.SQL("{}({})").format(sql.Identifier(col.type_schema, vtype), sql.Literal(int(dim)))


def _index_sql(lay: Layout, index: dict, target):
    """CREATE INDEX for a vector index spec, re-typed for the target's vector type."""
    if index["method"] not in ("hnsw", "ivfflat") or not re.fullmatch(r"\w+", index["ops"]):
        raise UsageError(f"cannot rebuild a {index['method']} vector index",
                         "create it on the target by hand after the migration")
    options = sql.SQL("")
    if index.get("options"):
        options = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(str(v)))
            for k, v in index["options"].items()))
    opclass = sql.Identifier(lay.vector.type_schema, f"{lay.vtype}_{index['ops']}_ops")
    return sql.SQL("CREATE INDEX ON {t} USING {m} ({c} {ops}){opts}").format(
        t=target, m=sql.Identifier(index["method"]), c=sql.Identifier(lay.vector.name),
        ops=opclass, opts=options)


def _retired_name(live: str, now: datetime) -> str:
    """``<live>__pre_<yyyymmddHHMMSS>``, the live part cut to fit 63 bytes."""
    suffix = f"__pre_{now:%Y%m%d%H%M%S}"
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode())
    head = live.encode()[:room].decode("utf-8", errors="ignore")
    return head + suffix
