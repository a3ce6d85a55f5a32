"""Chroma-specific behaviour the conformance suite cannot express."""

from __future__ import annotations

import json
import time

import chromadb
import numpy as np
import pytest
from conftest import make_points
from harness_chroma import ChromaServer

from embedmigrate.connectors import Batch, open_collection
from embedmigrate.connectors.chroma import URI_KEY
from embedmigrate.errors import ConflictError, DataError, NotFoundError, UnavailableError, UsageError


@pytest.fixture(params=["chroma_embedded_harness", "chroma_server_harness"])
def chroma(request):
    return request.getfixturevalue(request.param)


def all_records(harness, name):
    got = harness.client().get_collection(name, embedding_function=None).get(
        include=["embeddings", "metadatas", "documents", "uris"])
    order = np.argsort(got["ids"])
    return {k: [got[k][i] for i in order] for k in ("ids", "metadatas", "documents", "uris")}, \
        np.asarray(got["embeddings"])[order]


def test_documents_metadata_none_and_uris_round_trip(chroma, fresh_name):
    ids, vectors, payloads = make_points(60, 8, seed=10, int_ids=False)
    payloads = [None if i % 4 == 0 else p for i, p in enumerate(payloads)]  # Chroma allows None
    documents = [None if i % 5 == 0 else f"document {i}" for i in range(60)]
    src_name, dst_name = fresh_name("docs"), fresh_name("docs_dst")
    col = chroma.populate(src_name, ids, vectors, [p or None for p in payloads], documents=documents)
    col.update(ids=[ids[1], ids[2]], uris=["s3://bucket/one.png", "s3://bucket/two.png"])

    src = open_collection(chroma.uri(src_name))
    info = src.describe()
    assert info.id_type == "str" and info.text_fields[0] == "document"
    assert {"title", "text"} <= set(info.text_fields) and URI_KEY in info.payload_fields
    batches = [b for b, _ in src.scan(25)]
    by_id = {i: (b.payloads[k], b.documents[k] if b.documents else None)
             for b in batches for k, i in enumerate(b.ids)}
    assert all(isinstance(i, str) for i in by_id)
    assert by_id[ids[0]] == ({}, None)  # metadata None reads as {}, no document
    assert by_id[ids[1]][0][URI_KEY] == "s3://bucket/one.png" and by_id[ids[1]][1] == "document 1"
    assert by_id[ids[3]] == (payloads[3], "document 3")

    dst = open_collection(chroma.uri(dst_name))
    dst.create_like(info, dim=8)
    for batch in batches:
        dst.write(batch)
    want, want_vecs = all_records(chroma, src_name)
    got, got_vecs = all_records(chroma, dst_name)
    assert got == want  # documents, None metadata and uris all copied as Chroma holds them
    np.testing.assert_allclose(got_vecs, want_vecs, atol=1e-6)  # cosine: Chroma renormalises


def test_vectors_come_back_float32_and_exact(chroma, fresh_name):
    ids, vectors, payloads = make_points(300, 12, seed=11, normalise=False)
    name = fresh_name("f32")
    chroma.populate(name, ids, vectors, payloads, metric="l2")
    conn = open_collection(chroma.uri(name))
    batch = next(conn.scan(1000))[0]
    assert batch.vectors.dtype == np.float32
    order = [int(i) - 1 for i in batch.ids]
    np.testing.assert_array_equal(batch.vectors, vectors[order])  # float32 -> float64 -> float32 is exact
    sample = conn.sample(50, seed=1)
    assert sample.vectors.dtype == np.float32
    np.testing.assert_array_equal(sample.vectors, vectors[[int(i) - 1 for i in sample.ids]])


@pytest.mark.parametrize("metric,space", [("l2", "l2"), ("dot", "ip"), ("cosine", "cosine")])
def test_metric_and_hnsw_settings_survive_create_like(chroma_embedded_harness, fresh_name, metric, space):
    h = chroma_embedded_harness
    src_name, dst_name = fresh_name("metric"), fresh_name("metric_dst")
    h.client().create_collection(src_name, embedding_function=None, metadata={"owner": "search-team"},
                                 configuration={"hnsw": {"space": space, "max_neighbors": 32,
                                                         "ef_construction": 64, "ef_search": 40}})
    info = open_collection(h.uri(src_name)).describe()
    assert info.metric == metric
    open_collection(h.uri(dst_name)).create_like(info, dim=24)
    target = h.client().get_collection(dst_name, embedding_function=None)
    hnsw = target.configuration_json["hnsw"]
    assert (hnsw["space"], hnsw["max_neighbors"], hnsw["ef_construction"], hnsw["ef_search"]) == \
        (space, 32, 64, 40)
    assert target.metadata == {"owner": "search-team"}
    assert open_collection(h.uri(dst_name)).describe().metric == metric


def test_legacy_hnsw_metadata_metric_is_read(chroma_embedded_harness, fresh_name):
    h = chroma_embedded_harness
    name = fresh_name("legacy")
    h.client().create_collection(name, embedding_function=None, metadata={"hnsw:space": "ip"})
    assert open_collection(h.uri(name)).describe().metric == "dot"


def _cutover_setup(h, fresh_name):
    live, nxt = fresh_name("live"), fresh_name("next")
    ids, vectors, payloads = make_points(40, 8, seed=12)
    h.populate(live, ids, vectors, payloads)
    dst = open_collection(h.uri(nxt))
    dst.create_like(open_collection(h.uri(live)).describe(), dim=4)
    dst.write(Batch(ids, np.ones((40, 4), np.float32), payloads))
    return live, nxt, dst


def dims(h):
    """collection name -> dimension of its vectors, for every collection in the store."""
    out = {}
    for c in h.client().list_collections():
        got = h.client().get_collection(c.name, embedding_function=None).get(limit=1, include=["embeddings"])
        out[c.name] = len(got["embeddings"][0]) if got["ids"] else 0
    return out


def test_cutover_renames_and_rollback_is_idempotent(chroma, fresh_name):
    live, nxt, dst = _cutover_setup(chroma, fresh_name)
    record = json.loads(json.dumps(dst.cutover(live)))
    now = dims(chroma)
    assert now[live] == 4 and nxt not in now and now[record["retired_name"]] == 8
    assert record["retired_name"].startswith(f"{live}__pre_")
    assert dst.name == live  # the connector follows its collection
    for _ in range(2):  # a rollback that is repeated (e.g. after a crash) changes nothing more
        open_collection(chroma.uri(nxt)).rollback(record)
        now = dims(chroma)
        assert now[live] == 8 and now[nxt] == 4 and record["retired_name"] not in now


def test_half_done_cutover_is_recovered_by_rollback(chroma_embedded_harness, fresh_name):
    h = chroma_embedded_harness
    live, nxt, dst = _cutover_setup(h, fresh_name)
    record = dst.plan_cutover(live)  # persisted before acting ...
    old = h.client().get_collection(live, embedding_function=None)
    old.modify(name=record["retired_name"])  # ... then the process died after the first rename
    assert live not in dims(h)
    open_collection(h.uri(nxt)).rollback(record)
    now = dims(h)
    assert now[live] == 8 and now[nxt] == 4 and record["retired_name"] not in now


def test_rollback_without_ids_finds_the_retired_collection(chroma_embedded_harness, fresh_name):
    # the process died between the renames before it could store the record: the
    # plan still knows the live and new names, which is all rollback needs
    h = chroma_embedded_harness
    live, nxt, dst = _cutover_setup(h, fresh_name)
    retired = dst.plan_cutover(live)["retired_name"]
    h.client().get_collection(live, embedding_function=None).modify(name=retired)
    open_collection(h.uri(nxt)).rollback({"live_name": live, "new_name": nxt})
    now = dims(h)
    assert now[live] == 8 and now[nxt] == 4
    # the same minimal record after a complete cutover
    record = open_collection(h.uri(nxt)).cutover(live)
    open_collection(h.uri(nxt)).rollback({"live_name": live, "new_name": nxt})
    now = dims(h)
    assert now[live] == 8 and now[nxt] == 4 and record["retired_name"] not in now


def test_cutover_without_a_live_collection(chroma_embedded_harness, fresh_name):
    h = chroma_embedded_harness
    _, nxt, dst = _cutover_setup(h, fresh_name)
    live = fresh_name("brand_new")
    record = dst.cutover(live)
    assert record["old_id"] is None and dims(h)[live] == 4
    open_collection(h.uri(nxt)).rollback(record)
    now = dims(h)
    assert live not in now and now[nxt] == 4


@pytest.mark.parametrize("dim", [8, 768])  # 768-d: each batch of 100 takes 2 requests to a server
def test_scan_survives_deletes_before_the_cursor(chroma, fresh_name, dim):
    ids, vectors, payloads = make_points(1000, dim, seed=13)
    name = fresh_name("del")
    col = chroma.populate(name, ids, vectors, payloads)
    conn = open_collection(chroma.uri(name))
    seen, cursor = [], None
    for i, (batch, cursor) in enumerate(conn.scan(100)):
        seen += batch.ids
        if i == 2:
            break
    col.delete(ids=seen[10:30])  # 20 records before the cursor disappear
    for batch, _ in conn.scan(100, after=json.loads(json.dumps(cursor))):
        seen += batch.ids
    assert sorted(seen, key=int) == [str(i) for i in ids]  # nothing skipped, nothing twice
    col.delete(ids=[cursor["last_id"]])  # the anchor itself is gone: refuse, never skip silently
    with pytest.raises(ConflictError) as e:
        next(conn.scan(100, after=cursor))
    assert e.value.fix and "restart" in e.value.fix


def test_server_scan_reads_wide_vectors_in_small_requests(chroma_server_harness, fresh_name):
    """A server's JSON reply is decoded all at once, so a scan asks for at most 65,536
    numbers per request (85 rows of 768-d) and joins them into full batches."""
    ids, vectors, payloads = make_points(1000, 768, seed=21)
    name = fresh_name("wide")
    chroma_server_harness.populate(name, ids, vectors, payloads)
    conn = open_collection(chroma_server_harness.uri(name))
    sizes = []
    calls = []
    real_call = conn._call
    conn._call = lambda what, fn, *a, **kw: (
        calls.append(kw.get("limit") or len(kw.get("ids") or [])), real_call(what, fn, *a, **kw))[1]
    got, cursors = [], []
    for batch, cursor in conn.scan(300):
        sizes.append(len(batch))
        got.append(batch)
        cursors.append(cursor)
    assert sizes == [300, 300, 300, 100]
    assert max(limit for limit in calls if limit) <= 86 and len(calls) >= 12
    ids_seen = [i for b in got for i in b.ids]
    assert sorted(ids_seen, key=int) == [str(i) for i in ids]
    where = {str(i): k for k, i in enumerate(ids)}
    order = [where[i] for i in ids_seen]
    np.testing.assert_allclose(np.concatenate([b.vectors for b in got]), vectors[order], rtol=1e-6)
    got_payloads = [p for b in got for p in b.payloads]
    assert [{**p, "score": round(p["score"], 9)} for p in got_payloads] == \
        [{**payloads[i], "score": round(payloads[i]["score"], 9)} for i in order]
    rest = [i for b, _ in conn.scan(300, after=cursors[1]) for i in b.ids]  # resume mid-scan
    assert rest == ids_seen[600:]
    calls.clear()
    wanted = [str(i) for i in ids[::-3]]  # fetch keeps the order asked for, in small requests
    fetched = conn.fetch(wanted)
    assert fetched.ids == wanted and [c for c in calls if c] == [85] * 3 + [len(wanted) - 255]
    np.testing.assert_allclose(fetched.vectors, vectors[::-3], rtol=1e-6)


def test_payloads_chroma_cannot_store_are_refused_before_writing(chroma_embedded_harness, fresh_name):
    h = chroma_embedded_harness
    ids, vectors, payloads = make_points(20, 8, seed=14)
    src = fresh_name("bad")
    h.populate(src, ids, vectors, payloads)
    dst = open_collection(h.uri(fresh_name("bad_dst")))
    dst.create_like(open_collection(h.uri(src)).describe(), dim=8)
    bad = [dict(p) for p in payloads]
    bad[7]["tags"] = []  # e.g. from a Qdrant payload
    for payload in ({"tags": []}, {"nested": {"a": 1}}):
        bad[7] = payload
        with pytest.raises(DataError) as e:
            dst.write(Batch(ids, vectors, bad))
        assert "\n" not in str(e.value) and e.value.fix
    assert dst.count() == 0


def test_missing_store_folder_is_not_created(tmp_path):
    uri = f"chroma://{tmp_path}/nowhere/docs"
    conn = open_collection(uri)
    assert not conn.exists()
    with pytest.raises(NotFoundError) as e:
        conn.describe()
    assert "nowhere" in str(e.value) and e.value.fix
    assert not (tmp_path / "nowhere").exists()


def test_token_env_must_be_set(chroma_server_harness, monkeypatch):
    monkeypatch.delenv("EMBEDMIGRATE_TEST_TOKEN", raising=False)
    port = chroma_server_harness.server.port
    with pytest.raises(UsageError) as e:
        open_collection(f"chroma+http://127.0.0.1:{port}/docs?token_env=EMBEDMIGRATE_TEST_TOKEN").describe()
    assert "EMBEDMIGRATE_TEST_TOKEN" in str(e.value)


def test_server_restart(tmp_path, fresh_name):
    server = ChromaServer(tmp_path / "data").start()
    try:
        name = fresh_name("restart")
        ids, vectors, payloads = make_points(200, 8, seed=15)
        client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
        client.create_collection(name, embedding_function=None).add(
            ids=[str(i) for i in ids], embeddings=vectors, metadatas=payloads)
        uri = f"chroma+http://127.0.0.1:{server.port}/{name}?retries=1"
        before = open_collection(uri)
        assert before.count() == 200

        server.stop()
        start = time.monotonic()
        with pytest.raises(UnavailableError) as e:
            before.count()
        assert time.monotonic() - start < 10 and e.value.fix

        server.start()
        assert open_collection(uri).count() == 200  # a new connector works again
        assert before.count() == 200  # and so does the old one: it reconnects
        assert sum(len(b) for b, _ in before.scan(64)) == 200
    finally:
        server.stop()
