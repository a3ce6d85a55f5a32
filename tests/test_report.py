"""The quality report and gate, on real MiniLM and sre vectors of the WordNet sample
that ships with embedmigrate (encoded at test time: tests/conftest.py wordnet_vectors).

Translators are built here (the real ones live elsewhere): a least-squares map
fitted on real pairs ("good"), a random rotation that claims to be aligned, a
constant map, and the good map with its confidence saying aligned=False.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from embedmigrate import metrics as M
from embedmigrate.errors import DataError, ExitCode, UsageError
from embedmigrate.report import (FAIL, PASS, WARN, QualityReport, Thresholds, evaluate,
                                 exit_code_for, scrub_secrets)
from embedmigrate.translators.base import Translator

# MiniLM -> sre (its fine-tuned sibling) on the 3,000 shipped documents: MPNet would cost
# minutes to encode them. With MiniLM -> MPNet on the 50,000-document benchmark this used
# 4,000 pairs and 2,000 held-out rows; 1,500 pairs leave the query-text overlap at 0.247,
# under the WARN line 0.25, so 1,800 pairs (held out: the last 800 documents, ~1/4 of the
# 600 queries have their document there).
OLD_MODEL, NEW_MODEL = "minilm", "sre"
N_SAMPLE, N_PAIRS = 1800, 1800
FRESH_NEW = slice(1800, 2200)  # fresh new-model sample (texts disjoint from the pairs)
HELD_OUT = slice(2200, 3000)  # held-out pairs


# --- translators built for the test ------------------------------------------------

def least_squares(x, y, ridge=1e-3):
    """argmin_W |xW - y|² (+ a tiny ridge so 50 pairs in 384 dims still solve);
    normal equations: far cheaper than an SVD on a busy 2-core machine."""
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += ridge
    return np.linalg.solve(gram, x.T @ y).astype(np.float32)


class LeastSquares(Translator):
    """Good: linear least squares on real pairs, inverse fitted the other way."""
    method = "test-lstsq"

    def _fit(self, old, new, pairs):
        po, pn = pairs
        self.w, self.v = least_squares(po, pn), least_squares(pn, po)
        self.meta["confidence"] = {"aligned": True, "score": 0.9}

    def _translate(self, x):
        return M.normalise(x @ self.w)

    def _inverse(self, y):
        return M.normalise(y @ self.v)

    def _state(self):
        return {"w": self.w, "v": self.v}

    def _load_state(self, state):
        self.w, self.v = state["w"], state["v"]


class RandomRotation(LeastSquares):
    """Broken but self-confident: keeps every neighbourhood, lands nowhere."""
    method = "test-random-rotation"

    def _fit(self, old, new, pairs):
        d = max(old.shape[1], new.shape[1])
        q = np.linalg.qr(np.random.default_rng(1).standard_normal((d, d)))[0].astype(np.float32)
        self.w = q[:old.shape[1], :new.shape[1]]
        self.v = self.w.T
        self.meta["confidence"] = {"aligned": True}


class Constant(LeastSquares):
    """Broken: every vector becomes the new sample's mean direction."""
    method = "test-constant"

    def _fit(self, old, new, pairs):
        self.w = M.normalise(new.mean(axis=0, keepdims=True))
        self.v = M.normalise(old.mean(axis=0, keepdims=True))

    def _translate(self, x):
        return np.repeat(self.w, len(x), axis=0)

    def _inverse(self, y):
        return np.repeat(self.v, len(y), axis=0)


class NotAligned(LeastSquares):
    """The good map, but its own label-free confidence says it failed."""
    method = "test-not-aligned"

    def _fit(self, old, new, pairs):
        super()._fit(old, new, pairs)
        self.meta["confidence"] = {"aligned": False, "score": 0.12}


# --- data -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wn(wordnet_vectors):
    docs_old, docs_new = wordnet_vectors.docs(OLD_MODEL), wordnet_vectors.docs(NEW_MODEL)
    row_of = {doc_id: i for i, doc_id in enumerate(wordnet_vectors.doc_ids)}
    rel = np.array([row_of[doc_id] for doc_id in wordnet_vectors.query_doc_ids])
    in_held_out = (rel >= HELD_OUT.start) & (rel < HELD_OUT.stop)  # queries we have truth for
    return {
        "old": docs_old[:N_SAMPLE], "new": docs_new[FRESH_NEW],
        "pairs": (docs_old[:N_PAIRS], docs_new[:N_PAIRS]),
        "held_out": (docs_old[HELD_OUT], docs_new[HELD_OUT]),
        "q_old": wordnet_vectors.queries(OLD_MODEL)[in_held_out],
        "q_new": wordnet_vectors.queries(NEW_MODEL)[in_held_out],
        "relevant": rel[in_held_out] - HELD_OUT.start,
    }


_FITTED: dict = {}


def fitted(cls, wn):
    """Fit once per class; tests that change meta get a copy of it."""
    if cls not in _FITTED:
        _FITTED[cls] = cls().fit(wn["old"], wn["new"], pairs=wn["pairs"])
    t = _FITTED[cls]
    fresh = cls()
    fresh.old_dim, fresh.new_dim, fresh.w, fresh.v = t.old_dim, t.new_dim, t.w, t.v
    fresh.meta = dict(t.meta)
    return fresh


@pytest.fixture(scope="module")
def good_report(wn):
    return evaluate(fitted(LeastSquares, wn), wn["old"], thresholds=Thresholds(),
                    new_sample=wn["new"], held_out_pairs=wn["held_out"],
                    queries_new=wn["q_new"], queries_old=wn["q_old"], evidence=SHOWN_BETTER,
                    cost={"vectors": 50000, "estimated_minutes": 3.5,
                          "target": "postgresql://bob:hunter2@db.example:5432/app?table=docs"})


# evidence as embedmigrate.evidence.summarise writes it (measured in tests/test_gate.py):
# the migrated index's nDCG interval lies above today's
SHOWN_BETTER = {"kind": "labels", "k": 10, "n_queries": 600, "description": "600 labelled queries",
                "ndcg": {"today": {"mean": 0.15, "low": 0.12, "high": 0.17},
                         "migrated": {"mean": 0.44, "low": 0.40, "high": 0.47}},
                "roads": {"today": {"mean": 0.15, "low": 0.12, "high": 0.17},
                          "translate": {"mean": 0.44, "low": 0.40, "high": 0.47}},
                "ratio": {"vs": "today", "ratio": 2.9, "low": 2.6, "high": 3.4}}


def test_good_translator_without_evidence_is_only_unproven(wn):
    """The same good map, with every agreement check passing, is WARN without evidence."""
    rep = evaluate(fitted(LeastSquares, wn), wn["old"], new_sample=wn["new"],
                   held_out_pairs=wn["held_out"], queries_new=wn["q_new"], queries_old=wn["q_old"])
    assert rep.verdict == WARN and rep.to_dict()["evidence"] == "none"
    assert [c["status"] for c in rep.checks if c["status"] not in (PASS, "SKIP")] == [WARN]
    assert rep.reasons[0].startswith("WARN search quality (evidence): unproven")


def check(rep: QualityReport, name: str) -> dict:
    found = [c for c in rep.checks if c["name"] == name]
    assert found, f"no check {name!r} in {[c['name'] for c in rep.checks]}"
    return found[0]


# --- the gate ---------------------------------------------------------------------------

def test_good_translator_passes(good_report):
    rep = good_report
    assert rep.verdict == PASS, rep.reasons
    assert rep.exit_code == ExitCode.OK
    assert rep.metrics["ground_truth"]["top1"] > 0.9
    # it retains more of the true new-model results than the old index does today
    q = rep.metrics["queries"]
    assert q["recall_retained"] > q["old_native_retained"]
    assert check(rep, "beats old-native (recall retained)")["status"] == PASS
    assert rep.translator["method"] == "test-lstsq"
    assert rep.cost["vectors"] == 50000


def test_random_rotation_fails_without_labels(wn):
    """A rotation keeps every neighbourhood and inverts exactly, so structural
    checks pass; only the distribution check sees it lands off the new model."""
    rep = evaluate(fitted(RandomRotation, wn), wn["old"], new_sample=wn["new"])
    assert rep.verdict == FAIL
    assert check(rep, "neighbourhood overlap@10")["status"] == PASS
    assert check(rep, "cycle error")["status"] == PASS
    dm = check(rep, "distribution match")
    assert dm["status"] == FAIL and dm["value"] < 0.5
    assert any(r.startswith("FAIL distribution match") and "0.7" in r for r in rep.reasons)


def test_random_rotation_fails_with_pairs_as_worse_than_doing_nothing(wn):
    rep = evaluate(fitted(RandomRotation, wn), wn["old"], held_out_pairs=wn["held_out"])
    assert rep.verdict == FAIL
    assert check(rep, "ground truth top-1")["status"] == FAIL
    beats = check(rep, "beats old-native (recall retained)")
    assert beats["status"] == FAIL and "worse than doing nothing" in beats["explanation"]
    assert rep.exit_code == ExitCode.FAIL


def test_constant_map_fails_on_neighbourhoods(wn):
    rep = evaluate(fitted(Constant, wn), wn["old"], new_sample=wn["new"])
    assert rep.verdict == FAIL
    nb = check(rep, "neighbourhood overlap@10")
    assert nb["status"] == FAIL and nb["value"] < 0.1
    assert check(rep, "overlap@10 (stored vectors as queries)")["status"] == FAIL
    assert any("neighbourhood overlap@10" in r and "below the FAIL line 0.1" in r
               for r in rep.reasons)


def test_unaligned_confidence_fails(wn):
    translator = fitted(NotAligned, wn)
    rep = evaluate(translator, wn["old"], new_sample=wn["new"])
    assert rep.verdict == FAIL
    conf = check(rep, "translator confidence")
    assert conf["status"] == FAIL and "NOT aligned" in conf["explanation"]
    # the same map passes every measured check: only its own confidence blocks it
    others = [c for c in rep.checks if c["name"] != "translator confidence"]
    assert all(c["status"] != FAIL for c in others)
    relaxed = evaluate(translator, wn["old"], new_sample=wn["new"],
                       thresholds=Thresholds(require_aligned=False))
    assert check(relaxed, "translator confidence")["status"] == WARN
    assert relaxed.verdict == WARN and relaxed.exit_code == ExitCode.WARN


def test_missing_confidence_warns(wn):
    translator = fitted(LeastSquares, wn)
    translator.meta.pop("confidence")
    rep = evaluate(translator, wn["old"], new_sample=wn["new"])
    assert check(rep, "translator confidence")["status"] == WARN
    assert rep.verdict == WARN


def test_worse_than_old_native_ndcg_fails(wn, good_report):
    """On WordNet even the paired map loses nDCG against old-native (the README
    reference: about half): the gate must block it when labels are given."""
    rep = evaluate(fitted(LeastSquares, wn), wn["old"], held_out_pairs=wn["held_out"],
                   queries_new=wn["q_new"], queries_old=wn["q_old"], relevant=wn["relevant"])
    c = check(rep, "beats old-native (nDCG@10)")
    q = rep.metrics["queries"]
    assert q["translated"]["ndcg@10"] < 0.95 * q["old_native"]["ndcg@10"]
    assert c["status"] == FAIL and rep.verdict == FAIL
    assert "worse than doing nothing" in c["explanation"] and "0.95" in c["explanation"]


def test_worse_than_identity_fails(wn):
    """A no-op migration (same model both sides): an under-determined map
    fitted on 50 pairs must not beat leaving the vectors alone."""
    old = wn["old"]
    translator = LeastSquares().fit(old, old, pairs=(old[:50], old[:50]))
    held = wn["held_out"][0]
    rep = evaluate(translator, old, held_out_pairs=(held, held))
    ident = check(rep, "beats identity (recall retained)")
    assert rep.metrics["ground_truth"]["identity_retained"] == pytest.approx(1.0)
    assert ident["status"] == FAIL and rep.verdict == FAIL


class NaNOutput(LeastSquares):
    method = "test-nan"

    def _translate(self, x):
        out = super()._translate(x)
        out[::7] = np.nan
        return out


def test_nan_output_fails_instead_of_passing(wn):
    """NaN compares False with every threshold: the gate must not read that as a pass."""
    rep = evaluate(fitted(NaNOutput, wn), wn["old"])
    assert rep.verdict == FAIL
    assert check(rep, "finite output")["status"] == FAIL
    json.loads(rep.to_json())  # still serialisable
    assert "<img" not in rep.to_html()  # no plots without data


# --- score scale ---------------------------------------------------------------------------

def test_threshold_mapping_is_monotone(wn, good_report):
    mapping = good_report.metrics["score_shift"]["threshold_mapping"]
    assert len(mapping) >= 3
    news = [m["new"] for m in mapping]
    assert news == sorted(news)
    user = np.linspace(0.0, 1.0, 41)
    rep = evaluate(fitted(LeastSquares, wn), wn["old"], queries_new=wn["q_new"],
                   queries_old=wn["q_old"], score_thresholds=user[::-1])
    got = rep.metrics["score_shift"]["threshold_mapping"]
    assert [m["old"] for m in got] == sorted(m["old"] for m in got)
    assert np.all(np.diff([m["new"] for m in got]) >= 0)
    # the mapping keeps the share of hits: a threshold at the old median maps to the new median
    before, after = rep.series["scores_before"], rep.series["scores_after"]
    mid = M.threshold_mapping(before, after, [np.median(before)])[0]
    assert abs(np.mean(after <= mid) - 0.5) < 0.02


def test_l2_metric_reports_distances(wn):
    rep = evaluate(fitted(LeastSquares, wn), wn["old"], metric="l2")
    assert rep.metrics["score_shift"]["score"].startswith("distance")
    assert np.all(rep.series["scores_before"] >= 0)


# --- files ---------------------------------------------------------------------------------

def test_report_files(good_report, tmp_path):
    paths = good_report.write(tmp_path / "out")
    assert set(paths) == {"html", "json", "md"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["report.html", "report.json", "report.md"]  # no temp files left behind
    data = json.loads(paths["json"].read_text())
    assert data["verdict"] == PASS and data["checks"] and data["metrics"]["k"] == 10
    assert data["evidence"] == "labels" and data["answer"].startswith("Yes")
    assert data["search_quality"]["ratio"]["low"] == 2.6 and data["mode"] == "dry-run"
    md = paths["md"].read_text()
    assert "**PASS**" in md.splitlines()[0] and "| check |" in md
    # the report opens with the question, before the checks, and says it wrote nothing
    assert md.index("## Is search better after the migration?") < md.index("## Checks")
    assert "nothing was written" in md
    html_text = paths["html"].read_text()
    assert html_text.count("data:image/png;base64,") == 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html_text)  # self-contained


def test_report_never_contains_passwords(good_report, tmp_path):
    paths = good_report.write(tmp_path)
    for p in paths.values():
        text = p.read_text()
        assert "hunter2" not in text
    assert "postgresql://bob:***@db.example" in paths["json"].read_text()
    assert scrub_secrets("qdrant://h:6333/x?api_key=abc&y=1") == "qdrant://h:6333/x?api_key=***&y=1"


def test_unwritable_directory_is_a_usage_error(good_report, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError) as e:
        good_report.write(blocker / "reports")
    assert "\n" not in str(e.value) and e.value.fix and "writable" in e.value.fix


# --- configuration and inputs -----------------------------------------------------------

def test_thresholds_from_plan():
    th = Thresholds.from_dict({"min_top1": 0.6, "warn_top1": 0.9, "require_aligned": False})
    assert th.min_top1 == 0.6 and th.require_aligned is False
    with pytest.raises(UsageError, match="min_overlap_at_10x"):
        Thresholds.from_dict({"min_overlap_at_10x": 0.3})
    with pytest.raises(UsageError, match="warn_top1"):
        Thresholds(min_top1=0.9, warn_top1=0.5)


def test_exit_codes():
    assert (exit_code_for(PASS), exit_code_for(WARN), exit_code_for(FAIL)) == (0, 3, 1)


def test_bad_inputs(wn):
    translator = fitted(LeastSquares, wn)
    with pytest.raises(DataError):
        # vectors of another dimension where old ones belong (both models here are 384-d)
        evaluate(translator, wn["new"][:, :100])
    with pytest.raises(UsageError, match="metric"):
        evaluate(translator, wn["old"], metric="hamming")
    with pytest.raises(DataError, match="queries"):
        evaluate(translator, wn["old"], queries_new=wn["q_new"], queries_old=wn["q_old"][:5])


# --- the HTML in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_html_opens_in_headless_chromium(good_report, tmp_path):
    html_path = good_report.write(tmp_path / "report")["html"]
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(flags + ["--dump-dom", html_path.as_uri()], capture_output=True,
                         text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-verdict="PASS"' in dom.stdout and "Quality gate: PASS" in dom.stdout
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', dom.stdout)
    assert len(images) == 4
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    for bad in ("Uncaught", "ERR_FILE_NOT_FOUND", "ERR_NAME_NOT_RESOLVED", "Refused to load"):
        assert bad not in dom.stderr, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    run = subprocess.run(flags + ["--window-size=1280,2400", f"--screenshot={shot}",
                                  html_path.as_uri()], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and shot.stat().st_size > 50_000  # a rendered page, not blank
