"""The affine / orthogonal building blocks every linear translator shares.

The paired translators (``paired.py``) and the unsupervised one
(``linear.py``) both use them; they live here so that neither module
imports the other:

    _AffineMap          translate(x) = normalise(scale_new * prep(x) @ W + mu_new)
    orthogonal_map      orthogonal Procrustes (weighted), nearest_orthogonal
    centre_normalise, side_stats
    ridge_loo           ridge with alpha by exact leave-one-out
    icp_refine, refine  refinement on unpaired clouds (ICP to k-NN means,
                        Procrustes on mutual CSLS nearest neighbours)
    topk_indices, topk_mean, knn_mean_sim, mutual_csls_pairs, translation_score
"""

from __future__ import annotations

import numpy as np

from .base import Translator, _normalise


# --- shared linear algebra ------------------------------------------------------------

def orthogonal_map(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """W minimising ||a W - b|| with W W^T = I (or W^T W = I): orthogonal
    Procrustes. With different widths W is semi-orthogonal, which equals
    zero-padding the narrower side and taking the full orthogonal solution."""
    m = (a * weights[:, None]).T @ b if weights is not None else a.T @ b
    u, _, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
    return (u @ vt).astype(np.float32)


def nearest_orthogonal(w: np.ndarray) -> np.ndarray:
    """Project a matrix back onto the (semi-)orthogonal ones."""
    return polar_factor(w)


def polar_factor(m: np.ndarray, max_condition: float = 1e4) -> np.ndarray:
    """U V^T of the thin SVD U S V^T of m (its orthogonal polar factor), in float64.
    Through the eigendecomposition of the smaller Gram matrix when m is well
    conditioned: 3x faster than the SVD on a 384 x 768 matrix, and equal to
    ~1e-8 at condition <= 1e4 (the Gram matrix squares the condition); the SVD
    otherwise. Used by nearest_orthogonal (ICP's damped average of two
    orthogonal maps: condition ~1, ~200 calls per unsupervised fit), not by
    orthogonal_map, whose cross-covariance is often singular (ICP batches:
    condition ~1e18, measured on WordNet MiniLM -> MPNet)."""
    m = m.astype(np.float64)
    wide = m.shape[0] <= m.shape[1]
    gram = m @ m.T if wide else m.T @ m
    vals, vecs = np.linalg.eigh(gram)
    if vals[0] > 0 and vals[-1] <= max_condition ** 2 * vals[0]:
        inv_sqrt = (vecs / np.sqrt(vals)) @ vecs.T
        return (inv_sqrt @ m if wide else m @ inv_sqrt).astype(np.float32)
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return (u @ vt).astype(np.float32)


def centre_normalise(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return _normalise(_normalise(x) - mu)


# --- the common affine family ------------------------------------------------------------

class _AffineMap(Translator):
    """translate(x) = normalise(scale_new * prep(x) @ W + mu_new); see module doc."""

    renormalise = True  # orthogonal family: rotate centred *directions*
    unit_input = True   # cosine geometry: inputs are normalised first

    def _set_map(self, mu_old, mu_new, w, w_inv, scale_old=1.0, scale_new=1.0):
        self.mu_old = np.asarray(mu_old, np.float32)
        self.mu_new = np.asarray(mu_new, np.float32)
        self.w = np.asarray(w, np.float32)
        self.w_inv = np.asarray(w_inv, np.float32)
        self.scale_old = np.float32(scale_old)
        self.scale_new = np.float32(scale_new)

    def _prep(self, x, mu):
        x = (_normalise(x) if self.unit_input else x) - mu
        return _normalise(x) if self.renormalise else x

    def _translate(self, x):
        return _normalise(self.scale_new * (self._prep(x, self.mu_old) @ self.w) + self.mu_new)

    def _inverse(self, y):
        return _normalise(self.scale_old * (self._prep(y, self.mu_new) @ self.w_inv) + self.mu_old)

    def _state(self):
        return {"mu_old": self.mu_old, "mu_new": self.mu_new, "w": self.w, "w_inv": self.w_inv,
                "scales": np.array([self.scale_old, self.scale_new], np.float32)}

    def _load_state(self, state):
        self._set_map(state["mu_old"], state["mu_new"], state["w"], state["w_inv"],
                      *state["scales"].tolist())


def side_stats(x: np.ndarray):
    """Mean of the normalised sample, and the typical norm of a centred row
    (used to put the mean back at the right weight after mapping)."""
    x = _normalise(x)
    mu = x.mean(axis=0)
    scale = float(np.mean(np.linalg.norm(x - mu, axis=1)))
    return mu, scale


def ridge_loo(x: np.ndarray, y: np.ndarray, alphas) -> tuple[np.ndarray, float, dict]:
    """Ridge y ~ x W on centred data with alpha picked by exact leave-one-out
    error (closed form through the SVD of x: no refitting per fold)."""
    u, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    uty = u.T @ y.astype(np.float64)
    s2 = s ** 2
    y64 = y.astype(np.float64)
    errors = {}
    for a in alphas:
        f = s2 / (s2 + a)
        fitted = u @ (f[:, None] * uty)
        h = (u ** 2) @ f  # diagonal of the hat matrix
        loo = (y64 - fitted) / np.maximum(1.0 - h, 1e-6)[:, None]
        errors[float(a)] = float(np.mean(np.sum(loo ** 2, axis=1)))
    best = min(errors, key=errors.get)
    w = vt.T @ ((s / (s2 + best))[:, None] * uty)
    return w.astype(np.float32), best, errors


# --- refinement on unpaired clouds -------------------------------------------------------

def topk_indices(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries per row (torch's topk is ~10x
    faster than numpy's argpartition here, and torch is a dependency anyway)."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(sims)).topk(k, dim=1).indices.numpy()


def topk_mean(queries: np.ndarray, pool: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """For each query row, the mean of its k most similar pool rows (as a sparse
    averaging matrix times the pool: no (rows, k, dim) gather in memory)."""
    k = min(k, len(pool))
    out = np.empty((len(queries), pool.shape[1]), np.float32)
    for s in range(0, len(queries), block):
        out[s:s + block] = mean_of_rows(pool, topk_indices(queries[s:s + block] @ pool.T, k))
    return out


def mean_of_rows(pool: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """pool[idx].mean(axis=1) for an (n, k) index array, as a sparse averaging
    matrix times the pool: no (n, k, dim) gather in memory (faster)."""
    import scipy.sparse as sp
    k = idx.shape[1]
    mean = sp.csr_matrix((np.full(idx.size, 1.0 / k, np.float32), idx.ravel(),
                          np.arange(0, idx.size + 1, k)), shape=(len(idx), len(pool)))
    return mean @ pool


def knn_mean_sim(a: np.ndarray, b: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Mean similarity of each row of a to its k nearest rows of b (CSLS's r term)."""
    import torch
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), block):
        sims = torch.from_numpy(a[s:s + block] @ b.T)
        out[s:s + block] = sims.topk(min(k, len(b)), dim=1).values.mean(dim=1).numpy()
    return out


# similarity matrices up to this many entries (400 MB of float32: refine's
# default 10k x 10k) are computed once and shared by csls_terms and
# mutual_csls_pairs instead of twice: the products are most of a fit's time
MAX_SHARED_SIMS = 100_000_000


def shared_sims(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """a @ b.T when small enough to keep (MAX_SHARED_SIMS), else None (blocks on the fly)."""
    return a @ b.T if len(a) * len(b) <= MAX_SHARED_SIMS else None


def csls_terms(a: np.ndarray, b: np.ndarray, k: int, block: int = 2048, sims=None):
    """CSLS's two neighbourhood terms, knn_mean_sim(a, b, k) and
    knn_mean_sim(b, a, k), from one pass over a @ b.T (each block's column
    top-k merged into a running one) instead of two: the similarity products
    are most of an unsupervised fit's time. ``sims``: a @ b.T, when the caller has it."""
    import torch
    k_b, k_a = min(k, len(b)), min(k, len(a))
    r_a = np.empty(len(a), np.float32)
    col_top = None  # (k_a, len(b)): the k best similarities of each b row seen so far
    all_sims = sims
    for s in range(0, len(a), block):
        sims = torch.from_numpy(all_sims[s:s + block] if all_sims is not None else a[s:s + block] @ b.T)
        r_a[s:s + block] = sims.topk(k_b, dim=1).values.mean(dim=1).numpy()
        block_top = sims.topk(min(k_a, len(sims)), dim=0).values
        col_top = block_top if col_top is None else \
            torch.cat([col_top, block_top]).topk(min(k_a, len(col_top) + len(block_top)), dim=0).values
    return r_a, col_top.mean(dim=0).numpy()


def mutual_csls_pairs(ta: np.ndarray, b: np.ndarray, k: int = 10, block: int = 2048, terms=None,
                      sims=None):
    """Mutual nearest neighbours under CSLS (Conneau et al. 2018) between the
    translated old points ``ta`` and the new points ``b`` (``terms``: their
    csls_terms, ``sims``: ta @ b.T, when the caller has them; computed once
    here otherwise when small, see MAX_SHARED_SIMS). Returns (rows of ta,
    rows of b, their CSLS scores)."""
    import torch
    if sims is None and terms is None:
        sims = shared_sims(ta, b)
    r_a, r_b = terms if terms is not None else csls_terms(ta, b, k, block, sims=sims)
    r_a = torch.from_numpy(np.ascontiguousarray(r_a, np.float32))
    r_b = torch.from_numpy(np.ascontiguousarray(r_b, np.float32))
    fwd = np.empty(len(ta), np.int64)
    fwd_score = np.empty(len(ta), np.float32)
    bwd_best = np.full(len(b), -np.inf, np.float32)
    bwd = np.zeros(len(b), np.int64)
    for s in range(0, len(ta), block):
        # in place and reduced by torch: numpy's temporaries and its column
        # argmax were most of this function's time at 10k x 10k
        csls = (torch.from_numpy(sims[s:s + block]).mul(2) if sims is not None  # sims kept intact
                else torch.from_numpy(ta[s:s + block] @ b.T).mul_(2))
        csls.sub_(r_a[s:s + block, None]).sub_(r_b[None, :])
        row_val, row_best = csls.max(dim=1)
        fwd[s:s + block], fwd_score[s:s + block] = row_best.numpy(), row_val.numpy()
        col_val, col_best = (t.numpy() for t in csls.max(dim=0))
        better = col_val > bwd_best
        bwd_best[better], bwd[better] = col_val[better], col_best[better] + s
    rows = np.arange(len(ta))
    mutual = bwd[fwd] == rows
    return rows[mutual], fwd[mutual], fwd_score[mutual]


def refine(xo, xn, w, iterations: int = 10, anchors=None, anchor_weight: float = 1.0,
           k: int = 10, seed: int = 0, max_points: int = 20000):
    """Procrustes on mutual CSLS nearest neighbours, repeated (MUSE refinement).
    ``anchors`` = (old, new) known pairs that always stay in the dictionary.
    Returns (w, history of the mutual-NN rate)."""
    rng = np.random.default_rng(seed)
    xo = xo[rng.permutation(len(xo))[:max_points]]
    xn = xn[rng.permutation(len(xn))[:max_points]]
    history = []
    for _ in range(iterations):
        i, j, _ = mutual_csls_pairs(xo @ w, xn, k)
        history.append(len(i) / len(xo))
        a, b, wt = xo[i], xn[j], np.ones(len(i), np.float32)
        if anchors is not None:
            a = np.concatenate([a, anchors[0]])
            b = np.concatenate([b, anchors[1]])
            wt = np.concatenate([wt, np.full(len(anchors[0]), anchor_weight, np.float32)])
        if len(a) < 2:
            break
        w = orthogonal_map(a, b, wt)
    return w, history


def icp_refine(xo, xn, w, iterations: int, batch: int, k: int, rng, damping: float = 0.5,
               pool: int = 10000):
    """mini-vec2vec's first refinement: map a random batch, pair each point with
    the mean of its k nearest new points (among a random pool of the new
    sample, which halves the cost at 20k), Procrustes, damped update."""
    for _ in range(iterations):
        b = xo[rng.choice(len(xo), min(batch, len(xo)), replace=False)]
        p = xn[rng.choice(len(xn), pool, replace=False)] if len(xn) > pool else xn
        target = _normalise(mean_of_rows(p, topk_indices(mapped_sims(b, w, p), min(k, len(p)))))
        w = nearest_orthogonal((1 - damping) * w + damping * orthogonal_map(b, target))
    return w


def mapped_sims(x: np.ndarray, w: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """(x @ w) @ pool.T, or x @ (pool @ w.T).T when that is fewer operations
    (mapping into a wider space: 6.8 instead of 8.0 GFLOP per ICP step at
    MiniLM 384 -> MPNet 768 with a 1,000 batch and a 10,000 pool)."""
    (n, d_in), d_out, m = x.shape, w.shape[1], len(pool)
    if n * d_in * d_out + n * d_out * m <= m * d_out * d_in + n * d_in * m:
        return (x @ w) @ pool.T
    return x @ (pool @ w.T).T


def translation_score(pred: np.ndarray, true: np.ndarray) -> dict:
    """Cosine and top-1 among the given rows (for held-out *pairs*)."""
    p, t = _normalise(pred), _normalise(true)
    sims = p @ t.T
    return {"cos": float(np.mean(np.sum(p * t, axis=1))),
            "top1": float(np.mean(np.argmax(sims, axis=1) == np.arange(len(p))))}
