"""PostgreSQL specifics the conformance suite cannot express (tests/test_connectors.py
runs that suite on both Postgres harnesses)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from urllib.parse import quote

import numpy as np
import pytest
from conftest import make_points

from embedmigrate.connectors import Batch, open_collection
from embedmigrate.errors import ConflictError, DataError, NotFoundError, UsageError


@pytest.fixture
def pg(postgres_socket_harness):
    return postgres_socket_harness


def sql(pg, query, params=None):
    with pg.connect() as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None


def copy_table(pg, src_name, dst_name, dim, batch_size=500):
    src = open_collection(pg.uri(src_name))
    dst = open_collection(pg.uri(dst_name))
    dst.create_like(src.describe(), dim=dim)
    for batch, _ in src.scan(batch_size):
        if dim != batch.vectors.shape[1]:
            rng = np.random.default_rng(len(batch))
            batch = batch.replace_vectors(rng.normal(size=(len(batch), dim)).astype(np.float32))
        dst.write(batch)
    dst.finish_write()
    return dst


def test_missing_column_and_missing_id_column(pg, fresh_name):
    name = fresh_name("cols")
    pg.populate(name, *make_points(20, 8))
    with pytest.raises(NotFoundError, match="no column 'vec'") as e:
        open_collection(pg.uri(name) + "&column=vec").describe()
    assert "embedding" in e.value.fix  # names the vector columns that do exist
    with pytest.raises(NotFoundError, match="no column 'doc_id'") as e:
        open_collection(pg.uri(name) + "&id=doc_id").describe()
    assert "?id=" in e.value.fix


def test_column_that_is_not_a_vector(pg, fresh_name):
    name = fresh_name("notvec")
    pg.populate(name, *make_points(20, 8))
    with pytest.raises(UsageError) as e:
        open_collection(pg.uri(name) + "&column=title").describe()
    assert "column 'title'" in str(e.value) and "is type text, not vector" in str(e.value)
    assert "?column=" in e.value.fix and "embedding" in e.value.fix


def test_id_column_must_be_unique(pg, fresh_name):
    name = fresh_name("nokey")
    pg.populate(name, *make_points(20, 8))
    with pytest.raises(UsageError, match="not a primary key or unique"):
        open_collection(pg.uri(name) + "&id=n").describe()


def test_halfvec_above_2000_dims_and_refusal_above_4000(pg, fresh_name):
    src_name, dst_name = fresh_name("small"), fresh_name("wide")
    ids, vectors, payloads = make_points(30, 8)
    pg.populate(src_name, ids, vectors, payloads, metric="l2")
    src = open_collection(pg.uri(src_name))
    info = src.describe()
    dst = open_collection(pg.uri(dst_name))
    dst.create_like(info, dim=2048)
    assert sql(pg, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                   "WHERE attrelid = %s::regclass AND attname = 'embedding'",
               (dst_name,)) == [("halfvec(2048)",)]
    wide = np.random.default_rng(0).normal(size=(30, 2048)).astype(np.float32)
    dst.write(Batch(ids, wide, payloads))
    dst.finish_write()
    got = dst.describe()
    assert (got.dim, got.metric, got.settings["vector_type"]) == (2048, "l2", "halfvec")
    assert "halfvec_l2_ops" in " ".join(got.settings["indexes"])
    back = dst.fetch(ids[:5])
    assert back.vectors.dtype == np.float32
    np.testing.assert_allclose(back.vectors, wide[:5], rtol=1e-3, atol=1e-3)  # float16 storage
    with pytest.raises(DataError, match="4000"):
        open_collection(pg.uri(fresh_name("huge"))).create_like(info, dim=4001)


def test_uuid_primary_key_scan_resume_and_copy(pg, fresh_name):
    _, vectors, payloads = make_points(700, 8, seed=11)
    ids = [str(uuid.UUID(int=int(i) * 7919 + 1)) for i in range(700)]
    src_name = fresh_name("uuid")
    pg.populate(src_name, ids, vectors, payloads, id_type="uuid")
    src = open_collection(pg.uri(src_name))
    assert src.describe().id_type == "uuid"
    scanned = src.scan(250)
    first, cursor = next(scanned)
    assert isinstance(cursor, str) and uuid.UUID(cursor)
    rest = [i for b, _ in open_collection(pg.uri(src_name)).scan(250, after=json.loads(
        json.dumps(cursor))) for i in b.ids]
    assert sorted(first.ids + rest) == sorted(ids)
    dst = copy_table(pg, src_name, fresh_name("uuid_copy"), 8)
    back = dst.fetch([ids[5], ids[3], "00000000-0000-0000-0000-00000000ffff"])
    assert back.ids == [ids[5], ids[3]]
    np.testing.assert_array_equal(back.vectors, vectors[[5, 3]])
    assert back.payloads == [payloads[5], payloads[3]]


def test_index_build_raises_maintenance_work_mem_unless_told_to_keep_the_servers(
        pg, fresh_name, caplog):
    """pgvector says when its HNSW graph outgrows maintenance_work_mem: with the session
    at 1MB (set through libpq's options), the default build raises it and the graph fits;
    ?maintenance_work_mem=server keeps 1MB and the graph spills."""
    src_name = fresh_name("mwm")
    pg.populate(src_name, *make_points(5000, 64, seed=14))
    small_session = "&options=" + quote("-c maintenance_work_mem=1MB", safe="")
    spilled = {}
    for setting in ("", "&maintenance_work_mem=server", "&maintenance_work_mem=256MB"):
        caplog.clear()
        with caplog.at_level("INFO", logger="embedmigrate.connectors.postgres"):
            src = open_collection(pg.uri(src_name))
            dst = open_collection(pg.uri(fresh_name("mwm_copy")) + small_session + setting)
            dst.create_like(src.describe(), dim=64)
            for batch, _ in src.scan(1000):
                dst.write(batch)
            dst.finish_write()
        spilled[setting] = any("no longer fits into maintenance_work_mem" in r.getMessage()
                               for r in caplog.records)
        assert any("hnsw" in i for i in dst.describe().settings["indexes"])
        # SET LOCAL: the build's own session is back at 1MB afterwards
        assert dst.conn.execute("SHOW maintenance_work_mem").fetchone()[0] == "1MB"
    assert spilled == {"": False, "&maintenance_work_mem=server": True,
                       "&maintenance_work_mem=256MB": False}
    for bad in ("lots", "12", "0MB", "5PB"):
        with pytest.raises(UsageError, match="maintenance_work_mem") as e:
            open_collection(pg.uri(src_name) + f"&maintenance_work_mem={bad}")
        assert "=server" in e.value.fix


def test_text_primary_key(pg, fresh_name):
    ids, vectors, payloads = make_points(300, 8, seed=12, int_ids=False)
    src_name = fresh_name("textkey")
    pg.populate(src_name, ids, vectors, payloads)
    src = open_collection(pg.uri(src_name))
    assert src.describe().id_type == "str"
    dst = copy_table(pg, src_name, fresh_name("textkey_copy"), 8, batch_size=64)
    assert dst.count() == 300
    assert sorted(i for b, _ in dst.scan(100) for i in b.ids) == sorted(ids)


def test_vector_index_is_built_after_the_load_with_the_source_opclass_and_params(pg, fresh_name):
    src_name, dst_name = fresh_name("ipsrc"), fresh_name("ipdst")
    pg.populate(src_name, *make_points(400, 16, seed=13), index=False)
    sql(pg, f'CREATE INDEX ON "{src_name}" USING hnsw (embedding vector_ip_ops) '
            "WITH (m = 8, ef_construction = 40)")
    sql(pg, f'CREATE INDEX ON "{src_name}" (title)')
    src = open_collection(pg.uri(src_name))
    info = src.describe()
    assert info.metric == "dot"
    assert info.settings["vector_indexes"][0]["options"] == {"m": "8", "ef_construction": "40"}

    dst = open_collection(pg.uri(dst_name))
    dst.create_like(info, dim=24)

    def index_defs():
        return [d for (d,) in sql(pg, "SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                  (dst_name,))]
    # before the load: the primary key and the payload index, no vector index yet
    assert len(index_defs()) == 2 and not any("hnsw" in d for d in index_defs())
    assert any("(title)" in d for d in index_defs())
    assert dst.describe().metric == "dot"  # known from the pending index already
    rng = np.random.default_rng(0)
    for batch, _ in src.scan(150):
        dst.write(batch.replace_vectors(rng.normal(size=(len(batch), 24)).astype(np.float32)))
    dst.finish_write()
    hnsw = [d for d in index_defs() if "hnsw" in d]
    assert len(hnsw) == 1
    assert "vector_ip_ops" in hnsw[0] and "m='8'" in hnsw[0] and "ef_construction='40'" in hnsw[0]
    with pg.connect() as conn:  # and the planner uses it for an inner-product query
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            f'EXPLAIN SELECT id FROM "{dst_name}" ORDER BY embedding <#> %s::vector LIMIT 5',
            (str([0.1] * 24),)).fetchall())
    assert "Index Scan using" in plan and "embedding_idx" in plan, plan
    assert json.loads(json.dumps(dst.describe().to_dict()))["settings"]["pending_index_build"] \
        is False


def test_cutover_swaps_in_one_transaction_and_keeps_the_retired_table(pg, fresh_name):
    live, nxt = fresh_name("app"), fresh_name("app_next")
    ids, vectors, payloads = make_points(500, 8, seed=14)
    pg.populate(live, ids, vectors, payloads)
    dst = copy_table(pg, live, nxt, 12)

    errors, reads, stop = [], [], threading.Event()

    def reader():  # an application querying the live name throughout the swap
        with pg.connect() as conn:
            while not stop.is_set():
                try:
                    reads.append(conn.execute(
                        f'SELECT vector_dims(embedding) FROM "{live}" LIMIT 1').fetchone()[0])
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    errors.append(repr(e))

    def wait_for_reads(n):
        deadline = time.monotonic() + 10
        while len(reads) < n and time.monotonic() < deadline:
            time.sleep(0.001)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wait_for_reads(20)
        record = dst.cutover(live)
        wait_for_reads(len(reads) + 20)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert reads[0] == 8 and reads[-1] == 12  # old table, then the new one, nothing between
    assert set(reads) == {8, 12}
    retired = record["retired"]
    assert retired.startswith(live + "__pre_") and len(retired.encode()) <= 63
    assert open_collection(pg.uri(retired)).describe().dim == 8
    assert open_collection(pg.uri(retired)).count() == 500
    open_collection(pg.uri(nxt)).rollback(record)
    assert open_collection(pg.uri(live)).describe().dim == 8
    assert open_collection(pg.uri(nxt)).describe().dim == 12
    assert not open_collection(pg.uri(retired)).exists()


def test_bigserial_sequence_follows_the_live_table(pg, fresh_name):
    live, nxt = fresh_name("serial"), fresh_name("serial_next")
    sql(pg, f'CREATE TABLE "{live}" (id bigserial PRIMARY KEY, embedding vector(3), title text)')
    sql(pg, f"INSERT INTO \"{live}\" (embedding, title) SELECT '[1,2,3]', 't' || g "
            "FROM generate_series(1, 40) g")
    dst = copy_table(pg, live, nxt, 3)
    record = dst.cutover(live)
    owner = (f"SELECT pg_get_serial_sequence('\"{live}\"', 'id') IS NOT NULL, "
             f"pg_get_serial_sequence('\"{record['retired']}\"', 'id') IS NOT NULL")
    assert sql(pg, owner) == [(True, False)]
    sql(pg, f'INSERT INTO "{live}" (embedding) VALUES (\'[0,0,1]\')')  # the app keeps inserting
    assert sql(pg, f'SELECT max(id) FROM "{live}"') == [(41,)]
    open_collection(pg.uri(nxt)).rollback(record)
    assert sql(pg, owner.replace(record["retired"], nxt)) == [(True, False)]
    open_collection(pg.uri(nxt)).drop()  # the migrated table goes; the live id default stays
    sql(pg, f'INSERT INTO "{live}" (embedding) VALUES (\'[0,1,0]\')')
    assert sql(pg, f'SELECT max(id) FROM "{live}"') == [(42,)]


def test_retired_name_fits_63_bytes():
    from datetime import datetime

    from embedmigrate.connectors.postgres import _retired_name
    name = _retired_name("é" * 40, datetime(2026, 1, 2, 3, 4, 5))
    assert name.endswith("__pre_20260102030405") and len(name.encode()) <= 63


def test_cutover_refuses_when_a_view_reads_the_live_table(pg, fresh_name):
    live, nxt = fresh_name("viewed"), fresh_name("viewed_next")
    pg.populate(live, *make_points(50, 8, seed=15))
    dst = copy_table(pg, live, nxt, 8)
    sql(pg, f'CREATE VIEW "{live}_v" AS SELECT id, title FROM "{live}"')
    with pytest.raises(ConflictError, match="views"):
        dst.cutover(live)
    assert open_collection(pg.uri(nxt)).exists()  # nothing renamed


def test_injection_looking_names_are_quoted(pg, fresh_name):
    victim = fresh_name("victim")
    pg.populate(victim, *make_points(10, 8))
    evil_src = f'x"; DROP TABLE "{victim}"; --'
    evil_dst = f"y'); DROP TABLE {victim}; --"
    pg.populate(evil_src, *make_points(60, 8, seed=16))
    src = open_collection(pg.uri(evil_src))
    assert src.describe().count == 60
    assert len(src.sample(10, seed=1)) == 10
    dst = copy_table(pg, evil_src, evil_dst, 8)
    assert dst.count() == 60
    record = dst.cutover(evil_src)
    open_collection(pg.uri(evil_dst)).rollback(record)
    with pytest.raises(NotFoundError):  # a hostile column name is just a missing column
        open_collection(pg.uri(evil_src) + "&column=" + quote('embedding"; DROP TABLE x; --')
                        ).describe()
    assert sql(pg, "SELECT count(*) FROM pg_tables WHERE tablename = %s", (victim,)) == [(1,)]
    assert open_collection(pg.uri(victim)).count() == 10


def test_payload_types_round_trip_byte_identical(pg, fresh_name):
    src_name, dst_name = fresh_name("typed"), fresh_name("typed_copy")
    sql(pg, f'''CREATE TABLE "{src_name}" (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        embedding vector(4), meta jsonb, raw json, at timestamptz, price numeric(12, 4),
        labels text[], ref uuid, flag boolean, blob bytea, body varchar(40),
        n_twice bigint GENERATED ALWAYS AS (id * 2) STORED)''')
    sql(pg, f'''INSERT INTO "{src_name}" (embedding, meta, raw, at, price, labels, ref, flag, blob,
                                          body)
        SELECT ('[' || g || ', 0.5, -1.25, 3e-8]')::vector,
               jsonb_build_object('k', g, 'nested', jsonb_build_object('a', ARRAY[1, 2]),
                                  'u', 'ünï', 'nul', NULL),
               ('{{ "spaced" :  ' || g || ' , "dup": 1, "dup": 2 }}')::json,
               timestamptz '2024-02-29 12:34:56.789012+00' + g * interval '1 day',
               g / 3.0, ARRAY['x', NULL, 'z'], gen_random_uuid(), g % 2 = 0,
               '\\x00ff'::bytea, CASE WHEN g % 5 = 0 THEN NULL ELSE 'row ' || g END
        FROM generate_series(1, 120) g''')
    src = open_collection(pg.uri(src_name))
    assert set(src.describe().text_fields) == {"body"}
    first = next(src.scan(10))[0].payloads[0]
    assert first["meta"]["nested"] == {"a": [1, 2]} and isinstance(first["raw"], str)
    dst = copy_table(pg, src_name, dst_name, 4, batch_size=50)
    columns = "id, embedding, meta, raw, at, price, labels, ref, flag, blob, body, n_twice"
    as_text = "SELECT " + ", ".join(c + "::text" for c in columns.split(", ")) + \
        " FROM {} ORDER BY id"
    assert sql(pg, as_text.format(f'"{src_name}"')) == sql(pg, as_text.format(f'"{dst_name}"'))
    # the identity sequence continues after the copied ids
    sql(pg, f'INSERT INTO "{dst_name}" (embedding) VALUES (\'[1,1,1,1]\')')
    assert sql(pg, f'SELECT max(id) FROM "{dst_name}"') == [(121,)]
    assert dst.count() == 121


def test_write_rejects_unknown_payload_fields_and_null_vectors(pg, fresh_name):
    src_name, dst_name = fresh_name("nulls"), fresh_name("nulls_copy")
    ids, vectors, payloads = make_points(30, 8, seed=17)
    pg.populate(src_name, ids, vectors, payloads)
    src = open_collection(pg.uri(src_name))
    dst = open_collection(pg.uri(dst_name))
    dst.create_like(src.describe(), dim=8)
    with pytest.raises(DataError, match="payload field 'colour' has no column"):
        dst.write(Batch(ids[:3], vectors[:3], [{**p, "colour": "red"} for p in payloads[:3]]))
    assert dst.count() == 0
    sql(pg, f'UPDATE "{src_name}" SET embedding = NULL WHERE id = 7')
    assert open_collection(pg.uri(src_name)).describe().settings["null_vectors"] == 1
    with pytest.raises(DataError, match="NULL embedding"):
        list(open_collection(pg.uri(src_name)).scan(100))


def test_wrong_password_is_refused_at_once_without_leaking_it(postgres_tcp_harness, fresh_name):
    pg = postgres_tcp_harness
    name = fresh_name("auth")
    pg.populate(name, *make_points(5, 4))
    bad = pg.uri(name).replace(":pw-for-tests@", ":secret@")
    with pytest.raises(UsageError, match="authentication failed") as e:
        open_collection(bad).describe()
    assert "secret" not in str(e.value) and "PGPASSWORD" in e.value.fix
    no_password = pg.uri(name).replace(":pw-for-tests@", "@")
    with pytest.MonkeyPatch.context() as mp:  # libpq takes PGPASSWORD when the URI has none
        mp.setenv("PGPASSWORD", "pw-for-tests")
        assert open_collection(no_password).count() == 5


def _docker_available() -> bool:
    try:
        import docker
        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001 - no client, no socket, no daemon: all mean "skip"
        return False


@pytest.mark.docker
@pytest.mark.skipif(not _docker_available(), reason="no Docker daemon: pgvector/pgvector "
                                                    "container test needs one")
def test_round_trip_on_a_pgvector_container(fresh_name):
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("pgvector/pgvector:pg17", driver=None) as container:
        base = container.get_connection_url(driver=None)
        import psycopg
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("CREATE TABLE docs (id bigint PRIMARY KEY, embedding vector(3), "
                         "title text)")
            conn.execute("INSERT INTO docs SELECT g, array[g, 1, 0]::vector, 't' || g "
                         "FROM generate_series(1, 50) g")
            conn.execute("CREATE INDEX ON docs USING hnsw (embedding vector_l2_ops)")
        src = open_collection(base + "?table=docs")
        info = src.describe()
        assert (info.count, info.dim, info.metric) == (50, 3, "l2")
        dst = open_collection(base + "?table=docs_next")
        dst.create_like(info, dim=3)
        for batch, _ in src.scan(20):
            dst.write(batch)
        dst.finish_write()
        record = dst.cutover("docs")
        assert open_collection(base + "?table=docs").count() == 50
        open_collection(base + "?table=docs_next").rollback(record)
