"""Unsupervised seeding of the linear translator (issue #13): today's matched
cluster graphs, VecMap's signatures + stochastic dictionary induction, and
Gromov-Wasserstein (POT) between weighted centroids of sampled points.

Each seeding must recover a hidden rotation plus noise of clustered data, and
the label-free verdict must refuse what has no correspondence: samples from
two differently structured worlds, and a new sample whose columns were
shuffled independently (same marginals, no joint structure).
"""

from __future__ import annotations

import numpy as np
import pytest

from embedmigrate.errors import DataError, MissingDependencyError
from embedmigrate.metrics import rank_metrics
from embedmigrate.translators import make_translator
from embedmigrate.translators.base import _normalise
from embedmigrate.translators.linear import (csls_matrix, gw_seed, iterative_normalise,
                                             similarity_signatures, vecmap_seed)

FAST = dict(restarts=2, anchor_runs=4, qap_restarts=5, anchor_subsample=2000, screen_iterations=8,
            pseudo_points=2000, icp_iterations=20, icp_batch=500, refine_iterations=3,
            min_points=200, vecmap_points=1500)


def clustered_world(seed: int, d_old=32, d_new=48, n=2000, noise=0.02):
    """Old = hierarchical Gaussian mixture on an anisotropic spectrum; new =
    old @ hidden semi-orthogonal map + noise. Returns old / new samples
    (different points) and held-out pairs."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(1.5, 0.3, d_old)
    top = rng.standard_normal((6, d_old)) * scale
    centres = (top[:, None, :] + rng.standard_normal((6, 8, d_old)) * scale * 0.5).reshape(-1, d_old)
    weights = rng.gamma(1.0, size=len(centres))
    spreads = rng.uniform(0.1, 0.3, size=len(centres))
    q, _ = np.linalg.qr(rng.standard_normal((d_new, d_new)))
    r = q[:d_old, :d_new]

    def texts(m):
        label = rng.choice(len(centres), size=m, p=weights / weights.sum())
        return _normalise((centres[label] + rng.standard_normal((m, d_old)) * spreads[label, None])
                          .astype(np.float32))

    def encode(x):
        return _normalise((x @ r + noise * rng.standard_normal((len(x), d_new))).astype(np.float32))

    held = texts(1000)
    return texts(n), encode(texts(n)), held, encode(held)


@pytest.mark.parametrize("seeding", ["graph", "vecmap", "gw", "both"])
def test_each_seeding_recovers_a_hidden_rotation(seeding):
    old, new, held_old, held_new = clustered_world(0)
    t = make_translator("linear", seeding=seeding, **FAST).fit(old, new)
    assert rank_metrics(t.translate(held_old), held_new)["top1"] >= 0.9
    assert t.meta["confidence"]["aligned"] is True, t.meta["confidence"]
    modularity = t.meta["confidence"]["diagnostics"]["joint_knn_modularity"]
    assert modularity["map"] < 0.1  # translated points mix with real new ones
    used = {r["seeding"] for r in t.meta["selection"]["restarts"]}
    assert used == ({"graph", "vecmap"} if seeding == "both" else {seeding})


def test_vecmap_seed_alone_finds_the_map():
    """The seed itself, before any refinement, already lands near the hidden map
    (a random rotation has top-1 ~0.001 here)."""
    old, new, held_old, held_new = clustered_world(1)
    mu_o, mu_n = old.mean(0), new.mean(0)
    w, report = vecmap_seed(_normalise(old - mu_o), _normalise(new - mu_n), 1500,
                            np.random.default_rng(0))
    pred = _normalise(_normalise(held_old - mu_o) @ w)
    assert rank_metrics(pred, _normalise(held_new - mu_n))["top1"] >= 0.5
    assert report["points"] == 1500


@pytest.mark.parametrize("seeding", ["graph", "vecmap", "gw"])
def test_mismatched_domains_are_refused(seeding):
    old, _, _, _ = clustered_world(0)
    _, other_new, _, _ = clustered_world(7)  # another world: no correspondence
    t = make_translator("linear", seeding=seeding, **FAST).fit(old, other_new)
    assert t.meta["confidence"]["aligned"] is False, t.meta["confidence"]


@pytest.mark.parametrize("seeding", ["graph", "vecmap", "gw"])
def test_column_shuffled_new_sample_is_refused(seeding):
    old, new, _, _ = clustered_world(0)
    rng = np.random.default_rng(3)
    shuffled = np.stack([rng.permutation(new[:, j]) for j in range(new.shape[1])], axis=1)
    t = make_translator("linear", seeding=seeding, **FAST).fit(old, _normalise(shuffled))
    assert t.meta["confidence"]["aligned"] is False, t.meta["confidence"]


def test_gw_seed_alone_finds_the_map():
    """The Gromov-Wasserstein coupling of the two clouds' weighted centroids,
    turned into a map before any refinement, lands near the hidden map."""
    old, new, held_old, held_new = clustered_world(1)
    mu_o, mu_n = old.mean(0), new.mean(0)
    w, report = gw_seed(_normalise(old - mu_o), _normalise(new - mu_n), 2000,
                        np.random.default_rng(0))
    pred = _normalise(_normalise(held_old - mu_o) @ w)
    assert rank_metrics(pred, _normalise(held_new - mu_n))["top1"] >= 0.5
    assert report["points"] == 2000 and report["gw_loss"] >= 0


def test_gw_seeding_without_pot_names_the_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "ot", None)  # what an environment without POT imports
    old, new, _, _ = clustered_world(0)
    with pytest.raises(MissingDependencyError, match="pot") as err:
        make_translator("linear", seeding="gw", **FAST).fit(old, new)
    assert "embedmigrate[ot]" in err.value.fix


def test_joint_knn_modularity_separates_mixed_from_apart():
    from embedmigrate.translators.linear import joint_knn_modularity
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    assert abs(joint_knn_modularity(a, b)) < 0.05  # same distribution: mixed
    assert joint_knn_modularity(a + 5.0, b - 5.0) > 0.45  # two separate clouds


def test_signature_building_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32) + 3.0
    z = iterative_normalise(x)
    assert np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    assert np.abs(z.mean(axis=0)).max() < 0.05
    # signatures do not change under a rotation of the space
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert np.allclose(similarity_signatures(z), similarity_signatures(z @ q.astype(np.float32)),
                       atol=1e-4)
    c = csls_matrix(z @ z.T)
    assert c.shape == (300, 300) and (c.argmax(axis=1) == np.arange(300)).all()


def test_unknown_seeding_is_refused():
    old, new, _, _ = clustered_world(0)
    with pytest.raises(DataError, match="seeding"):
        make_translator("linear", seeding="magic", **FAST).fit(old, new)


def test_csls_terms_in_one_pass_equal_the_two_neighbourhood_means():
    """The one-pass CSLS terms (speed, issue #13) equal the two separate
    k-nearest means, across block boundaries and with unequal sides."""
    from embedmigrate.translators.affine import csls_terms, knn_mean_sim
    rng = np.random.default_rng(0)
    a = _normalise(rng.standard_normal((2500, 24)).astype(np.float32))
    b = _normalise(rng.standard_normal((1800, 24)).astype(np.float32))
    r_a, r_b = csls_terms(a, b, 10, block=700)
    assert np.allclose(r_a, knn_mean_sim(a, b, 10), atol=1e-6)
    assert np.allclose(r_b, knn_mean_sim(b, a, 10), atol=1e-6)
