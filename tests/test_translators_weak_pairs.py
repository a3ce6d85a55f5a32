"""Weak pairs from the old model (issue #13): a collection that stores no
texts still trains on pairs when the model that wrote it can be called.

End to end through ``plan`` / ``train`` on Qdrant local mode, with two real
packaged models from different families: WordLlama (static word vectors,
256-d) wrote the collection, MiniLM (a transformer, 384-d) is the new model.
Across families, unsupervised alignment is at chance; the weak pairs are
what makes the translator useful.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedmigrate import commands
from embedmigrate.errors import DataError
from embedmigrate.metrics import rank_metrics
from embedmigrate.translators import Translator

N_COLLECTION = 1500


@pytest.fixture(scope="module")
def wordnet():
    """The shipped WordNet sample: the first half is the collection (WordLlama
    vectors, no text stored), the second half the fresh texts for the new model."""
    from embedmigrate.demo_data import load_wordnet_sample
    from embedmigrate.encoders import open_encoder
    docs, _ = load_wordnet_sample()
    texts = [d["text"] for d in docs]
    collection, fresh = texts[:N_COLLECTION], texts[N_COLLECTION:]
    return {"collection": collection, "fresh": fresh,
            "old": open_encoder("wordllama").encode(collection).astype(np.float32),
            "new": open_encoder("minilm").encode(collection).astype(np.float32)}


def textless_plan(harness, wordnet, tmp_path, fresh_name, from_model="wordllama"):
    src = fresh_name("src")
    ids = list(range(1, N_COLLECTION + 1))
    harness.populate(src, ids, wordnet["old"], [{"n": i} for i in ids], metric="cosine")
    texts = tmp_path / "fresh.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in wordnet["fresh"]))
    return commands.plan(harness.uri(src), "minilm", output=tmp_path / "plan.toml",
                         texts=str(texts), from_model=from_model,
                         checkpoint=str(tmp_path / "ckpt"))["plan"]


def test_train_uses_weak_pairs_from_the_old_model(qdrant_local_harness, wordnet, tmp_path,
                                                  fresh_name):
    plan = textless_plan(qdrant_local_harness, wordnet, tmp_path, fresh_name)
    trained = commands.train(plan, progress=False)
    n_fresh = len(wordnet["fresh"])
    held = min(commands.WEAK_HOLDOUT, n_fresh // 5)
    assert trained["pairs_source"] == "old model"
    assert trained["pairs_used"] == n_fresh - held
    choice = trained["auto_choice"]
    assert choice["method"] in ("procrustes", "ridge")  # the paired branch, cross-validated
    assert "cross-validation" in choice["reason"]
    assert trained["metrics"]["holdout_source"] == "old model (weak pairs)"
    assert trained["metrics"]["holdout_pairs"] == held
    # the real test: the collection's own vectors, translated, find their true
    # MiniLM vectors (chance is 1 / 1,500; unsupervised alignment across these
    # families stays at chance, docs/translate_quality.md)
    translator = Translator.load(trained["checkpoint"])
    assert translator.meta["pairs_source"] == "old model"
    top1 = rank_metrics(translator.translate(wordnet["old"]), wordnet["new"])["top1"]
    assert top1 > 0.3


def test_plan_estimate_counts_the_old_model_encoding(qdrant_local_harness, wordnet, tmp_path,
                                                     fresh_name):
    """The plan-time estimate knows train will encode the fresh texts with the
    old model too, and that auto will then have pairs (not fit unsupervised)."""
    from embedmigrate.plan import load_plan
    n_fresh = len(wordnet["fresh"])
    with_old = load_plan(textless_plan(qdrant_local_harness, wordnet, tmp_path, fresh_name)).estimate
    assert with_old["encode_texts_old_model"] == n_fresh
    used = n_fresh - min(commands.WEAK_HOLDOUT, n_fresh // 5)
    assert with_old["method_expected"] == ("procrustes" if used >= 1000 else "semi")
    (tmp_path / "plan.toml").unlink()
    without = load_plan(textless_plan(qdrant_local_harness, wordnet, tmp_path, fresh_name,
                                      from_model="")).estimate
    assert without["encode_texts_old_model"] == 0 and without["method_expected"] == "linear"


def test_old_model_of_the_wrong_dimension_is_refused(qdrant_local_harness, wordnet, tmp_path,
                                                     fresh_name):
    plan = textless_plan(qdrant_local_harness, wordnet, tmp_path, fresh_name, from_model="sre")
    with pytest.raises(DataError, match="not the model that wrote them"):
        commands.train(plan, progress=False)
