"""The evidence gate: PASS only on evidence that search is at least as good as today.

Unit tests of the pieces (graded nDCG, intervals, BEIR files, group-field
proposals), a property test that agreement alone never PASSes, and end-to-end
migrations on real engines with packaged models, where sibling chunks and
labelled queries decide.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedmigrate import evidence as E
from embedmigrate.errors import DataError, UsageError
from embedmigrate.report import FAIL, PASS, SKIP, WARN, Thresholds, _evidence_check, _SEVERITY


# --- nDCG, intervals ----------------------------------------------------------------------

def test_ndcg_with_several_graded_relevant_documents():
    docs = np.eye(4, dtype=np.float32)
    # the query is closest to doc 0, then 1, then 2 (3 is orthogonal)
    q = np.array([[0.9, 0.5, 0.2, 0.0]], dtype=np.float32)
    rel = [{1: 2.0, 2: 1.0}]  # doc 1 very relevant, doc 2 somewhat; doc 0 not relevant
    got = E.ndcg_per_query(q, docs, rel, k=3)[0]
    dcg = 2.0 / np.log2(3) + 1.0 / np.log2(4)
    idcg = 2.0 / np.log2(2) + 1.0 / np.log2(3)
    assert got == pytest.approx(dcg / idcg)
    # the query's own document is excluded from its results (sibling queries)
    assert E.ndcg_per_query(q, docs, rel, k=2, exclude=np.array([0]))[0] == pytest.approx(1.0)


def test_ratio_interval_brackets_the_ratio_and_narrows_with_queries():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.4, 0.8, 2000), rng.uniform(0.2, 0.6, 2000)
    wide = E.ratio_interval(a[:50], b[:50])
    narrow = E.ratio_interval(a, b)
    assert narrow["low"] < narrow["ratio"] < narrow["high"]
    assert narrow["ratio"] == pytest.approx(a.mean() / b.mean())
    assert (narrow["high"] - narrow["low"]) < (wide["high"] - wide["low"])


# --- the verdict rule -------------------------------------------------------------------------

def summary(ratio, low, high, vs="today", kind=E.SIBLINGS):
    return {"kind": kind, "k": 10, "n_queries": 500,
            "ratio": {"vs": vs, "ratio": ratio, "low": low, "high": high}}


@pytest.mark.parametrize("ratio,low,high,status", [
    (2.0, 1.8, 2.2, PASS),      # clearly better
    (1.05, 1.0, 1.1, PASS),     # interval at or above the PASS line
    (1.02, 0.97, 1.07, WARN),   # straddles: not shown as good
    (0.93, 0.90, 0.96, WARN),   # straddles the FAIL line
    (0.6, 0.5, 0.7, FAIL),      # clearly worse
])
def test_evidence_check_judges_the_interval(ratio, low, high, status):
    assert _evidence_check(summary(ratio, low, high), Thresholds())["status"] == status


def test_no_evidence_is_unproven_warn():
    c = _evidence_check(E.no_evidence(), Thresholds())
    assert c["status"] == WARN and "unproven" in c["explanation"]
    c = _evidence_check({"kind": E.LABELS, "ratio": None, "reason": "unproven: no old model"},
                        Thresholds())
    assert c["status"] == WARN and "no old model" in c["explanation"]


def test_retired_old_model_compares_with_reembed():
    th = Thresholds()
    assert _evidence_check(summary(0.6, 0.55, 0.65, vs="reembed"), th)["status"] == WARN
    assert _evidence_check(summary(0.3, 0.25, 0.35, vs="reembed"), th)["status"] == FAIL
    assert _evidence_check(summary(1.0, 1.0, 1.0, vs="reembed"), th)["status"] == PASS


agreement = st.sampled_from([PASS, WARN, FAIL, SKIP])


@settings(max_examples=300, deadline=None)
@given(st.lists(agreement, min_size=0, max_size=12),
       st.sampled_from([None, "none-kind", "no-ratio"]))
def test_no_combination_of_agreement_values_passes_without_evidence(statuses, missing):
    """Whatever the overlaps, recalls, cycle error, distribution match and the
    translator's own confidence say, without evidence the verdict is not PASS."""
    ev = {None: None, "none-kind": E.no_evidence(),
          "no-ratio": {"kind": E.SIBLINGS, "ratio": None, "reason": "unproven: x"}}[missing]
    checks = [{"status": s} for s in statuses] + [_evidence_check(ev, Thresholds())]
    worst = max((c["status"] for c in checks), key=lambda s: _SEVERITY[s])
    assert worst in (WARN, FAIL)


# --- BEIR files ----------------------------------------------------------------------------

def write_beir(tmp_path, queries, qrels_lines, header="query-id\tcorpus-id\tscore"):
    qp, rp = tmp_path / "queries.jsonl", tmp_path / "qrels.tsv"
    qp.write_text("".join(json.dumps(q) + "\n" for q in queries))
    rp.write_text("\n".join([header, *qrels_lines]) + "\n")
    return qp, rp


def test_beir_files_with_several_graded_relevant_points(tmp_path):
    qp, rp = write_beir(tmp_path, [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"},
                                   {"_id": "q3", "text": "unjudged"}],
                        ["q1\t10\t2", "q1\t11\t1", "q1\t12\t0", "q2\t20\t1"])
    lq = E.read_labelled_queries(qp, rp)
    assert lq.ids == ["q1", "q2"] and lq.qrels["q1"] == {"10": 2.0, "11": 1.0, "12": 0.0}
    assert lq.corpus_ids == ["10", "11", "20"]  # grade 0 is not relevant


def test_beir_file_with_a_missing_column_is_one_line(tmp_path):
    qp, rp = write_beir(tmp_path, [{"_id": "q1", "text": "a"}], ["q1\t10"],
                        header="query-id\tcorpus-id")
    with pytest.raises(UsageError) as e:
        E.read_labelled_queries(qp, rp)
    assert "'score'" in e.value.message and "header" in e.value.fix and "\n" not in str(e.value)
    qp2, rp2 = write_beir(tmp_path, [{"text": "no id"}], ["q1\t10\t1"])
    with pytest.raises(UsageError, match="_id"):
        E.read_labelled_queries(qp2, rp2)


def test_legacy_doc_id_queries_still_work(tmp_path):
    qp = tmp_path / "q.jsonl"
    qp.write_text('{"text": "x", "doc_id": 7}\n{"text": "y", "doc_id": "8"}\n')
    lq = E.read_labelled_queries(qp)
    assert lq.source == "doc_id" and [lq.qrels[q] for q in lq.ids] == [{"7": 1.0}, {"8": 1.0}]


# --- group field proposal -----------------------------------------------------------------

def test_plan_proposes_a_field_that_groups_points():
    rng = np.random.default_rng(0)
    payloads = [{"article": f"a{rng.integers(0, 300)}", "lang": ["en", "fr"][i % 2],
                 "title": f"unique {i}", "n": i} for i in range(1000)]
    field, stats = E.propose_group_field(payloads, ["article", "lang", "title", "n"])
    assert field == "article" and stats["groups_of_2_or_more"] > 100
    # a category (2 values) and unique values are not groupings
    assert E.propose_group_field(payloads, ["lang", "title", "n"]) is None


# --- end to end on real engines ---------------------------------------------------------------
# A grouped collection made from the WordNet sample that ships in the package: each of
# N_GROUPS synsets contributes its gloss and its example sentence (two siblings, group
# field "synset"); N_SINGLES other glosses are distractors without a sibling.

from pathlib import Path  # noqa: E402

from embedmigrate import commands  # noqa: E402
from embedmigrate.connectors import open_collection  # noqa: E402

N_GROUPS, N_SINGLES = 250, 550


@pytest.fixture(scope="module", autouse=True)
def shared_encode_cache(tmp_path_factory):
    """Each test plans its own job; the same texts encoded by the same model are
    encoded once for the module (EMBEDMIGRATE_ENCODE_CACHE), which keeps it fast."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBEDMIGRATE_ENCODE_CACHE", str(tmp_path_factory.mktemp("encodings")))
        yield


@pytest.fixture(scope="session")
def grouped():
    from embedmigrate.demo_data import load_wordnet_sample
    docs, queries = load_wordnet_sample()
    by_id = {d["id"]: d["text"] for d in docs}
    pairs = queries[:N_GROUPS]
    linked = {q["doc_id"] for q in pairs}
    singles = [d for d in docs if d["id"] not in {q["doc_id"] for q in queries}][:N_SINGLES]
    texts, payloads = [], []
    for q in pairs:
        for kind, text in (("gloss", by_id[q["doc_id"]]), ("example", q["text"])):
            texts.append(text)
            payloads.append({"text": text, "synset": q["doc_id"], "kind": kind,
                             "uid": f"p{len(payloads)}"})
    for d in singles:
        assert d["id"] not in linked
        texts.append(d["text"])
        payloads.append({"text": d["text"], "synset": d["id"], "kind": "gloss",
                         "uid": f"p{len(payloads)}"})
    return {"texts": texts, "payloads": payloads, "ids": list(range(1, len(texts) + 1)),
            "queries": pairs, "vectors": {}}


def vectors_of(grouped, model):
    from embedmigrate.encoders import open_encoder
    if model not in grouped["vectors"]:
        grouped["vectors"][model] = open_encoder(model).encode(grouped["texts"]).astype(np.float32)
    return grouped["vectors"][model]


def grouped_plan(engine, grouped, old, new, tmp_path, fresh_name, **opts):
    src = fresh_name("grp")
    engine.populate(src, grouped["ids"], vectors_of(grouped, old), grouped["payloads"])
    options = dict(text_field="text", pairs=500, from_model=old, group_field="synset")
    options.update(opts)
    planned = commands.plan(engine.uri(src), new, output=tmp_path / "plan.toml",
                            checkpoint=str(tmp_path / "ckpt"), **options)
    return planned, src


@pytest.mark.parametrize("engine_name", ["chroma_embedded_harness", "postgres_socket_harness"])
def test_sibling_evidence_passes_a_migration_that_helps(engine_name, request, grouped, tmp_path,
                                                        fresh_name):
    """sre (a MiniLM fine-tuned away from general text) -> MiniLM: translating helps
    (labelled nDCG 0.147 -> 0.439 on the demo); siblings see it without labels."""
    engine = request.getfixturevalue(engine_name)
    planned, src = grouped_plan(engine, grouped, "sre", "minilm", tmp_path, fresh_name)
    assert planned["evidence"] == "siblings"
    commands.train(planned["plan"], progress=False)
    report, _ = commands.dry_run(planned["plan"], progress=False)
    d = report.to_dict()
    assert d["evidence"] == "siblings" and report.verdict == PASS, report.reasons
    q = d["search_quality"]
    assert q["ndcg"]["migrated"]["mean"] > q["ndcg"]["today"]["mean"]
    assert q["ratio"]["low"] >= 1.0 and q["n_queries"] >= 2 * N_GROUPS * 0.9
    assert d["decision"]["recommendation"] in ("translate", "hybrid")
    result = commands.apply(planned["plan"], progress=False)
    assert result["verdict"] == PASS and result["cutover"] == "done"
    assert result["evidence"] == "siblings"
    # verify measured the vectors the target really holds
    assert result["search_quality"]["migrated_road"] == "written"


@pytest.mark.parametrize("engine_name", ["qdrant_local_harness", "chroma_server_harness"])
def test_sibling_evidence_fails_a_migration_that_makes_search_worse(engine_name, request, grouped,
                                                                    tmp_path, fresh_name):
    """WordLlama -> MiniLM across model families: a translated index is worse than
    today's (labelled nDCG 0.624 vs 0.284 on the demo); siblings FAIL it, with no labels,
    and apply leaves the source serving."""
    engine = request.getfixturevalue(engine_name)
    planned, src = grouped_plan(engine, grouped, "wordllama", "minilm", tmp_path, fresh_name)
    commands.train(planned["plan"], progress=False)
    report, _ = commands.dry_run(planned["plan"], progress=False)
    d = report.to_dict()
    assert d["evidence"] == "siblings" and report.verdict == FAIL, report.reasons
    assert d["search_quality"]["ratio"]["high"] < 0.95
    assert d["answer"].startswith("No: search gets worse")
    assert d["decision"]["recommendation"] in ("reembed", "keep")
    result = commands.apply(planned["plan"], progress=False)
    assert result["verdict"] == FAIL and "blocked" in result["cutover"]


def test_no_evidence_is_unproven_and_not_cut_over_without_force(chroma_embedded_harness, grouped,
                                                                tmp_path, fresh_name):
    from embedmigrate.cli import main
    from click.testing import CliRunner
    planned, src = grouped_plan(chroma_embedded_harness, grouped, "sre", "minilm", tmp_path,
                                fresh_name, group_field="")
    assert planned["evidence"] == "none"
    # the plan proposes the grouping field, commented out
    text = Path(planned["plan"]).read_text()
    assert '# group_field = "synset"' in text and "\ngroup_field" not in text
    commands.train(planned["plan"], progress=False)
    result = commands.apply(planned["plan"], progress=False)
    assert result["verdict"] == WARN and result["evidence"] == "none"
    assert "unproven" in " ".join(c["explanation"] for c in result["failed_checks"])
    assert "blocked" in result["cutover"]
    out = CliRunner().invoke(main, ["cutover", planned["plan"], "--json"])
    assert out.exit_code == 5 and "--force" in out.output
    out = CliRunner().invoke(main, ["cutover", planned["plan"], "--force", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["forced"] is True
    forced = commands.apply(planned["plan"], progress=False, force=True)  # idempotent after cutover
    assert forced["cutover"] == "already done"


def test_force_records_the_cutover_in_report_and_json(chroma_embedded_harness, grouped, tmp_path,
                                                     fresh_name):
    planned, src = grouped_plan(chroma_embedded_harness, grouped, "sre", "minilm", tmp_path,
                                fresh_name, group_field="")
    commands.train(planned["plan"], progress=False)
    result = commands.apply(planned["plan"], progress=False, force=True)
    assert result["verdict"] == WARN and result["cutover"] == "done" and result["forced"] is True
    data = json.loads(Path(result["report"]["json"]).read_text())
    assert data["mode"] == "apply" and data["cutover"] == {"status": "done", "forced": True,
                                                           "verdict": WARN}
    assert data["evidence"] == "none"
    md = Path(result["report"]["md"]).read_text()
    assert "by --force" in md and "Dry run" not in md


def test_beir_labels_with_several_relevant_points(postgres_socket_harness, grouped, tmp_path,
                                                  fresh_name):
    """queries.jsonl + qrels.tsv: each example sentence's relevant points are its synset's
    gloss (grade 2) and the example stored in the collection (grade 1)."""
    ids, payloads = grouped["ids"], grouped["payloads"]
    where = {}
    for i, p in zip(ids, payloads):
        where.setdefault(p["synset"], {})[p["kind"]] = i
    queries = [{"_id": f"q{n}", "text": q["text"]} for n, q in enumerate(grouped["queries"])]
    lines = []
    for n, q in enumerate(grouped["queries"]):
        lines += [f"q{n}\t{where[q['doc_id']]['gloss']}\t2", f"q{n}\t{where[q['doc_id']]['example']}\t1"]
    qp, rp = write_beir(tmp_path, queries, lines)
    planned, src = grouped_plan(postgres_socket_harness, grouped, "sre", "minilm", tmp_path,
                                fresh_name, group_field="", queries=str(qp), qrels=str(rp))
    assert planned["evidence"] == "labels"
    commands.train(planned["plan"], progress=False)
    report, _ = commands.dry_run(planned["plan"], progress=False)
    d = report.to_dict()
    assert d["evidence"] == "labels" and d["search_quality"]["n_queries"] == N_GROUPS
    assert d["search_quality"]["ndcg"]["today"]["mean"] > 0
    assert report.verdict == PASS, report.reasons
    # re-encoding today's queries by hand gives the same nDCG for today's index
    from embedmigrate.encoders import open_encoder
    old = vectors_of(grouped, "sre")
    qv = open_encoder("sre").encode([q["text"] for q in queries], kind="query")
    rel = [{where[q["doc_id"]]["gloss"] - 1: 2.0, where[q["doc_id"]]["example"] - 1: 1.0}
           for q in grouped["queries"]]
    assert E.ndcg_per_query(qv, old, rel).mean() == pytest.approx(
        d["search_quality"]["ndcg"]["today"]["mean"], abs=0.05)


# --- bad input: one line naming the fix, nothing written -------------------------------------

def test_bad_evidence_inputs_are_refused_before_anything_is_written(chroma_embedded_harness,
                                                                     grouped, tmp_path, fresh_name):
    from embedmigrate.cli import main
    from click.testing import CliRunner
    engine = chroma_embedded_harness
    src = fresh_name("bad")
    engine.populate(src, grouped["ids"], vectors_of(grouped, "sre"), grouped["payloads"])
    uri, plan_file = engine.uri(src), tmp_path / "plan.toml"
    qp, rp = write_beir(tmp_path, [{"_id": "q1", "text": "a query"}], ["q1\t999999\t1"])
    qp_ok, rp_ok = write_beir(tmp_path / "..", [{"_id": "q1", "text": "a query"}], ["q1\t1\t1"])
    cases = [
        (["--queries", str(qp), "--qrels", str(rp), "--from-model", "sre"], 7, "not in the collection"),
        (["--group-field", "no_such_field"], 4, "no field 'no_such_field'"),
        (["--group-field", "uid"], 7, "no group of 2"),
        (["--queries", str(qp_ok), "--qrels", str(rp_ok)], 2, "old model"),
    ]
    for extra, code, words in cases:
        out = CliRunner().invoke(main, ["plan", uri, "--to-model", "minilm", "--text-field", "text",
                                        "-o", str(plan_file), *extra])
        assert out.exit_code == code, (extra, out.output)
        line = out.output.strip()
        assert words in line and "\n" not in line and "error:" in line, line
        assert not plan_file.exists()
    assert open_collection(uri).count() == len(grouped["ids"])


def test_qrels_without_any_relevant_point_is_one_line(tmp_path):
    qp, rp = write_beir(tmp_path, [{"_id": "q1", "text": "a"}], ["q1\t10\t0"])
    with pytest.raises(DataError, match="no query") as e:
        E.read_labelled_queries(qp, rp)
    assert "\n" not in str(e.value) and e.value.fix
