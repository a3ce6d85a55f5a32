"""Unsupervised linear alignment: no pairs, two unpaired samples.

In the spirit of mini-vec2vec (Dar et al. 2025) and MUSE / VecMap refinement:

    1. centre + normalise both clouds;
    2. anchors from relational structure: k-means both clouds, match the two
       centroid-similarity graphs with a quadratic assignment (several
       restarts), repeated over several runs -> a few hundred anchor pairs
       (``seeding="graph"``, the default); or VecMap's initialisation
       (``seeding="vecmap"``, Artetxe et al. 2018): iterative normalisation,
       each point's sorted similarity distribution as a signature, matched
       with CSLS both ways, then stochastic dictionary induction; or
       Gromov-Wasserstein (``seeding="gw"``, POT): entropic GW between the
       weighted k-means centroids of 2,000 sampled points per side, many
       random starts, lowest GW loss kept, then the same dictionary
       induction; ``"both"`` alternates graph and vecmap over the restarts;
    3. pseudo-pairs: describe every point by its cosine to the anchors of its
       side (a relative representation, comparable across spaces) and pair
       each old point with the mean of its best-matching new points;
    4. orthogonal Procrustes on the pseudo-pairs;
    5. refinement: iterate {translate a sample, mean of its k nearest new
       points, Procrustes, damped update}, then a few rounds of Procrustes on
       mutual CSLS nearest neighbours over the whole clouds.

Robust by design: several independent restarts (each with its own anchors),
picked by a label-free score, and a confidence report that can say "this
did not align". Two clouds with no shared structure still produce *some*
rotation; what gives it away is that its translated points sit no closer to
new points, nor match them more sharply (CSLS), than those of a map fitted
the same way from a random start, while a real alignment closes a good part
of the gap to real new points (``alignment_confidence``).
``meta["confidence"]["aligned"]`` is False then, and the plan / the quality
gate must refuse to write it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import DataError, MissingDependencyError
from .base import _normalise
from .affine import (_AffineMap, centre_normalise, csls_terms, icp_refine, mean_of_rows,
                     mutual_csls_pairs, nearest_orthogonal, orthogonal_map, refine, shared_sims, side_stats,
                     topk_indices)


# --- small building blocks ----------------------------------------------------------------

def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 12) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; returns unit centroids."""
    n = len(x)
    centres = [x[rng.integers(n)]]
    closest = 1 - x @ centres[0]
    for _ in range(1, k):
        p = np.maximum(closest, 0) ** 2
        centres.append(x[rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)])
        closest = np.minimum(closest, 1 - x @ centres[-1])
    c = np.stack(centres)
    for _ in range(iterations):
        label = np.argmax(x @ c.T, axis=1)
        sums = (label[None, :] == np.arange(k)[:, None]).astype(np.float32) @ x
        empty = ~np.any(sums, axis=1)
        sums[empty] = x[rng.integers(n, size=int(empty.sum()))]
        c = _normalise(sums)
    return c


def similarity_graph(c: np.ndarray) -> np.ndarray:
    """Centred cosine similarities between centroids (the diagonal is kept:
    cluster tightness is structure too)."""
    s = c @ c.T
    return s - s.mean()


def match_graphs(a: np.ndarray, b: np.ndarray, restarts: int, rng) -> tuple[np.ndarray, float]:
    """Permutation p maximising trace(a P b P^T) (quadratic assignment, 2-opt
    from random starts). Returns (p, correlation of a with b[p][:, p])."""
    best_p, best_fun = None, None
    for _ in range(restarts):
        seed = int(rng.integers(2**31))
        p, fun = qap_2opt(a, b, np.random.default_rng(seed))
        if best_p is None or fun > best_fun:
            best_p, best_fun = p, fun
    return best_p, float(np.corrcoef(a.ravel(), b[best_p][:, best_p].ravel())[0, 1])


def qap_2opt(a: np.ndarray, b: np.ndarray, rng) -> tuple[np.ndarray, float]:
    """scipy's quadratic_assignment(a, b, method="2opt", maximize=True) with
    the same result (same start, same first-improvement scan over the swaps
    (i, j), i < j, in order, same exact score test), ~3x faster: the score
    change of every swap comes from two matrix products at once, and only
    swaps that may improve (change > -tol, far above float32 rounding) get
    scipy's exact score. scipy rescored the full matrix for every swap in
    Python: 1.1 M calls, 7.7 s of an 80 s fit (tests/test_translators_linear.py
    checks the two agree)."""
    n = len(a)
    perm = rng.permutation(np.arange(n))
    best = np.sum(a * b[perm][:, perm])
    iu, ju = np.triu_indices(n, 1)  # swapping an entry with itself changes nothing
    a64 = a.astype(np.float64)
    tol = 1e-5 * float(np.abs(a64).sum() * np.abs(b).max()) + 1e-12
    while True:
        delta = _swap_gains(a64, b[perm][:, perm].astype(np.float64))
        for t in np.flatnonzero(delta[iu, ju] > -tol):
            i, j = iu[t], ju[t]
            perm[i], perm[j] = perm[j], perm[i]
            score = np.sum(a * b[perm][:, perm])
            if score > best:
                best = score
                break
            perm[i], perm[j] = perm[j], perm[i]
        else:
            return perm, best


def _swap_gains(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """g[i, j] = sum(a * c') - sum(a * c), c' = c with rows i, j and columns
    i, j swapped: the rows' and the columns' terms (each with the 2 x 2 block
    removed) plus the block's own change."""
    x, y = a @ c.T, a.T @ c
    dx, dy = np.diag(x), np.diag(y)
    rows = x + x.T - dx[:, None] - dx[None, :]
    cols = y + y.T - dy[:, None] - dy[None, :]
    ad, cd = np.diag(a), np.diag(c)
    # remove b = i, j from the rows' sums and a = i, j from the columns' sums
    rows -= (ad[:, None] - a.T) * (c.T - cd[:, None])       # b = i: (a_ii - a_ji)(c_ji - c_ii)
    rows -= (a - ad[None, :]) * (cd[None, :] - c)           # b = j: (a_ij - a_jj)(c_jj - c_ij)
    cols -= (ad[:, None] - a) * (c - cd[:, None])           # a = i: (a_ii - a_ij)(c_ij - c_ii)
    cols -= (a.T - ad[None, :]) * (cd[None, :] - c.T)       # a = j: (a_ji - a_jj)(c_jj - c_ji)
    block = (ad[:, None] - ad[None, :]) * (cd[None, :] - cd[:, None]) + (a - a.T) * (c.T - c)
    return rows + cols + block


def discover_anchors(xo, xn, runs: int, clusters: int, qap_restarts: int, subsample: int, rng):
    """Anchor pairs (centroid of old cluster, matched centroid of new cluster)
    from ``runs`` independent clusterings; runs whose graphs match poorly are
    dropped (their correlation is reported)."""
    anchors_o, anchors_n, scores = [], [], []
    for _ in range(runs):
        so = xo[rng.choice(len(xo), min(subsample, len(xo)), replace=False)]
        sn = xn[rng.choice(len(xn), min(subsample, len(xn)), replace=False)]
        co, cn = kmeans(so, clusters, rng), kmeans(sn, clusters, rng)
        p, corr = match_graphs(similarity_graph(co), similarity_graph(cn), qap_restarts, rng)
        anchors_o.append(co)
        anchors_n.append(cn[p])
        scores.append(corr)
    scores = np.array(scores)
    keep = scores >= np.median(scores) - 0.1  # drop clear QAP failures
    ao = np.concatenate([a for a, k in zip(anchors_o, keep) if k])
    an = np.concatenate([a for a, k in zip(anchors_n, keep) if k])
    return ao, an, scores


def relative(x: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Relative representation: cosine to each anchor, standardised per anchor
    then per row, so the two spaces' descriptions are comparable."""
    r = x @ anchors.T
    r = (r - r.mean(axis=0)) / (r.std(axis=0) + 1e-6)
    return _normalise(r)


def pseudo_pairs(xo, xn, ao, an, k: int, max_points: int, rng):
    """Old points paired with the mean of their k best new matches by relative
    representation (works before any map exists)."""
    idx = rng.choice(len(xo), min(max_points, len(xo)), replace=False)
    ro, rn = relative(xo[idx], ao), relative(xn, an)
    out = np.empty((len(idx), xn.shape[1]), np.float32)
    for s in range(0, len(idx), 2048):
        out[s:s + 2048] = mean_of_rows(xn, topk_indices(ro[s:s + 2048] @ rn.T, min(k, len(xn))))
    return xo[idx], _normalise(out)


# --- label-free diagnostics ----------------------------------------------------------------

def fit_score(xo: np.ndarray, xn: np.ndarray, w: np.ndarray, k: int = 10) -> dict:
    """How well the translated old cloud sits on the new cloud, without labels:
    mean similarity of a translated point to its k nearest new points, and the
    share of translated points that are mutual CSLS neighbours of a new point."""
    t = xo @ w
    sims = shared_sims(t, xn)
    terms = csls_terms(t, xn, k, sims=sims)
    i, _, csls = mutual_csls_pairs(t, xn, k, terms=terms, sims=sims)
    return {"knn_sim": float(terms[0].mean()),
            "mutual_nn": float(len(i) / len(xo)),
            "csls": float(csls.mean()) if len(csls) else 0.0}


def knn_and_best_csls(queries: np.ndarray, pool: np.ndarray, k: int = 10,
                      block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the mean similarity to its k nearest pool points (knn_sim),
    and the CSLS score (Conneau et al. 2018) of its best pool match: how much
    closer it is than the two neighbourhoods' typical similarity (a query lost
    in a crowd, or matched to a hub, scores ~0). Both from one csls_terms pass."""
    sims = shared_sims(queries, pool)
    r_q, r_p = csls_terms(queries, pool, k, sims=sims)
    out = np.empty(len(queries), np.float64)
    for s in range(0, len(queries), block):
        block_sims = sims[s:s + block] if sims is not None else queries[s:s + block] @ pool.T
        out[s:s + block] = np.max(2 * block_sims - r_p[None, :], axis=1)
    return r_q.astype(np.float64), out - r_q


def _gain_over_rival(s_map: np.ndarray, s_rival: np.ndarray, s_natural: np.ndarray) -> tuple:
    """(share of the way from the rival to natural, z of the paired gain)."""
    d = s_map - s_rival  # the same held-back points under both maps: paired
    room = float(s_natural.mean() - s_rival.mean())
    share = float(d.mean() / room) if room > 0 else 0.0
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    z = float(d.mean() / se) if se > 0 else 0.0
    return share, z


def alignment_confidence(xo_eval: np.ndarray, xn_ref: np.ndarray, xn_pool: np.ndarray,
                         w: np.ndarray, rivals: dict, k: int = 10, min_csls_gain: float = 0.15,
                         min_knn_gain: float = 0.25, min_z: float = 3.0) -> dict:
    """Label-free test that ``w`` aligns the clouds: it must clearly beat every
    rival solution (``rivals``: name -> map), i.e. maps the same optimiser
    reached without finding a correspondence: from a random start with the
    same budget (the null), and restarts that landed on a different map.

    Two per-point statistics of held-back old points translated into a pool of
    new points, each a necessary condition of a correct map (which makes the
    translated points look like real new points):
      knn_sim  mean cosine to the k nearest pool points (lands where new points are dense);
      CSLS     CSLS of the best pool match (matches one point sharply, not a crowd).
    Each is also computed for held-back *new* points in place of translated
    ones: the natural ceiling. Against each rival,
      gain = (map - rival) / (natural - rival), the share of the way from an
             optimised but arbitrary map to "as good as a real new point";
      z    = the mean paired gain (same points, both maps) over its standard error.

    Why these and not the mutual-NN rate or restart agreement alone (measured
    on WordNet MiniLM <-> MPNet at 20k x 20k, docs/translate_quality_notes.md):
    a random rotation has a *higher* mutual-NN rate (0.91) than the good map
    (0.87), and restarts fail independently (1 of 3 aligned in each
    direction), so requiring two to agree rejected both good maps.

    Thresholds (every rival, both gains and both z), measured on the full
    WordNet protocol: the good maps (top-1 0.97 / 0.91) gain 0.32-0.36 in
    CSLS and 0.41-0.49 in knn_sim over each rival; failed fits (column-shuffled
    new sample, stopped after the screen, mismatched domains, MiniLM ->
    WordLlama) gain at most 0.045 in CSLS and 0.15 in knn_sim over the random
    start. CSLS is the sharp separator on real text: 0.15 leaves a factor > 2
    to the good maps and > 3 to the failures. knn_sim separates less (0.25:
    factor 1.6 each side; a fit stopped after 3 ICP rounds on 3,000 points
    even gained 0.35 over its equally short null), so it is a second
    necessary condition, not a test on its own; it is what catches clouds
    without fine structure, where CSLS is near 0 for every map (synthetic
    mixtures: a wrongly matched pair gained 0.27 in CSLS but -0.06 in
    knn_sim). z >= 3 (three standard errors of the paired gain)
    keeps out noise when natural - rival is tiny (structureless clouds).
    """
    return confidence_of_translations(
        xo_eval @ w, {name: xo_eval @ rival_w for name, rival_w in rivals.items()},
        xn_ref, xn_pool, k, min_csls_gain, min_knn_gain, min_z)


def confidence_of_translations(translated: np.ndarray, rivals: dict, xn_ref: np.ndarray,
                               xn_pool: np.ndarray, k: int = 10, min_csls_gain: float = 0.15,
                               min_knn_gain: float = 0.25, min_z: float = 3.0) -> dict:
    """``alignment_confidence`` for any translator: ``translated`` and each
    rival (name -> its translation of the same held-back old points) are
    compared in the new space (vec2vec uses it with a null run)."""
    t = _normalise(translated)
    stat = ("knn_sim", "csls")

    def stats(x):
        return dict(zip(stat, knn_and_best_csls(x, xn_pool, k)))

    mine, natural = stats(t), stats(xn_ref)
    minimum = {"csls": min_csls_gain, "knn_sim": min_knn_gain}
    report, aligned = {}, bool(rivals)
    for name, rival_t in rivals.items():
        rival = stats(_normalise(rival_t))
        report[name] = {}
        for s in stat:
            gain, z = _gain_over_rival(mine[s], rival[s], natural[s])
            report[name].update({f"{s}_gain": gain, f"{s}_z": z, f"{s}_rival": float(rival[s].mean())})
            aligned = aligned and gain >= minimum[s] and z >= min_z
    weakest = {key: min(r[key] for r in report.values()) for key in
               ("csls_gain", "csls_z", "knn_sim_gain", "knn_sim_z")} if report else {}
    return {"aligned": aligned, **weakest,
            "csls": float(mine["csls"].mean()), "csls_natural": float(natural["csls"].mean()),
            "knn_sim": float(mine["knn_sim"].mean()),
            "knn_sim_natural": float(natural["knn_sim"].mean()), "rivals": report}


# --- VecMap-style seeding (Artetxe et al. 2018) -------------------------------------------

def iterative_normalise(x: np.ndarray, rounds: int = 5) -> np.ndarray:
    """Unit length and mean centring, repeated (Zhang et al. 2019): afterwards
    the cloud is both centred and on the sphere, which the signatures assume."""
    for _ in range(rounds):
        x = _normalise(x)
        x = x - x.mean(axis=0)
    return _normalise(x)


def similarity_signatures(x: np.ndarray) -> np.ndarray:
    """Each point described by the sorted distribution of its similarities to
    the other points of its own side (rows of sqrt(X X^T), sorted,
    normalised): comparable across two models that agree on relative
    geometry, whatever their dimensions or rotation."""
    u, s, _ = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    sim = (u * s) @ u.T
    sim.sort(axis=1)
    sim = sim - sim.mean(axis=1, keepdims=True)
    return _normalise(sim.astype(np.float32))


def csls_matrix(sim: np.ndarray, k: int = 10) -> np.ndarray:
    """CSLS on a full similarity matrix (both neighbourhoods' mean top-k removed)."""
    k = min(k, sim.shape[0] - 1, sim.shape[1] - 1)
    fwd = np.mean(np.partition(sim, -k, axis=1)[:, -k:], axis=1)
    bwd = np.mean(np.partition(sim, -k, axis=0)[-k:, :], axis=0)
    return 2 * sim - fwd[:, None] - bwd[None, :]


def union_dictionary(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best match of every row and of every column (VecMap's 'union' direction)."""
    rows = np.arange(sim.shape[0])
    cols = np.arange(sim.shape[1])
    return (np.concatenate([rows, sim.argmax(axis=0)]),
            np.concatenate([sim.argmax(axis=1), cols]))


def vecmap_seed(xo: np.ndarray, xn: np.ndarray, n: int, rng, k: int = 10,
                schedule=(0.1, 0.2, 0.4, 0.8, 1.0), rounds: int = 4) -> tuple[np.ndarray, dict]:
    """VecMap's fully unsupervised initialisation, on n sampled points per side:
    iterative normalisation, similarity-distribution signatures matched with
    CSLS in both directions, then stochastic dictionary induction. Returns (W, report)."""
    a, b = sample_pair(xo, xn, n, rng)
    src, trg = union_dictionary(csls_matrix(similarity_signatures(a) @ similarity_signatures(b).T, k))
    w, objective = dictionary_induction(a, b, src, trg, rng, k, schedule, rounds)
    return w, {"points": len(a), "csls_objective": objective}


def sample_pair(xo: np.ndarray, xn: np.ndarray, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """n random points per side (as many on both), iteratively normalised."""
    a = iterative_normalise(xo[rng.choice(len(xo), min(n, len(xo)), replace=False)])
    b = iterative_normalise(xn[rng.choice(len(xn), min(n, len(xn)), replace=False)])
    m = min(len(a), len(b))
    return a[:m], b[:m]


def dictionary_induction(a, b, src, trg, rng, k: int = 10, schedule=(0.1, 0.2, 0.4, 0.8, 1.0),
                         rounds: int = 4) -> tuple[np.ndarray, float]:
    """VecMap's stochastic dictionary induction from a first dictionary
    (rows src of a match rows trg of b): Procrustes on the dictionary,
    re-induce it with CSLS from a similarity matrix whose entries are kept
    with probability p, p rising on the schedule (early randomness lets it
    leave a poor first dictionary). Returns (W, final mean best CSLS)."""
    objective = 0.0
    for p in schedule:
        for _ in range(rounds):
            w = orthogonal_map(a[src], b[trg])
            sim = csls_matrix(a @ w @ b.T, k)
            objective = float(np.mean(sim.max(axis=1)))
            if p < 1.0:  # stochastic dictionary induction: drop entries at random
                sim = np.where(rng.random(sim.shape) < p, sim, -np.inf)
            src, trg = union_dictionary(sim)
    return orthogonal_map(a[src], b[trg]), objective


def weighted_centroids(x: np.ndarray, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """k-means centroids of x and the share of x each one holds."""
    c = kmeans(x, k, rng)
    mass = np.bincount(np.argmax(x @ c.T, axis=1), minlength=k) + 1e-3  # no empty cluster at 0
    return c, mass / mass.sum()


def gw_coupling(ca, pa, cb, pb, rng, epsilon: float, starts: int) -> tuple[np.ndarray, float]:
    """Entropic Gromov-Wasserstein coupling (Peyre et al. 2016, POT) between
    two weighted point sets, from their intra-space cosine distance matrices,
    each scaled to mean 1 (the two models' similarity ranges differ): a soft
    matching of points that play the same role in their own cloud, which
    needs no shared coordinates. GW is not convex: POT's default start (the
    uniform coupling) is a fixed point for symmetric costs (on WordNet it
    stopped at once, at chance), so it runs from ``starts`` random couplings
    and keeps the lowest GW loss (label-free). Returns (coupling, loss)."""
    try:
        import ot
    except ImportError:
        raise MissingDependencyError("pot", "ot") from None
    c1 = 1.0 - (ca @ ca.T).astype(np.float64)
    c2 = 1.0 - (cb @ cb.T).astype(np.float64)
    c1, c2 = c1 / c1.mean(), c2 / c2.mean()
    best, best_loss = None, np.inf
    with warnings.catch_warnings():  # an unconverged inner Sinkhorn is judged by the loss
        warnings.simplefilter("ignore")
        for _ in range(starts):
            g0 = ot.sinkhorn(pa, pb, -np.log(rng.random((len(pa), len(pb))) + 1e-12), 1.0,
                             numItermax=200)
            coupling, log = ot.gromov.entropic_gromov_wasserstein(
                c1, c2, pa, pb, "square_loss", epsilon=epsilon, symmetric=True, G0=g0,
                max_iter=200, tol=1e-9, log=True, numItermax=200, stopThr=1e-7)
            if float(log["gw_dist"]) < best_loss:
                best, best_loss = coupling, float(log["gw_dist"])
    return best, best_loss


def gw_seed(xo: np.ndarray, xn: np.ndarray, n: int, rng, k: int = 10, clusters: int = 60,
            epsilon: float = 5e-3, starts: int = 30) -> tuple[np.ndarray, dict]:
    """Gromov-Wasserstein seeding: n sampled points per side, summarised by
    ``clusters`` k-means centroids weighted by their share of the points;
    entropic GW between the two weighted centroid sets (many cheap random
    starts, lowest loss kept); Procrustes of each old centroid onto its
    coupling-weighted mean of new centroids; then the first dictionary on the
    points is induced from that map and refined by the same stochastic
    dictionary induction as the VecMap seed. Returns (W, report).

    Why centroids and not GW on the points themselves (measured on the
    synthetic mixtures of tests/test_translators_seeding.py, 2-core machine):
    entropic GW on 800 raw points per side took 5-27 s CPU per start and
    stalled in local optima (seed top-1 0.06-0.26, pipeline top-1 0.0);
    on 60 weighted centroids a start costs ~0.2 s, and the lowest loss of 30
    starts gave seeds with top-1 0.40-0.98 on 5 of 5 worlds."""
    a, b = sample_pair(xo, xn, n, rng)
    ca, pa = weighted_centroids(a, clusters, rng)
    cb, pb = weighted_centroids(b, clusters, rng)
    coupling, loss = gw_coupling(ca, pa, cb, pb, rng, epsilon, starts)
    w = orthogonal_map(ca, _normalise(coupling @ cb / coupling.sum(axis=1, keepdims=True)))
    src, trg = union_dictionary(csls_matrix(a @ w @ b.T, k))
    w, objective = dictionary_induction(a, b, src, trg, rng, k)
    return w, {"points": len(a), "gw_loss": loss, "csls_objective": objective}


def joint_knn_modularity(translated: np.ndarray, real: np.ndarray, k: int = 10) -> float:
    """Modularity of the split {translated old points, real new points} in their
    joint (symmetrised) k-nearest-neighbour graph. About 0 when the translated
    points mix with the real ones as if they were more of them; towards 0.5
    when the two form separate clouds. A diagnostic, not part of the verdict:
    a rotation that only matches the distribution also mixes well."""
    x = _normalise(np.concatenate([translated, real]).astype(np.float32))
    n, side = len(x), np.r_[np.zeros(len(translated), bool), np.ones(len(real), bool)]
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nbrs = topk_indices(sims, min(k, n - 1))
    rows = np.repeat(np.arange(n), nbrs.shape[1])
    adj = np.zeros((n, n), bool)
    adj[rows, nbrs.ravel()] = True
    adj |= adj.T
    degree = adj.sum(axis=1).astype(np.float64)
    two_m = degree.sum()
    q = 0.0
    for group in (side, ~side):
        inside = adj[np.ix_(group, group)].sum()
        q += inside / two_m - (degree[group].sum() / two_m) ** 2
    return float(q)


def agreement(xo: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> float:
    """Mean cosine between two maps' translations of the same points."""
    return float(np.mean(np.sum(_normalise(xo @ w1) * _normalise(xo @ w2), axis=1)))


def random_rotation(d_in: int, d_out: int, rng) -> np.ndarray:
    return nearest_orthogonal(rng.standard_normal((d_in, d_out)).astype(np.float32))


# --- the translator ---------------------------------------------------------------------------

SEEDINGS = ("graph", "vecmap", "gw", "both")

class UnsupervisedLinear(_AffineMap):
    """Orthogonal map learned from two unpaired samples (see module doc)."""

    method = "linear"

    @dataclass
    class Config:
        restarts: int = 3            # independent anchor discoveries, screened
        seeding: str = "graph"       # "graph": matched cluster graphs | "vecmap": similarity
                                     # signatures + stochastic dictionary induction | "gw":
                                     # Gromov-Wasserstein on weighted centroids | "both":
                                     # restarts alternate (graph, vecmap, graph, ...)
        vecmap_points: int = 4000    # points per side for the vecmap seed
        gw_points: int = 2000        # points per side for the gw seed ...
        gw_clusters: int = 60        # ... summarised by this many weighted centroids
        gw_epsilon: float = 5e-3     # entropic regularisation of the gw coupling
        gw_starts: int = 30          # random starts of GW per seed (lowest loss kept)
        finalists: int = 2           # best screened restarts refined to the end
        anchor_runs: int = 10        # clusterings per restart
        clusters: int = 20           # k-means k per clustering
        qap_restarts: int = 20       # random starts of each graph match
        anchor_subsample: int = 5000
        match_k: int = 50            # new points averaged per pseudo-pair
        pseudo_points: int = 10000
        screen_iterations: int = 15
        icp_iterations: int = 60
        icp_batch: int = 1000
        icp_k: int = 50
        refine_iterations: int = 3
        refine_points: int = 10000
        csls_k: int = 10
        max_points: int = 20000      # rows of each sample used (random subset)
        min_points: int = 500
        min_csls_gain: float = 0.15  # confidence thresholds: see alignment_confidence
        min_knn_gain: float = 0.25
        min_z: float = 3.0
        same_map: float = 0.7        # agreement at which another finalist confirms the map
        seed: int = 0

    # fitting ---------------------------------------------------------------------------
    def _fit(self, old, new, pairs):
        cfg = self.config
        for what, x in (("old-model sample", old), ("new-model sample", new)):
            if len(x) < cfg.min_points:
                raise DataError(f"unsupervised alignment needs at least {cfg.min_points} vectors "
                                f"per side, the {what} has {len(x)}",
                                "sample more points (plan: sample.old / sample.new) or give pairs")
        if pairs is not None:
            self.meta["note"] = "pairs were given and ignored: method 'semi' uses them"
        t0 = time.time()
        rng = np.random.default_rng(cfg.seed)
        mu_old, s_old = side_stats(old)
        mu_new, s_new = side_stats(new)
        xo = centre_normalise(old, mu_old)[rng.permutation(len(old))[:cfg.max_points]]
        xn = centre_normalise(new, mu_new)[rng.permutation(len(new))[:cfg.max_points]]
        # held-back old rows score restarts on points the refinement never saw;
        # as many held-back new rows are the confidence's "natural" reference,
        # scored against the same pool of the remaining new rows
        n_eval = min(2000, len(xo) // 5, len(xn) // 5)
        xo_eval, xo_fit = xo[:n_eval], xo[n_eval:]
        xn_ref, xn_pool = xn[:n_eval], xn[n_eval:]

        # 1. screen: every restart gets anchors, an initial map and a short ICP
        runs = []
        if cfg.seeding not in SEEDINGS:
            raise DataError(f"unknown seeding '{cfg.seeding}' for the linear translator",
                            "use seeding=" + ", ".join(f"'{s}'" for s in SEEDINGS))
        for r in range(cfg.restarts):
            seeding = cfg.seeding if cfg.seeding != "both" else ("graph", "vecmap")[r % 2]
            w = self._initial_map(xo_fit, xn, np.random.default_rng([cfg.seed, r]), runs, seeding)
            runs[-1]["w"] = icp_refine(xo_fit, xn, w, cfg.screen_iterations, cfg.icp_batch,
                                       cfg.icp_k, np.random.default_rng([cfg.seed, r, 1]))
            runs[-1]["screen"] = fit_score(xo_eval, xn_pool, runs[-1]["w"], cfg.csls_k)
        # 2. finish the best restarts: full ICP, then mutual-CSLS Procrustes rounds
        ranked = sorted(range(len(runs)), key=lambda r: -runs[r]["screen"]["knn_sim"])
        finalists = ranked[:max(1, cfg.finalists)]
        for r in finalists:
            runs[r]["w"], runs[r]["history"] = self._finish(xo_fit, xn, runs[r]["w"],
                                                            np.random.default_rng([cfg.seed, r, 2]))
            runs[r]["final"] = fit_score(xo_eval, xn_pool, runs[r]["w"], cfg.csls_k)
        best = max(finalists, key=lambda r: runs[r]["final"]["knn_sim"])
        w = runs[best]["w"]
        # 3. confidence. The null: a random rotation given exactly a finalist's
        # budget, i.e. a map fitted to the clouds' shape with no correspondence
        # behind it. Finalists that landed elsewhere are rivals too (restarts
        # fail independently: on WordNet 1 of 3 aligns); one that lands on the
        # same map confirms it. same_map = 0.7: on WordNet two good maps refined
        # from different starts agree 0.78 (mean cosine of their translations),
        # a good and a failed one <= 0.32; on synthetic mixtures two failed
        # finalists agreed up to 0.58.
        null_w = icp_refine(xo_fit, xn, random_rotation(xo.shape[1], xn.shape[1], rng),
                            cfg.screen_iterations, cfg.icp_batch, cfg.icp_k, rng)
        null_w, _ = self._finish(xo_fit, xn, null_w, rng)
        agree = {r: agreement(xo_eval, w, runs[r]["w"]) for r in finalists if r != best}
        rivals = {"random start": null_w, **{f"restart {r}": runs[r]["w"]
                                             for r, a in agree.items() if a < cfg.same_map}}
        conf = alignment_confidence(xo_eval, xn_ref, xn_pool, w, rivals, cfg.csls_k,
                                    cfg.min_csls_gain, cfg.min_knn_gain, cfg.min_z)
        self.meta["selection"] = {
            "picked": best,
            "why": ("highest mean similarity of held-back translated old points to their "
                    f"{cfg.csls_k} nearest new points (knn_sim) among the finalists {finalists}"),
            "restarts": [{k: v for k, v in r.items() if k != "w"} for r in runs],
        }
        self.meta["confidence"] = {
            **conf,
            "diagnostics": {"joint_knn_modularity": {
                "map": joint_knn_modularity(xo_eval @ w, xn_ref, cfg.csls_k),
                "random start": joint_knn_modularity(xo_eval @ null_w, xn_ref, cfg.csls_k),
                "note": "modularity of {translated, real new} in their joint kNN graph: ~0 mixed, "
                        "0.5 apart; a diagnostic, not part of the rule"}},
            "agreement_with": {f"restart {r}": a for r, a in agree.items()},
            "thresholds": {"min_csls_gain": cfg.min_csls_gain, "min_knn_gain": cfg.min_knn_gain,
                           "min_z": cfg.min_z, "same_map": cfg.same_map},
            "rule": ("aligned = against every rival (a random start refined with the same "
                     "budget, and finalists that agree < same_map with the chosen map): "
                     "csls_gain >= min_csls_gain, knn_sim_gain >= min_knn_gain, both z >= min_z; "
                     "gain = (map - rival) / (natural - rival) for held-back old points "
                     "translated into the new cloud, natural = held-back new points in their "
                     "place; the reported gains and z are the weakest over the rivals"),
        }
        self.meta["fit_seconds"] = round(time.time() - t0, 1)
        self._set_map(mu_old, mu_new, w, w.T, s_old, s_new)

    def _finish(self, xo, xn, w, rng):
        """The rest of a restart's budget: ICP up to icp_iterations, then the
        mutual-CSLS Procrustes rounds. Returns (w, mutual-NN history)."""
        cfg = self.config
        w = icp_refine(xo, xn, w, cfg.icp_iterations - cfg.screen_iterations, cfg.icp_batch,
                       cfg.icp_k, rng)
        return refine(xo, xn, w, cfg.refine_iterations, k=cfg.csls_k,
                      seed=int(rng.integers(2**31)), max_points=cfg.refine_points)

    def _initial_map(self, xo, xn, rng, runs: list, seeding: str = "graph") -> np.ndarray:
        """Anchors from matched cluster graphs -> pseudo-pairs -> Procrustes;
        or VecMap's signature matching + stochastic dictionary induction."""
        cfg = self.config
        if seeding == "vecmap":
            w, report = vecmap_seed(xo, xn, cfg.vecmap_points, rng, cfg.csls_k)
            runs.append({"seeding": "vecmap", **report})
            return w
        if seeding == "gw":
            w, report = gw_seed(xo, xn, cfg.gw_points, rng, cfg.csls_k, cfg.gw_clusters,
                                cfg.gw_epsilon, cfg.gw_starts)
            runs.append({"seeding": "gw", **report})
            return w
        ao, an, corr = discover_anchors(xo, xn, cfg.anchor_runs, cfg.clusters, cfg.qap_restarts,
                                        cfg.anchor_subsample, rng)
        po, pn = pseudo_pairs(xo, xn, ao, an, cfg.match_k, cfg.pseudo_points, rng)
        runs.append({"seeding": "graph", "anchor_graph_corr": corr.round(3).tolist()})
        return orthogonal_map(po, pn)
