"""End to end: plan -> train -> dry run -> apply -> cutover -> rollback, on every
engine, with real packaged models (old: sre, a MiniLM fine-tuned away from general
text; new: MiniLM), gated on labelled queries: the shipped WordNet example sentences
whose definition is among the documents."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedmigrate import commands
from embedmigrate.connectors import Batch, open_collection, parse_uri
from embedmigrate.errors import ConflictError, UsageError
from embedmigrate.plan import load_plan
from embedmigrate.state import JobState, RunLock
from embedmigrate.translators import Translator, make_translator

N_DOCS = 400


@pytest.fixture(scope="session")
def corpus():
    """Real WordNet entries (shipped sample) embedded with the packaged sre model."""
    ids, vectors, payloads, _ = _corpus_and_queries()
    return ids, vectors, payloads


@pytest.fixture(scope="session")
def labelled_queries():
    return _corpus_and_queries()[3]


@functools.lru_cache(maxsize=1)
def _corpus_and_queries():
    from embedmigrate.demo_data import load_wordnet_sample
    from embedmigrate.encoders import open_encoder
    docs, queries = load_wordnet_sample()
    docs = docs[:N_DOCS]
    texts = [d["text"] for d in docs]
    vectors = open_encoder("sre").encode(texts)
    ids = list(range(1, len(docs) + 1))
    payloads = [{"text": t, "title": t.split(":")[0], "n": i} for i, t in zip(ids, texts)]
    position = {d["id"]: i for i, d in zip(ids, docs)}
    labelled = [{"text": q["text"], "doc_id": position[q["doc_id"]]} for q in queries
                if q["doc_id"] in position]
    return ids, vectors.astype(np.float32), payloads, labelled


def make_plan(engine, corpus, tmp_path, fresh_name, monkeypatch=None, **overrides):
    ids, vectors, payloads = corpus
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in _corpus_and_queries()[3]))
    src = fresh_name("src")
    engine.populate(src, ids, vectors, payloads, metric="cosine")
    live = engine.serve(src)
    password = parse_uri(engine.uri(src)).password
    if password and monkeypatch is not None:  # plans never store it: it comes from the environment
        monkeypatch.setenv("PGPASSWORD", password)
    # translate: these tests check the mechanics (payloads byte-identical, no provenance);
    # `auto` following the decision report is tested in test_gate.py
    opts = dict(text_field="text", pairs=300, live_name=live if live != src else "",
                from_model="sre", queries=str(qfile), strategy="translate")
    opts.update(overrides)
    result = commands.plan(engine.uri(src), "minilm", output=tmp_path / "plan.toml",
                           checkpoint=str(tmp_path / "ckpt"), **opts)
    return result, src, live


def read_by_id(uri):
    out = {}
    for batch, _ in open_collection(uri).scan(500):
        for i, v, p in zip(batch.ids, batch.vectors, batch.payloads):
            out[str(i)] = (v, p)
    return out


# one variant per engine, the closest to production (the conformance suite covers all six)
@pytest.mark.parametrize("engine_name", ["qdrant_local_harness", "qdrant_edge_harness",
                                         "chroma_server_harness", "postgres_tcp_harness"])
def test_plan_train_apply_rollback(engine_name, request, corpus, tmp_path, fresh_name, monkeypatch):
    engine = request.getfixturevalue(engine_name)
    planned, src, live = make_plan(engine, corpus, tmp_path, fresh_name, monkeypatch)
    plan_path = planned["plan"]
    assert planned["source"]["count"] == N_DOCS and planned["new_dim"] == 384
    text = Path(plan_path).read_text()
    assert "[gate]" in text and "# " in text  # commented and human-editable
    password = parse_uri(engine.uri(src)).password
    assert not password or password not in text

    trained = commands.train(plan_path, progress=False)
    assert trained["metrics"]["holdout_top1"] > 0.5
    report, paths = commands.dry_run(plan_path, progress=False)
    assert Path(paths["html"]).exists() and report.verdict == "PASS", report.checks
    assert open_collection(engine.uri(src)).count() == N_DOCS  # dry run wrote nothing
    assert not open_collection(load_plan(plan_path).target.uri).exists()

    source = read_by_id(engine.uri(src))  # (for Chroma and Postgres the live name is src's)
    result = commands.apply(plan_path, progress=False)
    assert result["verdict"] == "PASS" and result["ids_match"] and result["cutover"] == "done"
    translator = Translator.load(tmp_path / "ckpt")
    served = read_by_id(engine.uri(live))
    assert served.keys() == source.keys()
    some = sorted(source)[:50]
    want = translator.translate(np.stack([source[k][0] for k in some]))
    np.testing.assert_allclose(np.stack([served[k][0] for k in some]), want, atol=1e-5)
    assert all(served[k][1] == source[k][1] for k in source)

    if password:  # nothing the workflow wrote holds the password
        for f in [*Path(tmp_path).rglob("*")]:
            if f.is_file():
                assert password.encode() not in f.read_bytes(), f

    undone = commands.rollback(plan_path)
    # each engine says in words what serves the live name now (never the raw record)
    assert live in undone["outcome"] and "recorded as" not in undone["outcome"], undone
    back = read_by_id(engine.uri(live))
    np.testing.assert_allclose(np.stack([back[k][0] for k in some]),
                               np.stack([source[k][0] for k in some]), atol=1e-6)
    assert JobState(Path(plan_path).with_name("plan.state")).stage == "rolled_back"

    # cut over again, then drop the retired old collection: only on explicit request
    assert commands.run(plan_path, force=True)["cutover"] == "done"
    dropped = commands.cleanup(plan_path, drop_old=True)["dropped"]
    assert len(dropped) == 1
    assert not open_collection(parse_uri(engine.uri(src)).with_collection(dropped[0])).exists()
    assert open_collection(engine.uri(live)).count() == N_DOCS


@pytest.mark.parametrize("engine_name", ["chroma_embedded_harness"])
def test_gate_blocks_a_broken_translator(engine_name, request, corpus, tmp_path, fresh_name):
    engine = request.getfixturevalue(engine_name)
    planned, src, live = make_plan(engine, corpus, tmp_path, fresh_name)
    plan_path = planned["plan"]
    commands.train(plan_path, progress=False)
    # swap in a translator that ignores its input (what a collapsed GAN does)
    ids, vectors, _ = corpus
    broken = make_translator("mean").fit(vectors, vectors[::-1].copy())
    broken.save(tmp_path / "ckpt")
    out = run_cli("apply", plan_path, "--json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert result["verdict"] == "FAIL" and "blocked" in result["cutover"]
    served = read_by_id(engine.uri(live))
    np.testing.assert_allclose(served["1"][0], vectors[0], atol=1e-6)  # still the old collection


def run_cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "embedmigrate.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("engine_name", ["chroma_embedded_harness", "postgres_socket_harness",
                                         "qdrant_edge_harness"])
def test_killed_apply_resumes_exactly(engine_name, request, tmp_path, fresh_name):
    """kill -9 in the middle of apply; the re-run ends with exactly the source's
    ids, each vector translated once, payloads identical."""
    engine = request.getfixturevalue(engine_name)
    rng = np.random.default_rng(0)
    n = 4000
    ids = list(range(1, n + 1))
    vectors = rng.normal(size=(n, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [{"text": f"entry {i}", "n": i} for i in ids]
    src = fresh_name("crash")
    engine.populate(src, ids, vectors, payloads)
    plan_path = write_manual_plan(tmp_path, engine.uri(src), engine.uri(src + "_new"), dim=32, batch_size=10)
    # a real translator, trained outside the workflow (paired, exact)
    rot = np.linalg.qr(rng.normal(size=(32, 32)))[0].astype(np.float32)
    translator = make_translator("procrustes").fit(vectors, vectors @ rot, pairs=(vectors, vectors @ rot))
    translator.save(tmp_path / "ckpt")
    JobState(tmp_path / "plan.state").update(stage="trained")

    proc = subprocess.Popen([sys.executable, "-m", "embedmigrate.cli", "apply", str(plan_path),
                             "--no-cutover", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state_file = tmp_path / "plan.state" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            written = json.loads(state_file.read_text()).get("written", 0)
        except (OSError, ValueError):
            written = 0
        if written >= 300:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = json.loads(state_file.read_text())["written"]
    assert 0 < written < n, "the kill must land mid-run for this test to mean anything"

    out = run_cli("apply", plan_path, "--no-cutover", "--json")  # stale lock of the dead run is recovered
    assert out.returncode in (0, 1, 3), out.stderr  # the verdict is not what this test checks
    result = json.loads(out.stdout)
    assert result["ids_match"] and result["target_count"] == n
    got = read_by_id(engine.uri(src + "_new"))
    assert sorted(got) == sorted(map(str, ids))
    want = translator.translate(vectors)
    np.testing.assert_allclose(np.stack([got[str(i)][0] for i in ids]), want, atol=1e-5)
    assert [got[str(i)][1] for i in ids] == payloads


def write_manual_plan(tmp_path, source_uri, target_uri, *, dim, batch_size=256, extra=""):
    from embedmigrate.plan import Plan
    p = Plan()
    p.source.uri, p.source.dim, p.source.count = source_uri, dim, 0
    p.target.uri = target_uri
    p.target.live_name = ""
    p.model.new = "sre"
    p.sample.old, p.sample.new = 200, 0
    p.train.method = "procrustes"
    p.train.checkpoint = str(tmp_path / "ckpt")
    p.apply.batch_size = batch_size
    p.gate.sample = 200
    return p.write(tmp_path / "plan.toml")


def test_second_scheduler_is_refused_and_stale_lock_recovered(chroma_embedded_harness, corpus,
                                                             tmp_path, fresh_name):
    planned, _, _ = make_plan(chroma_embedded_harness, corpus, tmp_path, fresh_name)
    plan_path = planned["plan"]
    state_dir = Path(plan_path).with_name("plan.state")
    with RunLock(state_dir):
        out = run_cli("run", plan_path, "--json")
        assert out.returncode == 5
        assert "already running" in json.loads(out.stdout)["message"]
        with pytest.raises(ConflictError):
            commands.run(plan_path)
    # a lock left by a process that no longer exists is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket
    (state_dir / "lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead),
                                                "started": time.time(), "heartbeat": time.time()}))
    step = commands.run(plan_path)
    assert step["step"] == "train" and JobState(state_dir).stage == "trained"


def test_scheduled_job_catches_up_points_added_during_migration(qdrant_memory_harness, corpus,
                                                                tmp_path, fresh_name):
    engine = qdrant_memory_harness
    planned, src, live = make_plan(engine, corpus, tmp_path, fresh_name)
    plan_path = planned["plan"]
    assert commands.run(plan_path)["step"] == "train"
    assert commands.run(plan_path)["step"] == "apply"
    # the application keeps writing to the live collection before cutover
    ids, vectors, payloads = corpus
    extra = Batch([N_DOCS + 1, N_DOCS + 2, 5_000], vectors[:3] * 1.0,
                  [{"text": "added later", "title": "new", "n": k} for k in range(3)])
    open_collection(engine.uri(src)).write(extra)
    steps = []
    for _ in range(5):
        steps.append(commands.run(plan_path))
        if steps[-1]["step"] in ("cutover", "none"):
            break
    assert sum(s.get("caught_up", 0) for s in steps) == 3, steps
    assert steps[-1]["step"] == "cutover"
    served = read_by_id(engine.uri(live))
    assert len(served) == N_DOCS + 3 and "5000" in served


@pytest.mark.parametrize("content,fragment", [
    ("this is not toml [", "not valid TOML"),
    ("[source]\nuri = 'chroma:///x/y'\nbogus = 1\n", "unknown key 'bogus'"),
    ("[source]\nuri = 'chroma:///x/y'\ncount = 'many'\n", "should be a whole number"),
    ("[weird]\n", "unknown section"),
])
def test_bad_plan_files_give_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "plan.toml"
    path.write_text(content)
    out = run_cli("train", path)
    assert out.returncode == 2
    assert fragment in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_target_equal_to_source_is_refused(tmp_path):
    p = write_manual_plan(tmp_path, "chroma:///tmp/x/docs", "chroma:///tmp/x/docs", dim=8)
    with pytest.raises(UsageError, match="target is the source"):
        load_plan(p)


@pytest.mark.parametrize("args,code,fragment", [
    (["plan", "mongodb://h/x", "--to-model", "sre"], 2, "unknown URI scheme"),
    (["plan", "chroma:///nonexistent-dir-xyz/docs", "--to-model", "sre"], 4, "fix:"),
    (["apply", "missing-plan.toml"], 2, "does not exist"),
    (["translate", "no-such-checkpoint", "x.npy", "-o", "y.npy"], 4, "not a translator checkpoint"),
])
def test_cli_bad_input(tmp_path, args, code, fragment):
    out = subprocess.run([sys.executable, "-m", "embedmigrate.cli", *args], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert fragment in out.stderr and "Traceback" not in out.stderr


def test_plan_refuses_empty_source_and_missing_texts(chroma_embedded_harness, tmp_path, fresh_name):
    h = chroma_embedded_harness
    empty = fresh_name("empty")
    h.populate(empty, [], np.zeros((0, 8), np.float32), [], dim=8)
    out = run_cli("plan", h.uri(empty), "--to-model", "sre", "--json", "-o", tmp_path / "p.toml")
    assert out.returncode == 7 and "empty" in json.loads(out.stdout)["message"]
    rng = np.random.default_rng(0)
    notext = fresh_name("notext")
    h.populate(notext, [1, 2, 3], rng.normal(size=(3, 8)).astype(np.float32), [{"n": 1}] * 3)
    out = run_cli("plan", h.uri(notext), "--to-model", "sre", "-o", tmp_path / "p.toml")
    assert out.returncode == 2 and "--texts" in out.stderr


def test_translate_command_both_directions(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 16)).astype(np.float32)
    rot = np.linalg.qr(rng.normal(size=(16, 16)))[0].astype(np.float32)
    make_translator("procrustes").fit(x, x @ rot, pairs=(x, x @ rot)).save(tmp_path / "ck")
    np.save(tmp_path / "in.npy", x)
    out = run_cli("translate", tmp_path / "ck", tmp_path / "in.npy", "-o", tmp_path / "out.npy", "--json")
    assert out.returncode == 0, out.stderr
    y = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(y, Translator.load(tmp_path / "ck").translate(x), atol=1e-6)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.mean(np.sum(y * (xn @ rot), axis=1)) > 0.99  # the rotation was recovered
    out = run_cli("translate", tmp_path / "ck", tmp_path / "out.npy", "-o", tmp_path / "back.npy",
                  "--inverse")
    assert out.returncode == 0, out.stderr
    assert np.mean(np.sum(np.load(tmp_path / "back.npy") * xn, axis=1)) > 0.99


def test_plan_with_precomputed_new_vectors(chroma_embedded_harness, corpus, tmp_path, fresh_name):
    """An npy: model is a lookup table: plan must not try to time it on a probe sentence."""
    ids, vectors, payloads = corpus
    src = fresh_name("src")
    chroma_embedded_harness.populate(src, ids, vectors, payloads)
    texts = [p["text"] for p in payloads]
    np.save(tmp_path / "new.npy", vectors[:, ::-1].copy())
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    spec = f"npy:{tmp_path / 'new.npy'}?texts={tmp_path / 'texts.txt'}"
    result = commands.plan(chroma_embedded_harness.uri(src), spec, text_field="text",
                           output=tmp_path / "plan.toml", checkpoint=str(tmp_path / "ckpt"))
    assert result["estimate"]["encoder_texts_per_s_cpu"] == "precomputed"
    assert commands.train(result["plan"], progress=False)["metrics"]["holdout_top1"] > 0.9


def test_written_check_counts_zero_vectors_written_as_zero():
    from embedmigrate.report import QualityReport
    rng = np.random.default_rng(0)
    expected = rng.normal(size=(100, 8)).astype(np.float32)
    expected[:5] = 0.0  # zero vectors in the source translate to zero vectors
    checks = {}
    for name, written in {"exact": expected.copy(), "mangled": expected[::-1].copy()}.items():
        report = QualityReport(verdict="PASS", checks=[], metrics={})
        commands._add_written_check(report, expected, written)
        checks[name] = report.checks[-1]
    assert checks["exact"]["status"] == "PASS" and checks["exact"]["value"] == 1.0
    assert checks["mangled"]["status"] == "FAIL"
