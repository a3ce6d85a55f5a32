"""Conformance suite: every connector, against its real engine (see conftest.py)."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
from conftest import make_points
from scipy import stats

from embedmigrate import parallel
from embedmigrate.connectors import Batch, open_collection, parse_uri
from embedmigrate.errors import (ConflictError, DataError, EmbedMigrateError, NotFoundError,
                                 UnavailableError, UsageError)


def read_all(conn, batch_size=1000):
    ids, vecs, pays = [], [], []
    for batch, _ in conn.scan(batch_size):
        ids += list(batch.ids)
        vecs.append(batch.vectors)
        pays += batch.payloads
    order = np.argsort([str(i) for i in ids], kind="stable")
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    return [ids[i] for i in order], vectors[order], [pays[i] for i in order]


def by_key(ids, *cols):
    order = np.argsort([str(i) for i in ids], kind="stable")
    return [[c[i] for i in order] for c in cols]


def float_tolerant(payloads):
    """Chroma stores some float metadata one ulp off (9999/7 reads back ...571, not ...5713)."""
    return [{k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for k, v in p.items()}
            for p in payloads]


def test_round_trip_10k_with_payloads(engine, fresh_name):
    ids, vectors, payloads = make_points(10_000, 64, seed=1)
    src_name, dst_name = fresh_name("src"), fresh_name("dst")
    engine.populate(src_name, ids, vectors, payloads, metric="cosine")
    src = open_collection(engine.uri(src_name))
    info = src.describe()
    assert (info.count, info.dim, info.metric) == (10_000, 64, "cosine")
    assert "title" in info.payload_fields

    dst = open_collection(engine.uri(dst_name))
    dst.create_like(info, dim=64)
    for batch, _ in src.scan(1024):
        dst.write(batch)
    dst.finish_write()

    got_ids, got_vecs, got_pays = read_all(dst)
    want_ids, want_vecs, want_pays = by_key(ids, ids, list(vectors), payloads)
    if info.id_type == "str":  # Chroma stores every id as a string
        want_ids = [str(i) for i in want_ids]
    assert got_ids == want_ids
    np.testing.assert_allclose(got_vecs, np.asarray(want_vecs), atol=1e-6)
    assert got_pays == float_tolerant(want_pays)
    assert dst.describe().metric == "cosine"
    # the source is untouched
    assert open_collection(engine.uri(src_name)).count() == 10_000


def test_scan_resumes_from_saved_cursor(engine, fresh_name):
    ids, vectors, payloads = make_points(2_500, 16, seed=2)
    name = fresh_name("scan")
    engine.populate(name, ids, vectors, payloads)
    first, saved = [], None
    for i, (batch, cursor) in enumerate(open_collection(engine.uri(name)).scan(300)):
        first += list(batch.ids)
        if i == 2:
            saved = json.dumps(cursor)  # persisted as a crash-safe state file would
            break
    rest = []
    for batch, _ in open_collection(engine.uri(name)).scan(300, after=json.loads(saved)):
        rest += list(batch.ids)
    assert len(first) == 900
    assert not set(map(str, first)) & set(map(str, rest))
    assert sorted(map(str, first + rest)) == sorted(map(str, ids))


def populated(engine, name: str, n: int, *, seed: int, int_ids: bool):
    """n 8-d points in collection ``name``, with int ids or UUIDs (the string ids every
    engine accepts: Qdrant takes no others); returns the ids and a connector."""
    ids, vectors, payloads = make_points(n, 8, seed=seed)
    if not int_ids:
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc-{i}")) for i in ids]
    engine.populate(name, ids, vectors, payloads)
    return ids, open_collection(engine.uri(name))


@pytest.mark.parametrize("int_ids", [True, False])
def test_scan_ids_lists_the_ids_scan_yields(engine, fresh_name, int_ids):
    """verify counts and checksums the target from scan_ids alone: the same ids, in the
    same form (the id checksum hashes str(id)), as a full scan."""
    ids, conn = populated(engine, fresh_name("ids"), 2_345, seed=4, int_ids=int_ids)
    pages = list(conn.scan_ids(1_000))
    assert [len(p) for p in pages] == [1_000, 1_000, 345]
    scanned = [i for batch, _ in conn.scan(500) for i in batch.ids]
    assert sorted(map(str, (i for p in pages for i in p))) == sorted(map(str, scanned))
    assert parallel.id_hash(i for p in pages for i in p) == parallel.id_hash(scanned)


def test_sample_is_uniform(engine, fresh_name):
    n_points, n, draws = 1_000, 100, 40
    ids, vectors, payloads = make_points(n_points, 8, seed=3)
    name = fresh_name("samp")
    engine.populate(name, ids, vectors, payloads)
    conn = open_collection(engine.uri(name))
    counts = np.zeros(10)
    for seed in range(draws):
        s = conn.sample(n, seed=seed)
        assert len(s) == n and len(set(map(str, s.ids))) == n
        assert s.vectors.shape == (n, 8) and s.vectors.dtype == np.float32
        counts += np.bincount((np.asarray([int(str(i)) for i in s.ids]) - 1) // 100, minlength=10)
    # each decile of the id range must be hit n*draws/10 times up to chance;
    # a sampler biased to the first/last rows fails this by a wide margin
    p = stats.chisquare(counts).pvalue
    assert p > 1e-4, (counts, p)
    a, b = conn.sample(n, seed=7), conn.sample(n, seed=7)
    assert list(a.ids) == list(b.ids)
    assert list(conn.sample(n, seed=8).ids) != list(a.ids)
    assert len(conn.sample(5_000, seed=0)) == n_points


def test_cutover_and_rollback(engine, fresh_name):
    old_ids, old_vecs, old_pays = make_points(300, 16, seed=4)
    src_name, dst_name = fresh_name("live"), fresh_name("next")
    engine.populate(src_name, old_ids, old_vecs, old_pays)
    live = engine.serve(src_name)
    src = open_collection(engine.uri(src_name))
    info = src.describe()
    dst = open_collection(engine.uri(dst_name))
    dst.create_like(info, dim=24)
    rng = np.random.default_rng(0)
    for batch, _ in src.scan(100):
        v = rng.normal(size=(len(batch), 24)).astype(np.float32)
        dst.write(batch.replace_vectors(v / np.linalg.norm(v, axis=1, keepdims=True)))
    dst.finish_write()

    record = dst.cutover(live)
    json.dumps(record)  # stored in the job state file
    served = open_collection(engine.uri(live))
    assert served.describe().dim == 24 and served.count() == 300

    open_collection(engine.uri(dst_name)).rollback(record)
    served = open_collection(engine.uri(live))
    assert served.describe().dim == 16
    ids, vecs, _ = read_all(served)
    np.testing.assert_allclose(vecs, np.asarray(by_key(old_ids, list(old_vecs))[0]), atol=1e-6)


# --- bad input: a clear one-line error naming the fix, nothing written ---------------

def one_line(err: EmbedMigrateError):
    assert "\n" not in str(err) and err.fix, str(err)


def test_unknown_scheme_is_a_usage_error():
    with pytest.raises(UsageError) as e:
        parse_uri("mongodb://localhost/docs")
    one_line(e.value)


def test_missing_collection(engine, fresh_name):
    conn = open_collection(engine.uri(fresh_name("missing")))
    assert not conn.exists()
    for call in (conn.describe, lambda: conn.sample(10), lambda: next(conn.scan(10))):
        with pytest.raises(NotFoundError) as e:
            call()
        one_line(e.value)


def test_write_rejects_bad_batches_and_writes_nothing(engine, fresh_name):
    ids, vectors, payloads = make_points(50, 16, seed=5)
    src_name, dst_name = fresh_name("src"), fresh_name("dst")
    engine.populate(src_name, ids, vectors, payloads)
    info = open_collection(engine.uri(src_name)).describe()
    dst = open_collection(engine.uri(dst_name))
    dst.create_like(info, dim=16)
    wrong_dim = Batch(ids[:10], np.ones((10, 17), np.float32), payloads[:10])
    nan = vectors[:10].copy()
    nan[3, 2] = np.nan
    for bad in (wrong_dim, Batch(ids[:10], nan, payloads[:10])):
        with pytest.raises(DataError) as e:
            dst.write(bad)
        one_line(e.value)
    dst.finish_write()
    assert dst.count() == 0


def test_empty_collection_cannot_be_sampled(engine, fresh_name):
    ids, vectors, payloads = make_points(5, 8, seed=6)
    name = fresh_name("empty")
    engine.populate(name, [], np.zeros((0, 8), np.float32), [], dim=8)
    conn = open_collection(engine.uri(name))
    assert conn.count() == 0
    with pytest.raises(DataError) as e:
        conn.sample(10)
    one_line(e.value)


def test_existing_target_is_refused_unless_resume_or_replace(engine, fresh_name):
    ids, vectors, payloads = make_points(40, 8, seed=7)
    src_name, dst_name = fresh_name("src"), fresh_name("dst")
    engine.populate(src_name, ids, vectors, payloads)
    src = open_collection(engine.uri(src_name))
    info = src.describe()
    dst = open_collection(engine.uri(dst_name))
    dst.create_like(info, dim=8)
    dst.write(next(src.scan(10))[0])
    dst.finish_write()
    with pytest.raises(ConflictError) as e:
        open_collection(engine.uri(dst_name)).create_like(info, dim=8)
    one_line(e.value)
    open_collection(engine.uri(dst_name)).create_like(info, dim=8, if_exists="resume")
    assert open_collection(engine.uri(dst_name)).count() == 10
    with pytest.raises(DataError):  # resuming with another dimension is refused
        open_collection(engine.uri(dst_name)).create_like(info, dim=12, if_exists="resume")
    open_collection(engine.uri(dst_name)).create_like(info, dim=8, if_exists="replace")
    assert open_collection(engine.uri(dst_name)).count() == 0


def test_unreachable_host_fails_fast(engine):
    uri = engine.unreachable_uri()
    if uri is None:
        pytest.skip(f"{engine.name} is embedded: there is no host to be unreachable")
    start = time.monotonic()
    with pytest.raises(UnavailableError) as e:
        open_collection(uri).describe()
    assert time.monotonic() - start < 30
    one_line(e.value)
    assert "secret" not in str(e.value)  # harnesses put a password 'secret' in these URIs


@pytest.mark.parametrize("int_ids", [True, False])
def test_partitions_cover_the_collection_once(engine, fresh_name, int_ids):
    name = fresh_name("parts")
    ids, conn = populated(engine, name, 3_001, seed=5, int_ids=int_ids)
    parts = json.loads(json.dumps(conn.partitions(5)))  # parts travel as JSON (state, Ray)
    assert 2 <= len(parts) <= 5
    seen, sizes = [], []
    for part in parts:
        got, saved = [], None
        for i, (batch, cursor) in enumerate(conn.scan(97, part=part)):
            got += list(batch.ids)
            if i == 1:
                saved = json.loads(json.dumps(cursor))
                break
        if saved is not None:  # resume the part from its saved cursor
            for batch, _ in conn.scan(97, after=saved, part=part):
                got += list(batch.ids)
        seen += got
        sizes.append(len(got))
    assert sorted(map(str, seen)) == sorted(map(str, ids))  # every point once, no overlap
    assert max(sizes) < 2.5 * 3_001 / len(parts)  # near-equal, not one giant part
    assert open_collection(engine.uri(name)).partitions(1) == [None]


def test_open_ended_last_part_sees_points_added_later(engine, fresh_name):
    ids, vectors, payloads = make_points(1_200, 8, seed=6)
    name = fresh_name("grow")
    engine.populate(name, ids, vectors, payloads)
    conn = open_collection(engine.uri(name))
    last = conn.partitions(3)[-1]
    cursor = None
    for _, cursor in conn.scan(500, part=last):
        pass
    more_ids, more_vecs, more_pays = make_points(50, 8, seed=7)
    conn.write(Batch([i + 10_000 for i in more_ids], more_vecs, more_pays))
    added = [i for b, _ in conn.scan(500, after=cursor, part=last) for i in b.ids]
    if engine.engine == "qdrant":  # a finished scroll has no cursor to go on from
        assert added == []
    else:
        assert sorted(map(str, added)) == sorted(str(i + 10_000) for i in more_ids)
