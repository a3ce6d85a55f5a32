"""Translation and retrieval metrics (vec2vec protocol), plus label-free diagnostics.

Ground-truth metrics need the true new-model vectors of the translated points:
  mean_cosine, rank_metrics (top-1 / mean rank among N candidates),
  retrieval: recall@k retained, nDCG@k and recall@k against relevance labels.
Label-free diagnostics need no ground truth and are what the quality gate and
the plan can always compute: neighbourhood_overlap, cycle_error.

All inputs are float32 arrays, one vector per row; similarity is cosine (rows
are L2-normalised here) unless stated otherwise.
"""

from __future__ import annotations

import numpy as np

from .vectors import l2_normalise


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows as float32 unit vectors (the one normaliser, vectors.l2_normalise)."""
    return l2_normalise(np.asarray(x, dtype=np.float32))


def mean_cosine(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.sum(normalise(pred) * normalise(true), axis=1)))


def rank_metrics(pred: np.ndarray, true: np.ndarray, chunk: int = 8192) -> dict:
    """Top-1 accuracy and mean rank (1 = best) of each true vector among the
    ``chunk`` true vectors of its block (vec2vec protocol: blocks of 8,192)."""
    pred, true = normalise(pred), normalise(true)
    ranks = []
    for s in range(0, len(pred), chunk):
        p, t = pred[s:s + chunk], true[s:s + chunk]
        sims = p @ t.T
        own = np.diag(sims)[:, None]
        ranks.append(1 + np.sum(sims > own, axis=1))
    r = np.concatenate(ranks) if ranks else np.zeros(0)
    return {"top1": float(np.mean(r == 1)) if len(r) else 0.0,
            "mean_rank": float(np.mean(r)) if len(r) else float("nan"),
            "candidates": int(min(chunk, len(pred)))}


def top_k(queries: np.ndarray, docs: np.ndarray, k: int = 10, metric: str = "cosine",
          block: int = 1024) -> np.ndarray:
    """Indices of the k nearest docs per query, best first (exact, blocked)."""
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(docs, dtype=np.float32)
    if metric == "cosine":
        q, d = normalise(q), normalise(d)
    k = min(k, len(d))
    out = np.empty((len(q), k), dtype=np.int64)
    sq = (d * d).sum(axis=1) if metric == "l2" else None
    for s in range(0, len(q), block):
        scores = q[s:s + block] @ d.T
        if metric == "l2":
            scores = 2 * scores - sq  # larger is closer
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        out[s:s + block] = np.take_along_axis(part, order, axis=1)
    return out


def overlap_at_k(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a_i ∩ b_i| / k over rows of two (n, k) index arrays."""
    k = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))


def recall_retained(queries: np.ndarray, translated_docs: np.ndarray, true_docs: np.ndarray,
                    k: int = 10, metric: str = "cosine") -> float:
    """Overlap of the top-k from the translated index with the top-k from the
    true new-model index, for the same (new-model) queries."""
    return overlap_at_k(top_k(queries, translated_docs, k, metric), top_k(queries, true_docs, k, metric))


def relevance_metrics(queries: np.ndarray, docs: np.ndarray, relevant: np.ndarray, k: int = 10,
                      metric: str = "cosine") -> dict:
    """nDCG@k and recall@k with one relevant doc index per query."""
    hits = top_k(queries, docs, k, metric) == np.asarray(relevant)[:, None]
    pos = np.argmax(hits, axis=1)
    found = hits.any(axis=1)
    ndcg = np.where(found, 1.0 / np.log2(pos + 2), 0.0)  # ideal DCG is 1 with one relevant doc
    return {"ndcg@%d" % k: float(ndcg.mean()), "recall@%d" % k: float(found.mean())}


def neighbourhood_overlap(old: np.ndarray, translated: np.ndarray, k: int = 10,
                          metric: str = "cosine", max_points: int = 2000, seed: int = 0) -> float:
    """Label-free: how much of each point's k-neighbourhood among the old
    vectors survives among the translated vectors (same points, new space)."""
    return float(np.mean(neighbourhood_overlap_per_point(old, translated, k, metric, max_points, seed)))


def cycle_error(translator, old: np.ndarray) -> float:
    """Label-free: 1 - mean cosine between x and inverse(translate(x))."""
    back = translator.inverse(translator.translate(old))
    return float(1.0 - mean_cosine(back, old))


def score_shift(old_scores: np.ndarray, new_scores: np.ndarray) -> dict:
    """How similarity scores move (users retune fixed thresholds by this)."""
    qs = [0.1, 0.5, 0.9]
    return {"old_quantiles": dict(zip(map(str, qs), np.quantile(old_scores, qs).tolist())),
            "new_quantiles": dict(zip(map(str, qs), np.quantile(new_scores, qs).tolist())),
            "mean_shift": float(np.mean(new_scores) - np.mean(old_scores))}


# --- Per-point values and score mapping (used by the quality report) ---------

def overlap_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_i ∩ b_i| / k for each row of two (n, k) index arrays (the values
    ``overlap_at_k`` averages; the report plots their histogram)."""
    k = a.shape[1]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())],
                    dtype=np.float64)


def neighbourhood_overlap_per_point(old: np.ndarray, translated: np.ndarray, k: int = 10,
                                    metric: str = "cosine", max_points: int = 2000,
                                    seed: int = 0) -> np.ndarray:
    """``neighbourhood_overlap`` before averaging: one value per sampled point
    (same sample, so the mean equals ``neighbourhood_overlap``)."""
    n = len(old)
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, size=min(n, max_points), replace=False) if n > max_points else np.arange(n)
    nb_old = top_k(old[idx], old, k + 1, metric)[:, 1:]
    nb_new = top_k(translated[idx], translated, k + 1, "cosine")[:, 1:]
    return overlap_per_row(nb_old, nb_new)


def top_k_scores(queries: np.ndarray, docs: np.ndarray, idx: np.ndarray,
                 metric: str = "cosine") -> np.ndarray:
    """The scores a search engine would show for the hits ``idx`` (n, k):
    cosine similarity, dot product, or Euclidean distance for ``l2``."""
    q = np.asarray(queries, dtype=np.float32)
    d = np.asarray(docs, dtype=np.float32)
    if metric == "cosine":
        q, d = normalise(q), normalise(d)
    hits = d[idx]  # (n, k, dim)
    if metric == "l2":
        return np.linalg.norm(hits - q[:, None, :], axis=2)
    return np.einsum("nd,nkd->nk", q, hits)


def threshold_mapping(old_scores: np.ndarray, new_scores: np.ndarray,
                      old_thresholds) -> np.ndarray:
    """Quantile matching: the new-space score that cuts off the same fraction
    of hits as each old threshold did (monotone non-decreasing in the old
    threshold, because both empirical quantile functions are)."""
    old_sorted = np.sort(np.asarray(old_scores, dtype=np.float64).ravel())
    fractions = np.searchsorted(old_sorted, np.asarray(old_thresholds, dtype=np.float64),
                                side="right") / max(len(old_sorted), 1)
    return np.quantile(np.asarray(new_scores, dtype=np.float64).ravel(), np.clip(fractions, 0, 1))


def distribution_match(translated: np.ndarray, new_sample: np.ndarray, max_points: int = 1000,
                       seed: int = 0) -> dict:
    """Label-free: do translated vectors land where real new-model vectors live?

    Nearest-neighbour cosine of translated points into a fresh new-model
    sample (precision), and of new-model points into the translated set
    (coverage), each divided by the same statistic for new-model points among
    other new-model points. About 1 when the translation matches the new
    model's distribution; far below 1 for a misaligned or collapsed map.
    """
    rng = np.random.default_rng(seed)
    new, tr = normalise(new_sample), normalise(translated)
    # disjoint query / reference rows on each side, references of equal size
    nq = min(max_points, len(new) // 2, len(tr) // 2)
    m = min(len(new) - nq, len(tr) - nq)
    pn, pt = rng.permutation(len(new)), rng.permutation(len(tr))
    new_q, new_ref = new[pn[:nq]], new[pn[nq:nq + m]]
    tr_q, tr_ref = tr[pt[:nq]], tr[pt[nq:nq + m]]

    def nn_cos(q, d):
        return float(np.mean(np.max(q @ d.T, axis=1)))

    natural = nn_cos(new_q, new_ref)
    precision = nn_cos(tr_q, new_ref) / natural
    coverage = nn_cos(new_q, tr_ref) / natural
    return {"precision": precision, "coverage": coverage, "natural_nn_cos": natural,
            "score": min(precision, coverage)}


def true_ranks(pred: np.ndarray, true: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``rank_metrics`` before averaging: the rank (1 = best) of each true
    vector among the true vectors of its block of ``chunk``."""
    pred, true = normalise(pred), normalise(true)
    ranks = [np.zeros(0, dtype=np.int64)]
    for s in range(0, len(pred), chunk):
        sims = pred[s:s + chunk] @ true[s:s + chunk].T
        ranks.append(1 + np.sum(sims > np.diag(sims)[:, None], axis=1))
    return np.concatenate(ranks)
