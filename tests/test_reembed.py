"""Re-embed and hybrid migrations (strategy = reembed | hybrid) on real engines with real
packaged models: old vectors from WordLlama, new model MiniLM. Each written vector must
equal MiniLM's encoding of the point's stored text (a point without text: the
translation of its old vector), with the provenance keys, ids and payloads intact and
the source untouched, through kill -9, resumes and budget stops."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from embedmigrate import commands
from embedmigrate.connectors import open_collection, parse_uri
from embedmigrate.encoders import open_encoder
from embedmigrate.errors import ExitCode
from embedmigrate.plan import load_plan
from embedmigrate.transform import NATIVE, PROVENANCE_KEYS, PROVENANCE_MODEL, PROVENANCE_VECTOR, TRANSLATED
from embedmigrate.translators import Translator
from fault_helpers import Job, finish, kill9, start_cli, wait_until

N = 300
BATCH = 25
NO_TEXT = 7  # index of the one point stored without text: it is translated, and counted


class MemoEncoder:
    """An encoder that encodes each (text, kind) once: the checks below encode the same
    corpus texts again at every stage of every test."""

    def __init__(self, encoder):
        self.encoder, self.dim, self.cache = encoder, encoder.dim, {}

    def encode(self, texts, kind: str = "passage", **_) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if (t, kind) not in self.cache]
        if todo:
            self.cache.update(((t, kind), v) for t, v in zip(todo, self.encoder.encode(todo, kind=kind)))
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.cache[t, kind] for t in texts])


@pytest.fixture(scope="module")
def minilm():
    return MemoEncoder(open_encoder("minilm"))


@pytest.fixture(scope="module")
def corpus():
    """WordNet entries (shipped sample) with WordLlama vectors: the 'old model'."""
    from embedmigrate.demo_data import load_wordnet_sample
    docs, _ = load_wordnet_sample()
    texts = [d["text"] for d in docs[:N]]
    old = open_encoder("wordllama").encode(texts)
    ids = list(range(1, N + 1))
    payloads = [{"text": t, "title": t.split(":")[0], "n": i} for i, t in zip(ids, texts)]
    payloads[NO_TEXT]["text"] = ""
    return ids, old.astype(np.float32), payloads


def _store(request, name: str):
    if name == "qdrant_local":  # a store this process does not keep open (apply runs as a child)
        from test_faults import _QdrantLocalStore
        return _QdrantLocalStore()
    return request.getfixturevalue(name)


def _release(store) -> None:
    """Close this process's client of a Qdrant local store (its shards, on Qdrant Edge) so
    a child process can open it."""
    if hasattr(store, "path") and store.engine == "qdrant":
        from embedmigrate.connectors.qdrant import close_shared_client
        close_shared_client(store.path)
    if store.engine == "qdrant-edge":
        from embedmigrate.connectors.qdrant_edge import close_shared_shards
        close_shared_shards()


def _env(store, src: str) -> dict:
    password = parse_uri(store.uri(src)).password
    return {"PGPASSWORD": password} if password else {}


@pytest.fixture(scope="module")
def labelled_queries(tmp_path_factory):
    """The shipped WordNet sample's example sentences whose gloss is among the corpus's N
    points, with that point's id: labelled evidence for the gate (56 queries)."""
    from embedmigrate.demo_data import load_wordnet_sample
    docs, queries = load_wordnet_sample()
    point_of = {d["id"]: n + 1 for n, d in enumerate(docs[:N])}
    path = tmp_path_factory.mktemp("queries") / "queries.jsonl"
    path.write_text("".join(json.dumps({"text": q["text"], "doc_id": point_of[q["doc_id"]]}) + "\n"
                            for q in queries if q["doc_id"] in point_of))
    return path


def make_job(store, corpus, tmp_path, fresh_name, monkeypatch, strategy: str, *, model="minilm",
             batch_size=BATCH, **plan_options) -> Job:
    ids, old, payloads = corpus
    src = fresh_name("re")
    store.populate(src, ids, old, payloads)
    for k, v in _env(store, src).items():
        monkeypatch.setenv(k, v)
    out = commands.plan(store.uri(src), model, output=tmp_path / "plan.toml", text_field="text",
                        pairs=150, method="ridge", checkpoint=str(tmp_path / "ckpt"), strategy=strategy,
                        **plan_options)
    plan = load_plan(out["plan"])
    plan.apply.batch_size = batch_size
    plan.write(out["plan"])
    commands.train(out["plan"], progress=False)
    _release(store)
    return Job(Path(out["plan"]), Path(out["plan"]).with_name("plan.state"), store.uri(src),
               out["target"], Translator.load(tmp_path / "ckpt"), N)


def read_points(store, uri: str) -> dict:
    """id -> (vector, payload, document) of a whole collection."""
    try:
        out = {}
        for batch, _ in open_collection(uri).scan(500):
            docs = batch.documents or [None] * len(batch)
            for i, v, p, d in zip(batch.ids, batch.vectors, batch.payloads, docs):
                out[str(i)] = (np.asarray(v, np.float32), dict(p or {}), d)
        return out
    finally:
        _release(store)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_target(source: dict, target: dict, minilm, translator, *, complete: bool = True) -> dict:
    """The target holds exactly the source's ids with their payloads plus provenance;
    a native point's vector is MiniLM's encoding of its text, a translated one the
    translation of its old vector; ``complete``: every point with text is native.
    Returns the provenance of every id."""
    assert set(target) == set(source)
    kinds = {}
    for i, (_, payload, document) in target.items():
        src_payload = source[i][1]
        assert {k: v for k, v in payload.items() if k not in PROVENANCE_KEYS} == \
            {k: v for k, v in src_payload.items() if k not in PROVENANCE_KEYS}, i
        assert document == source[i][2]
        assert payload[PROVENANCE_MODEL] == "minilm"
        kinds[i] = payload[PROVENANCE_VECTOR]
    native = sorted(i for i, k in kinds.items() if k == NATIVE)
    translated = sorted(i for i, k in kinds.items() if k == TRANSLATED)
    assert len(native) + len(translated) == len(target)
    if complete:
        assert set(native) == {i for i, (_, p, _) in source.items() if p["text"]}
    if native:
        want = minilm.encode([source[i][1]["text"] for i in native])
        cos = _cos(want, np.stack([target[i][0] for i in native]))
        assert cos.min() > 0.9999, f"id {native[int(np.argmin(cos))]}: cosine {cos.min():.6f}"
    if translated:
        want = translator.translate(np.stack([source[i][0] for i in translated]))
        cos = _cos(want, np.stack([target[i][0] for i in translated]))
        assert cos.min() > 0.9999, f"id {translated[int(np.argmin(cos))]}: cosine {cos.min():.6f}"
    return kinds


def _untouched(before: dict, after: dict) -> None:
    assert set(before) == set(after)
    for i, (v, p, d) in before.items():
        np.testing.assert_array_equal(after[i][0], v)
        assert after[i][1] == p and after[i][2] == d


# --- reembed end to end, killed mid-run ---------------------------------------------------

@pytest.mark.parametrize("engine_name", ["qdrant_local", "qdrant_edge_harness", "chroma_embedded_harness",
                                         "chroma_server_harness", "postgres_tcp_harness"])
def test_reembed_killed_mid_run_then_resumed(engine_name, request, corpus, minilm, tmp_path, fresh_name,
                                             monkeypatch):
    store = _store(request, engine_name)
    job = make_job(store, corpus, tmp_path, fresh_name, monkeypatch, "reembed")
    before = read_points(store, job.source_uri)
    env = _env(store, parse_uri(job.source_uri).collection)

    proc = start_cli("apply", job.plan, "--no-cutover", "--json", env=env)
    wait_until(job, proc, 3 * BATCH)
    kill9(proc)
    assert 0 < job.written() < N, "the kill must land mid-run"
    # the scheduler's step resumes it (in this process: a child would load the model again)
    resumed = commands.advance(job.plan)
    _release(store)
    assert resumed["step"] == "apply"

    state = job.state
    assert state["stage"] == "applied" and state["written"] == N  # each batch counted once
    assert state["native"] == N - 1 and state["translated"] == 1
    kinds = assert_target(before, read_points(store, job.target_uri), minilm, job.translator)
    assert [i for i, k in kinds.items() if k == TRANSLATED] == [str(NO_TEXT + 1)]
    _untouched(before, read_points(store, job.source_uri))
    # verify compares the target with the encoder's output, not with a translation
    result = commands.advance(job.plan)
    _release(store)
    assert result["step"] == "verify" and result["ids_match"]
    assert "written_matches_translation" not in {c["name"] for c in result["failed_checks"]}


def test_reembed_apply_trains_by_itself(chroma_embedded_harness, corpus, minilm, tmp_path, fresh_name):
    """No `train` step for a re-embed: apply trains first (the map for points without text
    and the gate's held-out data), then re-embeds; translate still asks for train."""
    from embedmigrate.errors import UsageError
    store = chroma_embedded_harness
    ids, old, payloads = corpus
    src = fresh_name("re")
    store.populate(src, ids, old, payloads)
    for strategy in ("translate", "hybrid"):
        out = commands.plan(store.uri(src), "minilm", output=tmp_path / f"{strategy}.toml",
                            text_field="text", pairs=150, method="ridge", strategy=strategy)
        with pytest.raises(UsageError, match="the translator is not trained yet"):
            commands.apply(out["plan"], progress=False, cutover=False)
        assert not open_collection(out["target"]).exists()
    out = commands.plan(store.uri(src), "minilm", output=tmp_path / "plan.toml", text_field="text",
                        pairs=150, method="ridge", checkpoint=str(tmp_path / "ckpt"), strategy="reembed")
    result = commands.apply(out["plan"], progress=False, cutover=False)
    assert result["ids_match"] and result["written"] == N
    assert result["native"] == N - 1 and result["translated"] == 1
    assert "written_matches_translation" not in {c["name"] for c in result["failed_checks"]}
    assert (tmp_path / "plan.state" / "eval.npz").exists()  # the gate's held-out data, from training
    before = read_points(store, store.uri(src))
    assert_target(before, read_points(store, out["target"]), minilm, Translator.load(tmp_path / "ckpt"))


def test_translate_strategy_writes_no_provenance(chroma_embedded_harness, corpus, tmp_path, fresh_name,
                                                 monkeypatch):
    """Old plans and `--strategy translate` keep today's behaviour: payloads copied untouched."""
    job = make_job(chroma_embedded_harness, corpus, tmp_path, fresh_name, monkeypatch, "translate")
    commands.apply(job.plan, progress=False, cutover=False)
    for _, payload, _ in read_points(chroma_embedded_harness, job.target_uri).values():
        assert not set(payload) & set(PROVENANCE_KEYS)


# --- hybrid: translate, cut over, background passes ------------------------------------------

def _search(store, uri: str, vector: np.ndarray, k: int = 5) -> list[str]:
    """The live collection searched with the engine's own client."""
    name = parse_uri(uri).collection
    if store.engine == "qdrant":
        from embedmigrate.connectors.qdrant import shared_client
        client, lock = shared_client(store.path)
        try:
            with lock:
                return [str(p.id) for p in client.query_points(name, query=vector.tolist(), limit=k).points]
        finally:
            _release(store)
    if store.engine == "qdrant-edge":
        import qdrant_edge as edge
        from embedmigrate.connectors.qdrant_edge import shared_shard
        shard, lock = shared_shard(os.path.join(store.store, name))
        try:
            with lock:
                hits = shard.search(edge.SearchRequest(edge.Query.Nearest(vector.tolist()), limit=k))
            return [str(h.id) for h in hits]
        finally:
            _release(store)
    if store.engine == "chroma":
        res = store.client().get_collection(name).query(query_embeddings=[vector.tolist()], n_results=k)
        return [str(i) for i in res["ids"][0]]
    from pgvector.psycopg import register_vector
    from psycopg import sql
    with store.connect() as conn:
        register_vector(conn)
        rows = conn.execute(sql.SQL("SELECT id FROM {} ORDER BY embedding <=> %s LIMIT %s").format(
            sql.Identifier(name)), (vector, k)).fetchall()
    return [str(r[0]) for r in rows]


def _wait_reembedded(job: Job, proc, at_least: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(job.state.get("reembedded") or 0) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"reembedded stayed below {at_least}")


def _check_stage(store, job, before, minilm, live) -> dict:
    """Provenance and vectors correct, search answers, a native point finds itself."""
    target = read_points(store, live)
    kinds = assert_target(before, target, minilm, job.translator, complete=False)
    native = [i for i, k in kinds.items() if k == NATIVE]
    some = native[0] if native else "1"
    hits = _search(store, live, minilm.encode([before[some][1]["text"]])[0])
    assert len(hits) == 5 and set(hits) <= set(before)
    if native:
        assert hits[0] == some
    return kinds


def _hand_ndcg(store, live: str, evaluation_ids: list, queries_file: Path, minilm) -> float:
    """nDCG@10 of the labelled queries (MiniLM) over the live vectors of the evaluation
    points, computed here from scratch: one relevant point per query, gain 1."""
    live_points = read_points(store, live)
    ids = [str(i) for i in evaluation_ids]
    docs = np.stack([live_points[i][0] for i in ids])
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    records = [json.loads(line) for line in queries_file.read_text().splitlines()]
    q = minilm.encode([r["text"] for r in records], kind="query")
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gains = []
    for row, r in zip(q @ docs.T, records):
        top = [ids[k] for k in np.argsort(-row, kind="stable")[:10]]
        hit = [n for n, i in enumerate(top) if i == str(r["doc_id"])]
        gains.append(1 / np.log2(hit[0] + 2) if hit else 0.0)
    return float(np.mean(gains))


def _check_quality(status: dict, store, job: Job, live: str, queries_file: Path, minilm) -> None:
    """status carries nDCG@10 of the live collection after the cutover and after each
    pass; the last equals a recomputation by hand and beats the translation."""
    quality = status["hybrid_quality"]
    assert [q["after"] for q in quality] == [
        "cutover (translated)", "pass 1 (killed)", "pass 2 (killed)", "pass 3 (stopped by max_docs)",
        "pass 4"]
    assert all(q["evidence"] == "labels" and q["queries"] == 56 for q in quality)
    shares = [q["native_share"] for q in quality]
    assert shares[0] == 0 and shares == sorted(shares) and shares[-1] > 0.99
    with np.load(job.state_dir / "hybrid_eval.npz") as z:
        evaluation_ids = json.loads(str(z["meta"]))["ids"]
    assert len(evaluation_ids) == N  # the gate's set: the judged points and the sample (all 300 here)
    assert quality[-1]["ndcg"] == pytest.approx(_hand_ndcg(store, live, evaluation_ids, queries_file,
                                                           minilm), abs=1e-4)
    assert quality[-1]["ndcg"] > quality[0]["ndcg"] + 0.05  # native MiniLM beats the 150-pair map
    assert quality[-1]["low"] <= quality[-1]["ndcg"] <= quality[-1]["high"]


@pytest.mark.parametrize("engine_name", ["chroma_server_harness", "postgres_tcp_harness", "qdrant_local",
                                         "qdrant_edge_harness"])
def test_hybrid_translate_cutover_then_killed_passes(engine_name, request, corpus, minilm, tmp_path,
                                                     fresh_name, monkeypatch, labelled_queries):
    store = _store(request, engine_name)
    job = make_job(store, corpus, tmp_path, fresh_name, monkeypatch, "hybrid",
                   queries=str(labelled_queries), from_model="wordllama")
    before = read_points(store, job.source_uri)
    env = _env(store, parse_uri(job.source_uri).collection)

    # 1. translate everything, cut over (the translation's gate verdict is not the point here)
    applied = commands.apply(job.plan, progress=False, force=True)
    _release(store)
    assert applied["cutover"] == "done" and applied["translated"] == N
    live = commands.live_target_uri(load_plan(job.plan))
    kinds = _check_stage(store, job, before, minilm, live)
    assert set(kinds.values()) == {TRANSLATED}

    # 2. two background passes, each killed mid-pass; the provenance is right after each
    seen = 0
    for _ in range(2):
        proc = start_cli("run", job.plan, "--json", env=env)
        _wait_reembedded(job, proc, seen + 2 * BATCH)
        kill9(proc)
        kinds = _check_stage(store, job, before, minilm, live)
        native = sum(k == NATIVE for k in kinds.values())
        assert seen < native < N - 1
        seen = int(job.state["reembedded"])

    # 3. a pass stopped by its budget, then one that finishes the sweep (`run`'s steps, in
    # this process: a child would load the model again; test_budget_stop_then_resume runs the CLI)
    stopped = commands.advance(job.plan, budget={"max_docs": 50})
    _release(store)
    assert stopped["step"] == "reembed_pass" and stopped["budget_exhausted"] == "max_docs"
    assert stopped["reembedded_this_pass"] >= 50 and not stopped["done"]
    finished = commands.advance(job.plan)
    _release(store)
    assert finished["done"] is True
    kinds = _check_stage(store, job, before, minilm, live)
    assert [i for i, k in kinds.items() if k == TRANSLATED] == [str(NO_TEXT + 1)]

    from click.testing import CliRunner
    from embedmigrate import cli
    status = json.loads(CliRunner().invoke(cli.main, ["status", str(job.plan), "--json"]).output)
    assert status["strategy"] == "hybrid" and status["hybrid_done"] is True
    assert status["native_points"] == N - 1 and status["share_native"] == round((N - 1) / N, 4)
    assert len(status["hybrid_passes"]) == 4  # killed, killed, stopped by the budget, finished
    _check_quality(status, store, job, live, labelled_queries, minilm)
    out = CliRunner().invoke(cli.main, ["status", str(job.plan)]).output
    assert "after pass 4: nDCG@10 " in out and "100% of the evaluation points re-embedded" in out, out
    # the old collection (retired by the cutover, or left where it was) still holds the old
    # vectors and payloads
    from embedmigrate.connectors import connector_class
    source = parse_uri(job.source_uri)
    retired = connector_class(source.engine).retired_collection(applied["record"]) or source.collection
    _untouched(before, read_points(store, source.with_collection(retired).raw))


# --- budgets -----------------------------------------------------------------------------------

def test_budget_stop_then_resume(postgres_tcp_harness, corpus, minilm, tmp_path, fresh_name, monkeypatch):
    store = postgres_tcp_harness
    job = make_job(store, corpus, tmp_path, fresh_name, monkeypatch, "reembed")
    before = read_points(store, job.source_uri)
    env = _env(store, parse_uri(job.source_uri).collection)

    code, out, err = finish(start_cli("apply", job.plan, "--max-docs", "100", "--json", env=env))
    assert code == 8, err
    result = json.loads(out)
    assert result["budget_exhausted"] == "max_docs" and result["written"] == 100
    assert "run the same command again to resume" in result["message"]
    assert job.state["stage"] == "applying"
    code, out, err = finish(start_cli("apply", job.plan, "--max-docs", "100", env=env))
    assert code == 8 and out.count("\n") == 1 and "200 of 300 points written" in out, (out, err)

    code, out, err = finish(start_cli("apply", job.plan, "--max-seconds", "0.01", "--json", env=env))
    assert code == 8 and json.loads(out)["budget_exhausted"] == "max_seconds", err
    assert 200 < job.state["written"] < N

    code, out, err = finish(start_cli("run", job.plan, "--json", env=env))
    assert code == ExitCode.OK, err
    assert job.state["written"] == N and job.state["stage"] == "applied"
    assert_target(before, read_points(store, job.target_uri), minilm, job.translator)


@pytest.mark.parametrize("flag", ["--max-docs", "--max-seconds", "--max-tokens"])
def test_zero_budget_is_a_usage_error(flag, chroma_embedded_harness, corpus, tmp_path, fresh_name,
                                      monkeypatch):
    job = make_job(chroma_embedded_harness, corpus, tmp_path, fresh_name, monkeypatch, "reembed")
    code, out, err = finish(start_cli("apply", job.plan, flag, "0"))
    assert code == ExitCode.USAGE
    assert err.count("\n") == 1 and err.startswith("error: ") and flag in err and "fix:" in err
    assert not open_collection(job.target_uri).exists()


# --- bad input: one line naming the fix, nothing written ----------------------------------------

def test_reembed_without_a_text_field(chroma_embedded_harness, corpus, tmp_path, fresh_name):
    ids, old, payloads = corpus
    src = fresh_name("notext")
    chroma_embedded_harness.populate(src, ids, old, [{"title": p["title"]} for p in payloads])
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(p["text"] or "x" for p in payloads))
    code, out, err = finish(start_cli("plan", chroma_embedded_harness.uri(src), "--to-model", "minilm",
                                      "--texts", texts, "--strategy", "reembed", "-o", tmp_path / "p.toml"))
    assert code == ExitCode.USAGE and err.count("\n") == 1
    assert "no text field" in err and "--text-field" in err
    assert not (tmp_path / "p.toml").exists()


def test_reembed_with_a_text_field_holding_no_text(chroma_embedded_harness, corpus, tmp_path, fresh_name,
                                                   monkeypatch):
    ids, old, payloads = corpus
    empty = [{**p, "text": ""} for p in payloads]
    for p in empty[:200]:
        p["text"] = "some text"  # training pairs need text; the apply then meets a source without
    job = make_job(chroma_embedded_harness, (ids, old, empty), tmp_path, fresh_name, monkeypatch, "reembed")
    col = chroma_embedded_harness.client().get_collection(parse_uri(job.source_uri).collection)
    col.update(ids=[str(i) for i in ids], metadatas=[{**p, "text": ""} for p in payloads])
    code, out, err = finish(start_cli("apply", job.plan))
    assert code == ExitCode.DATA and err.count("\n") == 1
    assert "nothing to re-embed" in err and "text_field" in err
    assert not open_collection(job.target_uri).exists()


@pytest.fixture
def http_minilm(minilm):
    from embedding_server import EmbeddingServer
    server = EmbeddingServer(minilm.encode, model="minilm")
    base = server.start()
    yield server, base
    server.stop()


@pytest.mark.parametrize("fault", ["wrong_dimension", "empty_vectors", "errors"])
def test_http_encoder_faults(fault, http_minilm, minilm, chroma_embedded_harness, corpus, tmp_path,
                             fresh_name, monkeypatch):
    server, base = http_minilm
    spec = f"openai+{base}?model=minilm&retries=1&backoff=0.01"
    job = make_job(chroma_embedded_harness, corpus, tmp_path, fresh_name, monkeypatch, "reembed", model=spec)
    if fault == "wrong_dimension":
        server.encode = lambda texts: minilm.encode(texts)[:, :100]
        expected, words = ExitCode.DATA, "100-d"
    elif fault == "empty_vectors":
        server.encode = lambda texts: [[] for _ in texts]
        expected, words = ExitCode.DATA, "empty vectors"
    else:
        server.fail_next = [500] * 10
        expected, words = ExitCode.UNAVAILABLE, "HTTP 500"
    code, out, err = finish(start_cli("apply", job.plan))
    assert code == expected, err
    assert err.count("\n") == 1 and words in err and "fix:" in err
    assert not open_collection(job.target_uri).exists()
    assert job.state.get("written", 0) == 0


def test_http_encoder_tokens_budget(http_minilm, minilm, chroma_embedded_harness, corpus, tmp_path,
                                    fresh_name, monkeypatch):
    """--max-tokens counts the endpoint's usage where it reports some (here: none, so the
    estimate of ~4 characters a token), and stops resumably."""
    server, base = http_minilm
    spec = f"openai+{base}?model=minilm"
    job = make_job(chroma_embedded_harness, corpus, tmp_path, fresh_name, monkeypatch, "reembed", model=spec)
    code, out, err = finish(start_cli("apply", job.plan, "--max-tokens", "1000", "--json"))
    assert code == 8, err
    result = json.loads(out)
    assert result["budget_exhausted"] == "max_tokens" and 0 < result["written"] < N
    assert result["this_run"]["tokens"] >= 1000
    code, out, err = finish(start_cli("run", job.plan, "--json"))
    assert code == ExitCode.OK and job.state["written"] == N, err


# --- plan prints the decision table as far as it can be priced ---------------------------------

PLAN_ROADS = ["keep", "bridge", "translate", "hybrid_25", "hybrid_50", "hybrid_75", "reembed"]


def test_plan_prints_the_decision_table(chroma_embedded_harness, corpus, tmp_path, fresh_name):
    from click.testing import CliRunner
    from embedmigrate import cli
    ids, old, payloads = corpus
    src = fresh_name("plan")
    chroma_embedded_harness.populate(src, ids, old, payloads)
    args = ["plan", chroma_embedded_harness.uri(src), "--to-model", "minilm", "--text-field", "text",
            "--pairs", "150"]
    human = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "a.toml")], catch_exceptions=False)
    assert human.exit_code == 0, human.output
    lines = human.output.splitlines()
    head = next(n for n, line in enumerate(lines) if line.split()[:2] == ["road", "nDCG@10"])
    assert [line.split()[0] for line in lines[head + 1:head + 8]] == PLAN_ROADS
    assert lines[head + 8].strip().startswith("quality: measured by apply --dry-run after train")
    result = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "b.toml"), "--json"],
                                catch_exceptions=False)
    decision = json.loads(result.output)["decision"]
    rows = {r["road"]: r for r in decision["rows"]}
    assert list(rows) == PLAN_ROADS and decision["recommendation"] is None
    assert all(r["ndcg"] is None for r in rows.values())
    assert rows["keep"]["cpu_seconds"] == 0
    # re-embedding is timed here: 299 of 300 points have text, at MiniLM's speed on this CPU
    assert rows["reembed"]["cpu_seconds"] > rows["hybrid_75"]["cpu_seconds"] > rows["hybrid_25"][
        "cpu_seconds"] > rows["translate"]["cpu_seconds"] > 0
    assert "re-embedding timed on 64 of the source's texts" in decision["cost_basis"]
    assert "tokens_estimate" not in rows["reembed"]  # a local model spends no tokens


def test_plan_prices_an_http_encoder_in_tokens(http_minilm, chroma_embedded_harness, corpus, tmp_path,
                                               fresh_name):
    server, base = http_minilm
    ids, old, payloads = corpus
    src = fresh_name("plan")
    chroma_embedded_harness.populate(src, ids, old, payloads)
    out = commands.plan(chroma_embedded_harness.uri(src), f"openai+{base}?model=minilm",
                        output=tmp_path / "p.toml", text_field="text", pairs=150)
    rows = {r["road"]: r for r in out["decision"]["rows"]}
    texts = [p["text"] for p in payloads if p["text"]]
    per_text = sum(max(1, (len(t) + 3) // 4) for t in texts) / len(texts)  # the 4-characters rule
    assert rows["reembed"]["tokens_estimate"] == pytest.approx(len(texts) * per_text, rel=0.25)
    assert rows["hybrid_50"]["tokens_estimate"] == pytest.approx(rows["reembed"]["tokens_estimate"] / 2,
                                                                 rel=0.01)
    # timed on 32 texts only: an endpoint may bill every text plan sends
    assert "re-embedding timed on 32 of the source's texts" in out["decision"]["cost_basis"]


# --- the plan's [strategy] ------------------------------------------------------------------------

def _plan_text(strategy_section: str = "") -> str:
    return ('[source]\nuri = "chroma:///tmp/x/src"\ndim = 4\ntext_field = "text"\n'
            '[target]\nuri = "chroma:///tmp/x/dst"\n[model]\nnew = "minilm"\n'
            '[train]\nmethod = "ridge"\ncheckpoint = "ckpt"\n' + strategy_section)


def test_plans_without_a_strategy_translate(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(_plan_text())
    plan = load_plan(path)
    assert plan.strategy.name == "translate"
    assert commands.resolve_strategy(plan)[0] == "translate"
    plan.write(path)  # written back with its [strategy], it loads the same
    assert load_plan(path).strategy.name == "translate" and "[strategy]" in path.read_text()


def test_auto_follows_the_recommendation_and_says_why(tmp_path):
    path = tmp_path / "auto.toml"
    path.write_text(_plan_text('[strategy]\nname = "auto"\n'))
    plan = load_plan(path)
    assert commands.resolve_strategy(plan)[0] == "translate"
    assert commands.resolve_strategy(plan, "reembed") == ("reembed", "auto: the decision report "
                                                          "recommends reembed")
    strategy, reason = commands.resolve_strategy(plan, "keep")
    assert strategy == "translate" and "keep" in reason
    plan.source.text_field = ""
    strategy, reason = commands.resolve_strategy(plan, "hybrid")
    assert strategy == "translate" and "no text" in reason


@pytest.mark.parametrize("section,words", [
    ('[strategy]\nname = "rembed"\n', "unknown"),
    ('[strategy]\nname = "reembed"\n[source.x]\n', None),
    ('[strategy]\nmax_docs = -1\n', "negative"),
])
def test_bad_strategy_sections_are_one_line_errors(tmp_path, section, words):
    from embedmigrate.errors import UsageError
    path = tmp_path / "bad.toml"
    text = _plan_text(section) if words else _plan_text('[strategy]\nname = "reembed"\n').replace(
        'text_field = "text"\n', "")
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_plan(path)
    assert "\n" not in str(err.value) and err.value.fix
    assert (words or "text_field") in str(err.value)
