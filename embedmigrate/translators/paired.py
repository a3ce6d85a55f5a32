"""Translators fitted on aligned pairs, plus the two controls.

    Identity        x -> x (only when both models have the same dimension)
    MeanEstimator   x -> the mean new vector (a control: what "no information" scores)
    Procrustes      orthogonal map between the centred clouds (semi-orthogonal
                    when the dimensions differ, i.e. zero-padding the smaller side)
    Ridge           affine least squares, alpha chosen by closed-form leave-one-out
    ResidualMLP     ridge start + a small residual MLP trained with a cosine loss
    SemiSupervised  Procrustes on the pairs, then refined on the unpaired clouds
                    (MUSE / VecMap style); keeps the refinement only if held-out
                    pairs say it helps

Every map here has the same shape, ``_AffineMap``:

    translate(x) = normalise(scale_new * prep(x) @ W + mu_new)
    inverse(y)   = normalise(scale_old * prep(y) @ W_inv + mu_old)

where ``prep`` subtracts the side's mean and, for the orthogonal family,
re-normalises (the mini-vec2vec convention: rotations act on directions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .base import Translator, _normalise
from .affine import (_AffineMap, centre_normalise, icp_refine, orthogonal_map, refine, ridge_loo,
                     side_stats, translation_score)


# --- pairs -----------------------------------------------------------------------------

def need_pairs(method: str, pairs, minimum: int):
    if pairs is None:
        raise DataError(f"translator '{method}' needs aligned pairs, none were given",
                        "re-encode a few thousand of the collection's texts with the new model "
                        "(plan: pairs), or use method 'linear' / 'auto'")
    if len(pairs[0]) < minimum:
        raise DataError(f"translator '{method}' needs at least {minimum} pairs, got {len(pairs[0])}",
                        f"provide >= {minimum} pairs, or use method 'semi' / 'linear' / 'auto'")
    return pairs


def split_holdout(n: int, fraction: float, seed: int, min_holdout: int = 5):
    """Random train / held-out row indices (held-out may be empty for tiny n)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_hold = int(round(n * fraction))
    if n_hold < min_holdout or n - n_hold < min_holdout:
        return order, order[:0]
    return order[n_hold:], order[:n_hold]


# --- controls ------------------------------------------------------------------------

class Identity(_AffineMap):
    """x -> x. Meaningful only between models that share a space (same dim)."""

    method = "identity"
    renormalise = False

    @dataclass
    class Config:
        pass

    def _fit(self, old, new, pairs):
        d_old, d_new = old.shape[1], new.shape[1]
        if d_old != d_new:
            raise DataError(f"identity needs equal dimensions, old is {d_old} and new is {d_new}",
                            "use method 'procrustes', 'ridge', 'linear' or 'auto'")
        zero = np.zeros(d_old, np.float32)
        eye = np.eye(d_old, dtype=np.float32)
        self._set_map(zero, zero, eye, eye)


class MeanEstimator(_AffineMap):
    """Predicts the mean new vector for every input (and the mean old vector
    back): the floor any real translator must beat."""

    method = "mean"
    renormalise = False

    @dataclass
    class Config:
        pass

    def _fit(self, old, new, pairs):
        mu_old, _ = side_stats(old)
        mu_new, _ = side_stats(new)
        self._set_map(mu_old, mu_new, np.zeros((old.shape[1], new.shape[1]), np.float32),
                      np.zeros((new.shape[1], old.shape[1]), np.float32))


# --- paired methods ----------------------------------------------------------------------

class Procrustes(_AffineMap):
    """Orthogonal map fitted on pairs; inverse is the transpose."""

    method = "procrustes"

    @dataclass
    class Config:
        center: bool = True
        min_pairs: int = 10

    def _fit(self, old, new, pairs):
        po, pn = need_pairs(self.method, pairs, self.config.min_pairs)
        mu_old, s_old = side_stats(np.concatenate([old, po]))
        mu_new, s_new = side_stats(np.concatenate([new, pn]))
        if not self.config.center:
            mu_old, mu_new, s_old, s_new = mu_old * 0, mu_new * 0, 1.0, 1.0
        w = orthogonal_map(centre_normalise(po, mu_old), centre_normalise(pn, mu_new))
        self._set_map(mu_old, mu_new, w, w.T, s_old, s_new)


class Ridge(_AffineMap):
    """Affine ridge regression old -> new (and a separately fitted new -> old
    for the inverse). Alpha: exact leave-one-out over a log grid."""

    method = "ridge"
    renormalise = False
    unit_input = False  # plain affine regression on the vectors as given

    @dataclass
    class Config:
        alphas: tuple = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
        min_pairs: int = 10

    def _fit(self, old, new, pairs):
        po, pn = need_pairs(self.method, pairs, self.config.min_pairs)
        mu_old, mu_new = po.mean(axis=0), pn.mean(axis=0)
        w, a_fwd, _ = ridge_loo(po - mu_old, pn - mu_new, self.config.alphas)
        w_inv, a_inv, _ = ridge_loo(pn - mu_new, po - mu_old, self.config.alphas)
        self.meta["alpha"] = {"forward": a_fwd, "inverse": a_inv}
        self._set_map(mu_old, mu_new, w, w_inv)


class ResidualMLP(Translator):
    """translate(x) = normalise(ridge(x) + MLP(x)), trained with a cosine loss
    and early stopping on held-out pairs. The residual branch starts at zero,
    so training begins from the ridge solution. The inverse is a ridge map
    fitted separately new -> old (cheap and well-posed)."""

    method = "mlp"

    @dataclass
    class Config:
        hidden: int = 1024
        lr: float = 1e-3
        weight_decay: float = 1e-4
        batch_size: int = 256
        max_epochs: int = 200
        patience: int = 8
        holdout: float = 0.1
        max_seconds: float = 300.0
        min_pairs: int = 50
        seed: int = 0
        device: str = "auto"

    def _fit(self, old, new, pairs):
        import torch

        po, pn = need_pairs(self.method, pairs, self.config.min_pairs)
        po, pn = _normalise(po), _normalise(pn)
        train, hold = split_holdout(len(po), self.config.holdout, self.config.seed)
        # the ridge start sees only the training rows, or the held-out check is rigged
        ridge = Ridge()
        ridge._fit(old, new, (po[train], pn[train]))
        self.inverse_map = Ridge()
        self.inverse_map._fit(old, new, (po, pn))  # new -> old uses a ridge on all pairs
        torch.manual_seed(self.config.seed)
        device = _device(self.config.device)
        net = _ResidualNet(po.shape[1], pn.shape[1], self.config.hidden, ridge).to(device)
        x = torch.from_numpy(po).to(device)
        y = torch.from_numpy(pn).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.config.lr,
                                weight_decay=self.config.weight_decay)

        def held_out_loss():
            if len(hold) == 0:
                return 0.0
            net.eval()
            with torch.no_grad():
                return float(1 - torch.cosine_similarity(net(x[hold]), y[hold]).mean())

        best, best_state, bad, epoch, t0 = held_out_loss(), _copy_state(net), 0, 0, time.time()
        start_loss = best
        train_t = torch.from_numpy(train).to(device)
        for epoch in range(1, self.config.max_epochs + 1):
            net.train()
            for idx in train_t[torch.randperm(len(train_t), device=device)].split(self.config.batch_size):
                loss = 1 - torch.cosine_similarity(net(x[idx]), y[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            val = held_out_loss()
            if val < best - 1e-5:
                best, best_state, bad = val, _copy_state(net), 0
            else:
                bad += 1
            if bad >= self.config.patience or time.time() - t0 > self.config.max_seconds:
                break
        net.load_state_dict(best_state)
        self.net = net.cpu().eval()
        self.meta["training"] = {"epochs": epoch, "held_out_cos_loss_ridge": start_loss,
                                 "held_out_cos_loss": best, "seconds": round(time.time() - t0, 1)}

    def _translate(self, x):
        import torch
        with torch.no_grad():
            return _normalise(self.net(torch.from_numpy(_normalise(x))).numpy())

    def _inverse(self, y):
        return self.inverse_map._inverse(y)

    def _state(self):
        state = {f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        state.update({f"inverse.{k}": v for k, v in self.inverse_map._state().items()})
        return state

    def _load_state(self, state):
        ridge = Ridge()
        ridge.old_dim, ridge.new_dim = self.old_dim, self.new_dim
        ridge._load_state({k[8:]: v for k, v in state.items() if k.startswith("inverse.")})
        self.inverse_map = ridge
        import torch
        net = _ResidualNet(self.old_dim, self.new_dim, self.config.hidden, ridge)
        net.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in state.items()
                             if k.startswith("net.")})
        self.net = net.eval()


def _device(name: str):
    from ..device import pick_device
    return pick_device(name)


def _copy_state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _ResidualNet(d_in, d_out, hidden, ridge):
    """Linear layer initialised at the ridge map + zero-initialised MLP branch."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(d_in, d_out)
            self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.LayerNorm(hidden),
                                     nn.Linear(hidden, d_out))
            with torch.no_grad():
                # ridge: (x - mu_old) W + mu_new  ==  x W + (mu_new - mu_old W)
                self.linear.weight.copy_(torch.from_numpy(ridge.w.T.copy()))
                self.linear.bias.copy_(torch.from_numpy(ridge.mu_new - ridge.mu_old @ ridge.w))
                nn.init.zeros_(self.mlp[-1].weight)
                nn.init.zeros_(self.mlp[-1].bias)

        def forward(self, x):
            return self.linear(x) + self.mlp(x)

    return Net()


class SemiSupervised(_AffineMap):
    """Pairs as seed anchors, unpaired samples for refinement.

    1. Procrustes on the pairs (centred, normalised).
    2. Refine on the unpaired clouds: a few ICP rounds (each sampled old
       point pulled to the mean of its nearest new points), then mutual
       nearest neighbours under CSLS
       between the translated old sample and the new sample become
       pseudo-pairs; Procrustes on pairs (weighted up) + pseudo-pairs; repeat.
    3. Keep the refined map only if it does at least as well on held-out
       pairs (a label-based check the unsupervised method cannot make).
    """

    method = "semi"

    @dataclass
    class Config:
        icp_iterations: int = 20
        iterations: int = 5
        pair_weight: float = 5.0  # a real pair counts this many pseudo-pairs
        holdout: float = 0.2
        max_points: int = 20000
        min_pairs: int = 5
        seed: int = 0

    def _fit(self, old, new, pairs):
        po, pn = need_pairs(self.method, pairs, self.config.min_pairs)
        mu_old, s_old = side_stats(np.concatenate([old, po]))
        mu_new, s_new = side_stats(np.concatenate([new, pn]))
        xo, xn = centre_normalise(old, mu_old), centre_normalise(new, mu_new)
        ao, an = centre_normalise(po, mu_old), centre_normalise(pn, mu_new)
        rng = np.random.default_rng(self.config.seed)
        xo = xo[rng.permutation(len(xo))[:self.config.max_points]]
        xn = xn[rng.permutation(len(xn))[:self.config.max_points]]

        def fit_both(idx):
            w0 = orthogonal_map(ao[idx], an[idx])
            w1 = icp_refine(xo, xn, w0, self.config.icp_iterations, 1000, 50,
                            np.random.default_rng(self.config.seed))
            w1, _ = refine(xo, xn, w1, iterations=self.config.iterations,
                           anchors=(ao[idx], an[idx]), anchor_weight=self.config.pair_weight,
                           seed=self.config.seed)
            return w0, w1

        train, hold = split_holdout(len(po), self.config.holdout, self.config.seed)
        choice = "refined"
        if len(hold):
            w0, w1 = fit_both(train)
            s0 = translation_score(ao[hold] @ w0, an[hold])
            s1 = translation_score(ao[hold] @ w1, an[hold])
            choice = "refined" if s1["top1"] >= s0["top1"] and s1["cos"] >= s0["cos"] - 0.01 \
                else "pairs-only"
            self.meta["validation"] = {"pairs_only": s0, "refined": s1, "held_out": int(len(hold))}
        w0, w1 = fit_both(np.arange(len(po)))
        w = w1 if choice == "refined" else w0
        self.meta["choice"] = choice
        self._set_map(mu_old, mu_new, w, w.T, s_old, s_new)
