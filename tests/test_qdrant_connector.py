"""Qdrant-specific behaviour the conformance suite cannot express: named vectors,
UUID ids, aliases, payload indexes and HNSW settings, request splitting, the
on-disk store, a real server (testcontainers; skips without Docker), and Qdrant
Edge's live-name link cutover."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import test_connectors as conformance
from conftest import make_points
from harness_qdrant import closed_port
from qdrant_client import models

from embedmigrate.connectors import Batch, open_collection
from embedmigrate.connectors.base import CollectionInfo
from embedmigrate.connectors.qdrant import (REQUEST_HEADROOM, close_shared_client,
                                            creation_spec, request_chunks, shared_client)
from embedmigrate.errors import (ConflictError, DataError, NotFoundError, UnavailableError,
                                 UsageError)


@pytest.fixture
def mem(qdrant_memory_harness):
    return qdrant_memory_harness


class Spy:
    """Forwards to a real client and records the calls named in ``watch``."""

    def __init__(self, client, watch):
        self._client, self._watch, self.calls = client, watch, []

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in self._watch:
            return attr

        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)
        return record


def spy_on(conn, *watch) -> Spy:
    spy = Spy(conn._connect(create=True), watch)
    conn._client = spy
    return spy


def test_named_vectors_must_be_chosen_and_round_trip(mem, fresh_name):
    name = fresh_name("named")
    rng = np.random.default_rng(0)
    mem.client.create_collection(name, vectors_config={
        "title": models.VectorParams(size=4, distance=models.Distance.DOT),
        "body": models.VectorParams(size=6, distance=models.Distance.EUCLID)})
    body = rng.normal(size=(30, 6)).astype(np.float32)
    mem.client.upsert(name, points=models.Batch(
        ids=list(range(30)), payloads=[{"i": i} for i in range(30)],
        vectors={"title": rng.normal(size=(30, 4)).tolist(), "body": body.tolist()}))

    with pytest.raises(UsageError) as e:
        open_collection(mem.uri(name)).describe()
    assert "body, title" in str(e.value) and "?vector=" in e.value.fix
    with pytest.raises(NotFoundError, match="body, title"):
        open_collection(mem.uri(name) + "?vector=nope").describe()

    src = open_collection(mem.uri(name) + "?vector=body")
    info = src.describe()
    assert (info.dim, info.metric, info.vector_name) == (6, "l2", "body")
    assert info.settings["vector_names"] == ["body", "title"]
    got = np.concatenate([b.vectors for b, _ in src.scan(7)])
    np.testing.assert_array_equal(got, body)  # Euclid vectors come back exactly

    dst_name = fresh_name("named_dst")
    dst = open_collection(mem.uri(dst_name))
    dst.create_like(info, dim=3)
    params = mem.client.get_collection(dst_name).config.params.vectors
    assert set(params) == {"body"} and params["body"].size == 3
    dst.write(Batch(list(range(30)), np.ones((30, 3), np.float32), [{"i": i} for i in range(30)]))
    assert open_collection(mem.uri(dst_name)).describe().vector_name == "body"
    assert mem.client.retrieve(dst_name, [5], with_vectors=True)[0].vector == {"body": [1, 1, 1]}


def test_uuid_ids_scan_resume_sample_and_write(mem, fresh_name):
    ids, vectors, payloads = make_points(500, 8, seed=11)
    uids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc/{i}")) for i in ids]
    name = fresh_name("uuid")
    mem.populate(name, uids, vectors, payloads, metric="dot")
    src = open_collection(mem.uri(name))
    info = src.describe()
    assert info.id_type == "uuid" and "text" in info.text_fields and "n" not in info.text_fields

    scan = src.scan(200)
    first, cursor = next(scan)
    cursor = json.loads(json.dumps(cursor))
    rest = [i for b, _ in src.scan(200, after=cursor) for i in b.ids]
    assert sorted(first.ids + rest) == sorted(uids) and not set(first.ids) & set(rest)

    *_, (last, done) = list(src.scan(200))
    assert done == {"next_id": None}
    assert list(src.scan(200, after=json.loads(json.dumps(done)))) == []  # a finished scan

    s = src.sample(50, seed=3)
    assert s.ids == src.sample(50, seed=3).ids and len(set(s.ids)) == 50
    pos = {u: i for i, u in enumerate(uids)}
    np.testing.assert_array_equal(s.vectors, vectors[[pos[u] for u in s.ids]])  # dot: exact
    assert s.payloads == [payloads[pos[u]] for u in s.ids]

    dst = open_collection(mem.uri(fresh_name("uuid_dst")))
    dst.create_like(info, dim=8)
    for batch, _ in src.scan(128):
        dst.write(batch)
    assert sorted(i for b, _ in dst.scan(1000) for i in b.ids) == sorted(uids)


def test_write_rejects_ids_qdrant_cannot_store(mem, fresh_name):
    name = fresh_name("ids")
    mem.populate(name, [], np.zeros((0, 4), np.float32), [], dim=4)
    dst = open_collection(mem.uri(name))
    bad = Batch([1, "doc-1"], np.ones((2, 4), np.float32), [{}, {}])
    with pytest.raises(DataError, match="doc-1") as e:
        dst.write(bad)
    assert "UUID" in e.value.fix
    assert dst.count() == 0


def test_alias_resolves_for_exists_describe_scan_and_sample(mem, fresh_name):
    ids, vectors, payloads = make_points(120, 8, seed=12)
    name = fresh_name("aliased")
    mem.populate(name, ids, vectors, payloads)
    alias = mem.serve(name)
    conn = open_collection(mem.uri(alias))
    assert conn.exists()
    info = conn.describe()
    assert (info.name, info.count, info.settings["alias"]) == (name, 120, alias)
    assert sum(len(b) for b, _ in conn.scan(50)) == 120
    assert len(conn.sample(10, seed=1)) == 10
    assert not open_collection(mem.uri(fresh_name("no_such_alias"))).exists()


def test_cutover_refuses_a_real_collection_and_changes_nothing(mem, fresh_name):
    ids, vectors, payloads = make_points(20, 8, seed=13)
    live, new = fresh_name("real_live"), fresh_name("new")
    mem.populate(live, ids, vectors, payloads)
    mem.populate(new, ids, vectors, payloads)
    aliases_before = mem.client.get_aliases().aliases
    with pytest.raises(ConflictError) as e:
        open_collection(mem.uri(new)).cutover(live)
    assert "alias" in e.value.fix and "never deletes" in e.value.fix
    assert mem.client.get_aliases().aliases == aliases_before
    assert mem.client.count(live).count == 20


def test_cutover_to_a_new_alias_and_rollback_removes_it(mem, fresh_name):
    ids, vectors, payloads = make_points(20, 8, seed=14)
    new, live = fresh_name("new"), fresh_name("fresh_alias")
    mem.populate(new, ids, vectors, payloads)
    conn = open_collection(mem.uri(new))
    record = conn.cutover(live)
    assert record["previous"] is None and record["collection"] == new
    assert open_collection(mem.uri(live)).count() == 20
    conn.rollback(record)
    assert not open_collection(mem.uri(live)).exists()
    conn.rollback(record)  # a second rollback is a no-op


def test_rollback_refuses_when_someone_moved_the_alias(mem, fresh_name):
    ids, vectors, payloads = make_points(20, 8, seed=15)
    old, new, other = fresh_name("old"), fresh_name("new"), fresh_name("other")
    for n in (old, new, other):
        mem.populate(n, ids, vectors, payloads)
    live = mem.serve(old)
    record = open_collection(mem.uri(new)).cutover(live)
    open_collection(mem.uri(other)).cutover(live)
    with pytest.raises(ConflictError, match=other):
        open_collection(mem.uri(new)).rollback(record)


def rich_source(mem, fresh_name) -> CollectionInfo:
    """A source as a server describes it: HNSW, quantization and payload indexes set
    (local mode accepts these settings but does not report them back)."""
    name = fresh_name("rich")
    ids, vectors, payloads = make_points(10, 8, seed=16)
    mem.populate(name, ids, vectors, payloads)
    info = open_collection(mem.uri(name)).describe()
    info.settings.update(
        hnsw_config={"m": 32, "ef_construct": 256, "full_scan_threshold": 5000, "on_disk": True},
        quantization_config={"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}},
        optimizer_config={"indexing_threshold": 50000, "deleted_threshold": 0.2},
        vector_params={**info.settings["vector_params"], "on_disk": True},
        payload_schema={"title": {"data_type": "keyword"},
                        "text": {"data_type": "text", "params": {
                            "type": "text", "tokenizer": "word", "lowercase": True}},
                        "n": {"data_type": "integer", "params": {
                            "type": "integer", "lookup": True, "range": False}}})
    return info


def test_create_like_copies_hnsw_quantization_and_payload_indexes(mem, fresh_name):
    info = rich_source(mem, fresh_name)
    dst = open_collection(mem.uri(fresh_name("rich_dst")))
    spy = spy_on(dst, "create_collection", "create_payload_index")
    dst.create_like(info, dim=24)

    (_, args, kwargs), *index_calls = spy.calls
    assert kwargs["hnsw_config"] == models.HnswConfigDiff(m=32, ef_construct=256,
                                                          full_scan_threshold=5000, on_disk=True)
    assert kwargs["quantization_config"].scalar.quantile == 0.99
    assert kwargs["optimizers_config"].indexing_threshold == 50000
    vec = kwargs["vectors_config"]
    assert (vec.size, vec.distance, vec.on_disk) == (24, models.Distance.COSINE, True)
    indexes = {a[1]: k["field_schema"] for _, a, k in index_calls}
    assert indexes["title"] == models.PayloadSchemaType.KEYWORD
    assert indexes["text"] == models.TextIndexParams(type="text", tokenizer="word", lowercase=True)
    assert indexes["n"] == models.IntegerIndexParams(type="integer", lookup=True, range=False)
    assert dst.describe().dim == 24


def test_create_like_from_another_engine_copies_the_metric_only():
    info = CollectionInfo(engine="chroma", name="docs", count=1, dim=8, metric="l2",
                          id_type="str", settings={"hnsw": {"M": 32}})
    kwargs, indexes = creation_spec(info, 16, vector_name=None)
    assert kwargs == {"vectors_config": models.VectorParams(size=16,
                                                            distance=models.Distance.EUCLID)}
    assert indexes == []


def test_create_like_refuses_sparse_vectors_and_creates_nothing(mem, fresh_name):
    info = rich_source(mem, fresh_name)
    info.settings["sparse_vectors"] = ["bm25"]
    dst_name = fresh_name("sparse_dst")
    with pytest.raises(UsageError, match="bm25"):
        open_collection(mem.uri(dst_name)).create_like(info, dim=8)
    assert not mem.client.collection_exists(dst_name)


def test_replace_refuses_a_target_an_alias_points_at(mem, fresh_name):
    ids, vectors, payloads = make_points(10, 8, seed=17)
    name = fresh_name("served")
    mem.populate(name, ids, vectors, payloads)
    mem.serve(name)
    conn = open_collection(mem.uri(name))
    with pytest.raises(ConflictError, match="_live"):
        conn.create_like(conn.describe(), dim=8, if_exists="replace")
    assert conn.count() == 10


# --- the 32 MB request limit ------------------------------------------------------------

def test_request_chunks_keep_every_request_under_the_limit():
    limit = 1_000_000
    assert request_chunks(64, [{"t": "x"}] * 100, limit) == [slice(0, 100)]
    assert request_chunks(384, [], limit) == []
    payloads = [{"text": "y" * (1000 + 997 * (i % 7))} for i in range(300)]
    chunks = request_chunks(384, payloads, limit)
    assert len(chunks) > 1
    assert [i for c in chunks for i in range(c.start, c.stop)] == list(range(300))
    for c in chunks:
        body = json.dumps({"ids": [str(uuid.uuid4())] * (c.stop - c.start),
                           "vectors": (-np.random.default_rng(0).random((c.stop - c.start, 384))
                                       .astype(np.float32) / 3).tolist(),
                           "payloads": payloads[c]})
        assert len(body) <= limit * REQUEST_HEADROOM  # the estimate is an upper bound
    with pytest.raises(DataError, match="request limit"):
        request_chunks(8, [{"big": "z" * limit}], limit)


def test_write_splits_a_batch_over_the_request_limit(mem, fresh_name):
    ids, vectors, payloads = make_points(400, 64, seed=18)
    name = fresh_name("split")
    mem.populate(name, [], np.zeros((0, 64), np.float32), [], dim=64)
    dst = open_collection(mem.uri(name) + "?max_request_mb=0.1")  # ~100 kB per request
    spy = spy_on(dst, "upsert")
    dst.write(Batch(ids, vectors, payloads))
    assert len(spy.calls) >= 4
    assert dst.count() == 400


# --- the embedded store on disk ------------------------------------------------------------

def test_path_store_on_disk_writes_fast_and_durably(tmp_path):
    store = tmp_path / "store"
    ids, vectors, payloads = make_points(1_000, 32, seed=19)
    src = open_collection(f"qdrant+memory:///disk_src_{id(tmp_path)}")
    client, _ = shared_client(None)
    client.create_collection(src.name, vectors_config=models.VectorParams(
        size=32, distance=models.Distance.DOT))
    client.upsert(src.name, points=models.Batch(ids=ids, vectors=vectors.tolist(),
                                                payloads=payloads))
    dst = open_collection(f"qdrant+local://{store}/docs")
    dst.create_like(src.describe(), dim=32)
    start = time.monotonic()
    for batch, _ in src.scan(250):
        dst.write(batch)
    dst.finish_write()
    # one sqlite commit per point would take ~17 s on this disk
    assert time.monotonic() - start < 5
    close_shared_client(str(store))  # as a new process would: reopen the folder from disk
    reopened = open_collection(f"qdrant+local://{store}/docs")
    assert reopened.count() == 1_000
    got = np.concatenate([b.vectors for b, _ in reopened.scan(300)])  # id order = ids order
    np.testing.assert_array_equal(got, vectors)
    close_shared_client(str(store))


def test_missing_path_store_is_not_found_and_not_created(tmp_path):
    conn = open_collection(f"qdrant+local://{tmp_path}/nothing/here/docs")
    assert not conn.exists()
    with pytest.raises(NotFoundError):
        conn.describe()
    assert not (tmp_path / "nothing").exists()


def test_path_store_held_by_another_process_is_a_conflict(tmp_path):
    store = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from qdrant_client import QdrantClient; "
         f"c = QdrantClient(path={str(store)!r}); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ConflictError) as e:
            open_collection(f"qdrant+local://{store}/docs").describe()
        assert "another process" in str(e.value)
    finally:
        holder.kill()
        holder.wait()


# --- servers ----------------------------------------------------------------------------------

def test_unreachable_server_fails_fast_without_the_password():
    uri = f"qdrant://user:secret@127.0.0.1:{closed_port()}/x?retries=2"
    start = time.monotonic()
    with pytest.raises(UnavailableError) as e:
        open_collection(uri).describe()
    assert time.monotonic() - start < 5
    assert "secret" not in str(e.value) and "***" in str(e.value)
    assert e.value.fix and "\n" not in str(e.value)


def test_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("MY_QDRANT_KEY", raising=False)
    with pytest.raises(UsageError, match="MY_QDRANT_KEY"):
        open_collection("qdrant://localhost:6333/x?api_key_env=MY_QDRANT_KEY").describe()


def test_server_round_trip_and_alias_cutover(qdrant_server_harness, fresh_name):
    conformance.test_round_trip_10k_with_payloads(qdrant_server_harness, fresh_name)
    conformance.test_cutover_and_rollback(qdrant_server_harness, fresh_name)
    conformance.test_scan_resumes_from_saved_cursor(qdrant_server_harness, fresh_name)
    conformance.test_unreachable_host_fails_fast(qdrant_server_harness)


def test_server_create_like_copies_settings(qdrant_server_harness, fresh_name):
    server = qdrant_server_harness
    name = fresh_name("srv_rich")
    ids, vectors, payloads = make_points(50, 8, seed=20)
    server.client.create_collection(
        name, vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE),
        hnsw_config=models.HnswConfigDiff(m=32, ef_construct=200))
    server.client.upsert(name, points=models.Batch(ids=ids, vectors=vectors.tolist(),
                                                   payloads=payloads), wait=True)
    server.client.create_payload_index(name, "title", models.PayloadSchemaType.KEYWORD, wait=True)
    info = open_collection(server.uri(name)).describe()
    assert info.settings["payload_schema"] == {"title": {"data_type": "keyword"}}
    dst = fresh_name("srv_dst")
    open_collection(server.uri(dst)).create_like(info, dim=16)
    got = server.client.get_collection(dst)
    assert (got.config.hnsw_config.m, got.config.hnsw_config.ef_construct) == (32, 200)
    assert got.payload_schema["title"].data_type == models.PayloadSchemaType.KEYWORD
    assert got.config.params.vectors.size == 16


# --- Qdrant Edge: a live-name link instead of an alias ------------------------------------

def _edge_job(edge, fresh_name, dim_new=24):
    """A source shard served through a live-name link, and a filled target beside it."""
    from embedmigrate.connectors import open_collection
    ids, vectors, payloads = make_points(200, 16, seed=11)
    src, dst = fresh_name("esrc"), fresh_name("edst")
    edge.populate(src, ids, vectors, payloads)
    live = edge.serve(src)
    target = open_collection(edge.uri(dst))
    target.create_like(open_collection(edge.uri(live)).describe(), dim=dim_new)
    rng = np.random.default_rng(0)
    for batch, _ in open_collection(edge.uri(src)).scan(64):
        target.write(batch.replace_vectors(rng.normal(size=(len(batch), dim_new)).astype(np.float32)))
    target.finish_write()
    return src, dst, live, target


def _load_as_an_application(edge, name):
    """What an application does: EdgeShard.load on the live name's path (after this
    process's connectors let go of the shards)."""
    import os

    import qdrant_edge
    from embedmigrate.connectors.qdrant_edge import close_shared_shards
    close_shared_shards()
    shard = qdrant_edge.EdgeShard.load(os.path.join(edge.store, name))
    try:
        config = json.loads(open(os.path.join(edge.store, name, "edge_config.json")).read())
        return shard.count(qdrant_edge.CountRequest(exact=True)), config["vectors"][""]["size"]
    finally:
        shard.close()


def test_edge_cutover_switches_the_link_an_application_loads(qdrant_edge_harness, fresh_name):
    import os
    edge = qdrant_edge_harness
    src, dst, live, target = _edge_job(edge, fresh_name)
    assert open_collection(edge.uri(live)).describe().settings["alias"] == live
    record = json.loads(json.dumps(target.cutover(live)))
    assert record["previous"] == src and record["collection"] == dst
    assert os.readlink(os.path.join(edge.store, live)) == dst  # relative: the store may move
    assert _load_as_an_application(edge, live) == (200, 24)
    target.rollback(record)
    assert _load_as_an_application(edge, live) == (200, 16)
    target.rollback(record)  # a second rollback changes nothing
    assert os.readlink(os.path.join(edge.store, live)) == src
    assert not [n for n in os.listdir(edge.store) if n.endswith(".tmp")]  # no stray links


def test_edge_cutover_refuses_a_shard_directory_as_live_name(qdrant_edge_harness, fresh_name):
    edge = qdrant_edge_harness
    src, dst, live, target = _edge_job(edge, fresh_name)
    with pytest.raises(ConflictError) as e:
        target.cutover(src)  # a real shard: it cannot be switched atomically
    assert "ln -s" in e.value.fix
    assert open_collection(edge.uri(src)).describe().dim == 16  # untouched


def test_edge_refuses_to_drop_a_shard_a_live_name_links_to(qdrant_edge_harness, fresh_name):
    edge = qdrant_edge_harness
    src, dst, live, target = _edge_job(edge, fresh_name)
    with pytest.raises(ConflictError):
        open_collection(edge.uri(src)).drop()
    with pytest.raises(UsageError):
        open_collection(edge.uri(live)).drop()
    assert open_collection(edge.uri(src)).count() == 200
    target.drop()  # nothing links to the target yet
    assert not open_collection(edge.uri(dst)).exists()


def test_edge_shards_are_not_reachable_from_ray_workers(qdrant_edge_harness):
    from embedmigrate.parallel import check_ray_reachable
    with pytest.raises(UsageError):
        check_ray_reachable(qdrant_edge_harness.uri("any"))


def test_edge_create_like_copies_hnsw_and_payload_indexes(qdrant_edge_harness, fresh_name):
    import os

    import qdrant_edge
    from embedmigrate.connectors.qdrant_edge import close_shared_shard, shared_shard
    edge = qdrant_edge_harness
    src, dst = fresh_name("eidx"), fresh_name("eidx_dst")
    path = os.path.join(edge.store, src)
    config = qdrant_edge.EdgeConfig(
        vectors=qdrant_edge.EdgeVectorParams(size=4, distance=qdrant_edge.Distance.Euclid),
        hnsw_config=qdrant_edge.HnswIndexConfig(m=8, ef_construct=50, full_scan_threshold=500))
    shard, lock = shared_shard(path, create_with=config)
    with lock:  # Edge's own API, not our writer
        shard.update(qdrant_edge.UpdateOperation.create_field_index(
            "title", qdrant_edge.PayloadSchemaType.Keyword))
        shard.update(qdrant_edge.UpdateOperation.upsert_points(
            [qdrant_edge.Point(1, [1.0, 2.0, 3.0, 4.0], {"title": "x"})]))
    close_shared_shard(path)
    info = open_collection(edge.uri(src)).describe()
    target = open_collection(edge.uri(dst))
    target.create_like(info, dim=6)
    got = target.describe()
    assert (got.dim, got.metric) == (6, "l2")
    assert got.settings["hnsw_config"]["m"] == 8 and got.settings["hnsw_config"]["ef_construct"] == 50
    assert got.settings["payload_schema"] == {"title": {"data_type": "keyword"}}


def test_edge_create_killed_half_way_leaves_no_shard_and_does_not_block(qdrant_edge_harness,
                                                                        fresh_name):
    """create_like builds the shard in a hidden directory and renames it into place: what
    a killed create leaves is that hidden directory, which the next create replaces."""
    import os

    import qdrant_edge
    edge = qdrant_edge_harness
    ids, vectors, payloads = make_points(20, 8, seed=12)
    src, dst = fresh_name("ekill"), fresh_name("ekill_dst")
    edge.populate(src, ids, vectors, payloads)
    leftover = os.path.join(edge.store, f".{dst}.creating")  # a create killed before its rename
    qdrant_edge.EdgeShard.create(leftover, qdrant_edge.EdgeConfig(
        vectors=qdrant_edge.EdgeVectorParams(size=3, distance=qdrant_edge.Distance.Dot))).close()
    target = open_collection(edge.uri(dst))
    assert not target.exists()
    target.create_like(open_collection(edge.uri(src)).describe(), dim=8)
    assert target.describe().dim == 8 and not os.path.exists(leftover)
