"""vec2vec: unsupervised translation between embedding spaces (Jha et al. 2025).

One file, read top to bottom:

  1. modules    residual MLP blocks; input adapters A1 (old) / A2 (new) into a
                shared latent, a shared backbone T, output adapters B1 / B2;
                discriminators on both output spaces and on the latent
  2. losses     least-squares GAN, reconstruction (1 - cos), cycle consistency,
                vector-space preservation (VSP: L1 between cosine Gram matrices)
  3. selection  label-free scores used to pick the best restart and to say
                whether the alignment can be trusted at all
  4. training   one plain loop per restart: device, mixed precision (CUDA only),
                seeds, progress bar, resumable training checkpoints
  5. Vec2Vec    the Translator: translate = B2∘T∘A1, inverse = B1∘T∘A2

Paths (x: old-model vector, y: new-model vector):

    translate  x -> A1 -> T -> B2 -> y'        reconstruct  x -> A1 -> T -> B1 -> x'
    inverse    y -> A2 -> T -> B1 -> x'        cycle        x -> y' -> A2 -> T -> B1 -> x''

Loss weights default to the official code's (github rjha18/vec2vec,
configs/unsupervised.toml): GAN 1, latent GAN 1, reconstruction 1, VSP 1,
cycle 10, cycle-VSP 10, label smoothing 0.9, gradient-norm clipping at 1000;
Linear layers get its Kaiming-normal initialisation (its N(0, 0.02) is the
BatchNorm init, around weight 1). Sizes and learning rates default to
something a 2-core CPU can train in minutes; ``Config.paper()`` gives the
reference sizes and learning rates. Unsupervised GAN training is fragile (the
paper picks the best of several seeds; only 3 of 15 seeds aligned e5 -> gtr),
hence: it starts from the best linear map (``init="linear"``: the unsupervised
linear translator, or ``auto`` when pairs are given), ``restarts`` with a
label-free choice, and ``meta["confidence"]["aligned"]`` calibrated against a
null (a random start trained the same way), so that a failed alignment is
refused downstream instead of written to a database.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import mixed_precision, pick_device
from ..errors import DataError, UsageError
from .base import Translator, _normalise
from .linear import confidence_of_translations

# ------------------------------------------------------------------------------
# 1. modules
# ------------------------------------------------------------------------------


def _norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "none":
        return nn.Identity()
    raise UsageError(f"unknown norm '{kind}' for vec2vec", "use norm='layer', 'batch' or 'none'")


class ResidualMLP(nn.Module):
    """``depth`` blocks of Linear -> SiLU -> norm -> Dropout, each with a skip
    connection (zero-padded or truncated when widths differ), then a Linear to
    ``out_dim``. Order as in the official code: the norm comes after the
    activation, so each block adds an O(1) term even with small weights; a
    fresh network is far from the identity (measured: two untrained networks
    translate WordNet vectors with mean cosine ~0 to each other).

    Initialisation as in the official code (MLPWithResidual with its default
    weight_init="kaiming"): Kaiming-normal Linear weights (fan-in, ReLU gain),
    zero biases; BatchNorm weights N(1, 0.02) and biases N(0, 0.02); LayerNorm
    weights 1 and biases 0."""

    def __init__(self, in_dim: int, width: int, out_dim: int, depth: int, norm: str, dropout: float):
        super().__init__()
        dims = [in_dim] + [width] * depth
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.SiLU(), _norm_layer(norm, b), nn.Dropout(dropout))
            for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], out_dim)
        for m in self.modules():  # the official code's init (see the docstring)
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.normal_(m.weight, mean=1.0, std=0.02)
                nn.init.normal_(m.bias, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = _match_width(x, block[0].out_features) + block(x)
        return _match_width(x, self.out.out_features) + self.out(x)


def _match_width(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    if x.shape[1] > width:
        return x[:, :width]
    return F.pad(x, (0, width - x.shape[1]))


class Vec2VecNet(nn.Module):
    """A1, A2 -> shared T -> B1, B2. Every output is L2-normalised."""

    def __init__(self, old_dim: int, new_dim: int, cfg: "Config"):
        super().__init__()
        w, n, p = cfg.width, cfg.norm, cfg.dropout
        self.A1 = ResidualMLP(old_dim, w, w, cfg.adapter_depth, n, p)
        self.A2 = ResidualMLP(new_dim, w, w, cfg.adapter_depth, n, p)
        self.T = ResidualMLP(w, w, w, cfg.backbone_depth, n, p)
        self.B1 = ResidualMLP(w, w, old_dim, cfg.adapter_depth, n, p)
        self.B2 = ResidualMLP(w, w, new_dim, cfg.adapter_depth, n, p)

    def latent_old(self, x):
        return self.T(self.A1(x))

    def latent_new(self, y):
        return self.T(self.A2(y))

    def to_old(self, z):
        return F.normalize(self.B1(z), dim=1)

    def to_new(self, z):
        return F.normalize(self.B2(z), dim=1)

    def translate(self, x):
        return self.to_new(self.latent_old(x))

    def inverse(self, y):
        return self.to_old(self.latent_new(y))


class Discriminator(nn.Module):
    """MLP scoring 'real' (1) vs 'translated' (0): Linear -> SiLU -> LayerNorm."""

    def __init__(self, dim: int, width: int, depth: int):
        super().__init__()
        layers, d = [], dim
        for _ in range(depth - 1):
            layers += [nn.Linear(d, width), nn.SiLU(), nn.LayerNorm(width)]
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


# ------------------------------------------------------------------------------
# 2. losses
# ------------------------------------------------------------------------------


def lsgan_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, smooth: float) -> torch.Tensor:
    """Least-squares GAN, discriminator side: real -> ``smooth`` (one-sided
    label smoothing, 0.9 in the paper), fake -> 0."""
    return 0.5 * (((d_real - smooth) ** 2).mean() + (d_fake ** 2).mean())


def lsgan_generator_loss(d_fake: torch.Tensor, smooth: float) -> torch.Tensor:
    """Least-squares GAN, generator side: make fakes score as real."""
    return ((d_fake - smooth) ** 2).mean()


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine (used for reconstruction and cycle consistency)."""
    return 1.0 - F.cosine_similarity(x, x_hat, dim=1).mean()


def cosine_gram(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=1)
    return x @ x.T


def vsp_loss(x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
    """Vector-space preservation: mean |cos(x_i, x_j) - cos(f(x_i), f(x_j))|
    over all pairs of the batch. Zero when f preserves every pairwise angle,
    e.g. for any rotation, whatever the output dimension."""
    return (cosine_gram(x) - cosine_gram(fx)).abs().mean()


# ------------------------------------------------------------------------------
# 3. label-free selection and confidence
# ------------------------------------------------------------------------------


def alignment_scores(old: np.ndarray, translated: np.ndarray, new_ref: np.ndarray,
                     new_other: np.ndarray) -> dict:
    """Label-free evidence that ``translated`` (= translate(old)) landed on the
    right new-model points. ``new_ref`` and ``new_other`` are two disjoint
    new-model samples of the same size as ``old``.

    - ``mnn``: fraction of translated points that are mutual nearest
      neighbours with a point of ``new_ref``; ``mnn_ceiling`` is the same rate
      between the two real new samples (what a perfect translation would get).
      A collapsed translator (everything near one point) scores ~0.
    - ``gram_corr``: take the mutual-NN pairs (old point i, new point j) and
      correlate the cosine Gram matrix of the old points (old space) with the
      Gram matrix of their matched new points (new space). Both Grams are the
      models' own geometry, so this only stays high when the matching pairs
      up points that mean the same thing. A wrong but distribution-matching
      rotation scores near 0 (measured on WordNet MiniLM->MPNet: random
      rotation 0.08, Procrustes on 1,000 true pairs 0.47).
    """
    t, r, s, o = (_normalise(a.astype(np.float32)) for a in (translated, new_ref, old, new_other))
    i, j, mnn = _mutual_nn(t, r)
    _, _, ceiling = _mutual_nn(o, r)
    gram_corr = 0.0
    if len(i) >= 8:
        g_old, g_new = s[i] @ s[i].T, r[j] @ r[j].T
        off = ~np.eye(len(i), dtype=bool)
        c = np.corrcoef(g_old[off], g_new[off])[0, 1]
        gram_corr = float(c) if np.isfinite(c) else 0.0
    return {"gram_corr": gram_corr, "mnn": mnn, "mnn_ceiling": ceiling,
            "mnn_ratio": mnn / ceiling if ceiling > 0 else 0.0, "n_mutual": int(len(i))}


def _mutual_nn(a: np.ndarray, b: np.ndarray):
    sims = a @ b.T
    a_to_b, b_to_a = sims.argmax(axis=1), sims.argmax(axis=0)
    i = np.where(b_to_a[a_to_b] == np.arange(len(a)))[0]
    return i, a_to_b[i], float(len(i) / max(len(a), 1))


def decide_aligned(scores: dict, agreement: dict | None, guide: dict | None, cfg: "Config"):
    """``(aligned, reason)``. The scores of one translator are necessary but not
    sufficient: a map that preserves geometry and matches the distribution
    scores well even when it sends points to the wrong place (measured on
    WordNet: a chance-level vec2vec run had gram_corr 0.27, mnn_ratio 0.36).
    So ``aligned`` also needs independent evidence that the solution is not
    one arbitrary optimum among many:

    - restarts >= 2: different seeds reached the same map (mean cosine between
      their translations >= min_agreement) and agree clearly more than the
      untrained networks did (a baseline, so no architecture choice can make
      restarts agree by construction); or
    - init="linear": the linear translator was itself confident (or fitted on
      pairs) and vec2vec still agrees with it (>= min_agreement).
    A single random-init restart has no such evidence and is never "aligned".
    """
    if scores["gram_corr"] < cfg.min_gram_corr or scores["mnn_ratio"] < cfg.min_mnn_ratio:
        return False, (f"weak matching: gram_corr {scores['gram_corr']:.3f} (min {cfg.min_gram_corr}), "
                       f"mnn_ratio {scores['mnn_ratio']:.3f} (min {cfg.min_mnn_ratio})")
    if agreement is not None:
        gain = agreement["mean_cos"] - agreement["at_init"]
        if agreement["mean_cos"] >= cfg.min_agreement and gain >= cfg.min_agreement_gain:
            return True, (f"restarts agree: mean cos {agreement['mean_cos']:.3f} "
                          f"(untrained {agreement['at_init']:.3f})")
    if guide is not None:
        conf = guide.get("confidence") or {}
        trusted = conf.get("aligned") is True or (not conf and guide.get("n_pairs", 0) > 0)
        if trusted and guide.get("agreement", 0.0) >= cfg.min_agreement:
            return True, f"agrees with a trusted linear map: mean cos {guide['agreement']:.3f}"
    if agreement is None and guide is None:
        return False, "one random-init restart gives no independent evidence: use restarts >= 2 or init='linear'"
    return False, "restarts (or the linear guide) do not agree on one map"


# ------------------------------------------------------------------------------
# 4. training
# ------------------------------------------------------------------------------


@dataclass
class Config:
    # architecture (CPU-sized defaults; see paper())
    width: int = 512            # latent and hidden width
    adapter_depth: int = 2      # blocks in each of A1, A2, B1, B2
    backbone_depth: int = 2     # blocks in the shared T
    norm: str = "layer"         # "layer" | "batch" (official config) | "none"
    dropout: float = 0.1
    disc_width: int = 512
    disc_depth: int = 3
    # loss weights (official code's values)
    w_gan: float = 1.0          # LS-GAN on translated outputs, both directions
    w_latent_gan: float = 1.0   # LS-GAN making old and new latents indistinguishable
    w_rec: float = 1.0          # 1 - cos(x, B1(T(A1(x)))), both spaces
    w_vsp: float = 1.0          # Gram of x vs Gram of translate(x), both directions
    w_cc: float = 10.0          # cycle x -> y' -> x''
    w_cc_vsp: float = 10.0      # Gram of x vs Gram of x''
    w_pairs: float = 1.0        # 1 - cos on aligned pairs, only when pairs are given
    w_guide: float = 1.0        # init="linear": pull towards the linear map, decays to 0
    smooth: float = 0.9         # one-sided label smoothing of the discriminators
    # optimisation
    batch_size: int = 256
    steps: int = 3000           # generator steps per restart
    lr: float = 2e-4
    disc_lr: float = 1e-4
    betas: tuple = (0.5, 0.999)
    warmup: int = 200           # linear lr warm-up steps, then constant
    max_grad_norm: float = 1000.0  # the official configs clip at 1000 (in effect: spikes only)
    max_seconds: float | None = None  # wall-clock budget per restart (None: no limit)
    cpu_budget: float | None = None   # CPU seconds for the whole fit (linear start, restarts and
                                      # the null share it); None: no limit
    # robustness
    seed: int = 0
    restarts: int = 1           # independent runs (seed, seed+1, ...); best kept, label-free
    init: str = "linear"        # "linear": distil the best linear map first | "random"
    init_steps: int = 300       # distillation steps for init="linear"
    guide_steps: int = 1000     # steps over which w_guide decays to 0
    eval_every: int = 250       # label-free evaluation; best snapshot of each restart is kept
    eval_points: int = 2048
    min_gram_corr: float = 0.2  # confidence thresholds (see alignment_scores, decide_aligned)
    min_mnn_ratio: float = 0.25
    min_agreement: float = 0.5  # mean cosine between restarts, or with the linear guide
    min_agreement_gain: float = 0.1  # restart agreement above that of the untrained networks
    min_csls_gain: float = 0.15  # calibration against the null: see linear.alignment_confidence
    min_knn_gain: float = 0.25
    min_z: float = 3.0
    # runtime
    device: str = "auto"        # "auto" (cuda > mps > cpu) | "cuda" | "mps" | "cpu"
    amp: bool = True            # mixed precision, used on CUDA only
    checkpoint_dir: str | None = None  # training state written here, resumed from here
    checkpoint_every: int = 500
    progress: bool = True

    @classmethod
    def paper(cls, **overrides) -> "Config":
        """Reference sizes and optimisation of the official code
        (configs/unsupervised.toml, train.py): width 1024, adapters 3 blocks,
        backbone 4, BatchNorm, discriminators 5 x 1024, Adam lr 2e-5 / 1e-5,
        2,000 warm-up steps, batch 256."""
        base = dict(width=1024, adapter_depth=3, backbone_depth=4, norm="batch", dropout=0.1,
                    disc_width=1024, disc_depth=5, lr=2e-5, disc_lr=1e-5, warmup=2000,
                    batch_size=256, steps=100_000, max_grad_norm=1000.0)
        base.update(overrides)
        return cls(**base)


def use_amp(device: torch.device, cfg: Config) -> bool:
    """fp16 autocast + GradScaler only pay off (and are only safe) on CUDA."""
    return mixed_precision(device, cfg.amp)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA


class Run:
    """Everything one restart trains: generator, three discriminators, two
    optimisers, two grad scalers, the step counter and the best snapshot."""

    def __init__(self, old_dim, new_dim, cfg: Config, device, seed: int):
        seed_everything(seed)
        self.seed, self.step, self.device = seed, 0, device
        self.net = Vec2VecNet(old_dim, new_dim, cfg).to(device)
        self.disc = nn.ModuleDict({
            "new": Discriminator(new_dim, cfg.disc_width, cfg.disc_depth),  # real y vs translate(x)
            "old": Discriminator(old_dim, cfg.disc_width, cfg.disc_depth),  # real x vs inverse(y)
            "latent": Discriminator(cfg.width, cfg.disc_width, cfg.disc_depth),  # T(A2 y) vs T(A1 x)
        }).to(device)
        self.opt_g = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=tuple(cfg.betas))
        amp = use_amp(device, cfg)
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=amp)
        self.batches = torch.Generator().manual_seed(seed)  # batch sampling, resumable
        self.best: dict | None = None  # {"step", "scores", "state"}
        self.history: list[dict] = []

    # --- training state (weights + optimisers + step + RNG), tensors only ---
    def state(self) -> dict:
        return {"step": self.step, "seed": self.seed,
                "net": self.net.state_dict(), "disc": self.disc.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                "rng_torch": torch.get_rng_state(), "rng_batches": self.batches.get_state(),
                "best": self.best, "history": json.dumps(self.history)}

    def load(self, st: dict) -> None:
        self.step = int(st["step"])
        self.net.load_state_dict(st["net"])
        self.disc.load_state_dict(st["disc"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.scaler_g.load_state_dict(st["scaler_g"])
        self.scaler_d.load_state_dict(st["scaler_d"])
        torch.set_rng_state(st["rng_torch"])
        self.batches.set_state(st["rng_batches"])
        self.best = st["best"]
        self.history = json.loads(st["history"])


def _save_training_state(path: Path, run: Run, key: str) -> None:
    """Replaced whole or not at all, fsynced (files.py): a crash never leaves a half-written file."""
    from ..files import atomic_write_with
    atomic_write_with(path, lambda fh: torch.save({"key": key, **run.state()}, fh),
                      elsewhere="set checkpoint_dir to a writable folder with free space")


def _load_training_state(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    st = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    if st.get("key") != key:
        raise UsageError(f"training checkpoint {path} was written for other data or another "
                         "configuration", "delete it, or pass the same sample and options")
    return st


class Vec2Vec(Translator):
    method = "vec2vec"
    Config = Config

    # --- fit: restarts, then label-free selection ------------------------------
    def _fit(self, old: np.ndarray, new: np.ndarray, pairs) -> None:
        cfg = self.config
        if cfg.init not in ("random", "linear"):
            raise UsageError(f"unknown init '{cfg.init}' for vec2vec", "use init='random' or 'linear'")
        if cfg.restarts < 1 or cfg.steps < 0:
            raise UsageError("vec2vec needs restarts >= 1 and steps >= 0", "fix the options")
        device = pick_device(cfg.device)
        cpu_start = time.process_time()
        old, new = _normalise(old), _normalise(new)
        evalset = _EvalSet(old, new, cfg.eval_points, cfg.seed)
        guide = self._linear_guide(old, new, pairs) if cfg.init == "linear" else None
        self.guide = None  # the fitted linear translator is not part of this checkpoint
        if guide is not None:  # the linear map scored like the restarts, for comparison
            guide.scores["alignment"] = alignment_scores(
                evalset.old, guide.lin.translate(evalset.old), evalset.new_ref, evalset.new_other)
        key = self._checkpoint_key(old, new, pairs)

        # the null: a random start trained the same way (a random rotation in
        # place of the linear map, no pairs), i.e. what this optimiser reaches
        # with no correspondence behind it; it gets the same share of the budget
        cpu_left = None if cfg.cpu_budget is None else cfg.cpu_budget - (time.process_time() - cpu_start)
        cpu_each = None if cpu_left is None else max(cpu_left, 0.0) / (cfg.restarts + 1)
        null_guide = _Guide(_RandomRotation(self.old_dim, self.new_dim, cfg.seed), old, new) \
            if guide is not None else None
        null = self._train_one(old, new, None, null_guide, evalset, device, cfg.seed + NULL_SEED,
                               key, cpu_each)
        runs = []
        for r in range(cfg.restarts):
            run = self._train_one(old, new, pairs, guide, evalset, device, cfg.seed + r, key, cpu_each)
            runs.append(run)

        null_t = _translate_with(null, evalset.old, self.old_dim, self.new_dim, cfg)
        calibrated = [confidence_of_translations(
            _translate_with(run, evalset.old, self.old_dim, self.new_dim, cfg), {"null": null_t},
            evalset.new_ref, evalset.new_other, 10, cfg.min_csls_gain, cfg.min_knn_gain, cfg.min_z)
            for run in runs]
        chosen = max(range(len(runs)), key=lambda k: (calibrated[k]["csls_gain"],
                                                      _selection_score(runs[k].best["scores"])))
        best = runs[chosen]
        self._net = Vec2VecNet(self.old_dim, self.new_dim, cfg)
        self._net.load_state_dict(best.best["state"])
        self._net.eval()

        agreement = _restart_agreement(runs, evalset.old, self.old_dim, self.new_dim, cfg) \
            if len(runs) > 1 else None
        if guide is not None:
            guide.scores["agreement"] = float(np.mean(np.sum(
                self._translate(evalset.old) * guide.lin.translate(evalset.old), axis=1)))
        scores = best.best["scores"]
        self.meta["selection"] = {
            "criterion": ("each restart: its snapshot with the highest gram_corr (mutual-NN "
                          "matched-pair Gram correlation); among restarts: the highest CSLS gain "
                          "over the null run"),
            "restarts": [{"seed": run.seed, "best_step": run.best["step"], "steps_run": run.step,
                          **run.best["scores"], "csls_gain": c["csls_gain"],
                          "knn_sim_gain": c["knn_sim_gain"]} for run, c in zip(runs, calibrated)],
            "null": {"seed": null.seed, "best_step": null.best["step"], "steps_run": null.step,
                     **null.best["scores"]},
            "history": [run.history for run in runs],
            "chosen": chosen,
            "why": f"restart {chosen} (seed {best.seed}) gains the most over the null run in CSLS "
                   f"({calibrated[chosen]['csls_gain']:.3f}) of {len(runs)} restart(s); "
                   f"snapshot at step {best.best['step']}",
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
        }
        evidence, reason = decide_aligned(scores, agreement, None if guide is None else guide.scores, cfg)
        null_conf = calibrated[chosen]
        aligned = evidence and null_conf["aligned"]
        if evidence and not null_conf["aligned"]:
            reason = (f"no better than a random start trained the same way: CSLS gain "
                      f"{null_conf['csls_gain']:.3f} (min {cfg.min_csls_gain}), knn_sim gain "
                      f"{null_conf['knn_sim_gain']:.3f} (min {cfg.min_knn_gain}), z "
                      f"{min(null_conf['csls_z'], null_conf['knn_sim_z']):.1f} (min {cfg.min_z})")
        self.meta["confidence"] = {
            "aligned": aligned, "reason": reason,
            "against_null": null_conf,
            "rule": ("aligned = independent evidence (restarts agree, or a trusted linear start "
                     "agrees) AND, against a null run (random start, same training, no pairs), "
                     "csls_gain >= min_csls_gain, knn_sim_gain >= min_knn_gain, both z >= min_z "
                     "(linear.alignment_confidence)"),
            "gram_corr": scores["gram_corr"], "min_gram_corr": cfg.min_gram_corr,
            "mnn_ratio": scores["mnn_ratio"], "min_mnn_ratio": cfg.min_mnn_ratio,
            "cycle_error": scores["cycle_error"],
            "restart_agreement": agreement, "min_agreement": cfg.min_agreement,
            "guide": None if guide is None else guide.scores,
        }
        self.meta["device"] = str(device)

    def _checkpoint_key(self, old, new, pairs) -> str:
        """Resuming is only allowed with the same data and the options that
        shape the training (not steps / max_seconds / restarts, which may grow)."""
        from .base import fingerprint
        skip = {"steps", "max_seconds", "cpu_budget", "restarts", "progress", "checkpoint_dir",
                "checkpoint_every", "device"}
        opts = {f.name: getattr(self.config, f.name) for f in fields(self.config) if f.name not in skip}
        blob = json.dumps(opts, sort_keys=True, default=str) + fingerprint(old, new, *(pairs or (None, None)))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _train_one(self, old, new, pairs, guide, evalset, device, seed, key,
                   cpu_limit: float | None = None) -> Run:
        cfg = self.config
        run = Run(self.old_dim, self.new_dim, cfg, device, seed)
        ckpt = Path(cfg.checkpoint_dir) / f"restart-{seed}.pt" if cfg.checkpoint_dir else None
        if ckpt is not None:
            st = _load_training_state(ckpt, key)
            if st is not None:
                run.load(st)
        amp = use_amp(device, cfg)
        X = torch.from_numpy(old).to(device)
        Y = torch.from_numpy(new).to(device)
        P = tuple(torch.from_numpy(_normalise(p)).to(device) for p in pairs) if pairs else None
        G = guide.targets(device) if guide is not None else None
        total = cfg.steps + (cfg.init_steps if guide is not None else 0)

        bar = _progress(cfg, total, run.step, f"vec2vec seed {seed}")
        started, cpu_started = time.monotonic(), time.process_time()
        while run.step < total:
            if cfg.max_seconds is not None and time.monotonic() - started > cfg.max_seconds:
                break
            if cpu_limit is not None and time.process_time() - cpu_started > cpu_limit:
                break
            ix = torch.randint(len(X), (cfg.batch_size,), generator=run.batches).to(device)
            iy = torch.randint(len(Y), (cfg.batch_size,), generator=run.batches).to(device)
            ip = (torch.randint(len(P[0]), (min(cfg.batch_size, len(P[0])),), generator=run.batches)
                  .to(device) if P is not None else None)
            distilling = G is not None and run.step < cfg.init_steps
            losses = _train_step(run, cfg, amp, X[ix], Y[iy],
                                 pairs=(P[0][ip], P[1][ip]) if P is not None else None,
                                 guide=(G[0][ix], G[1][iy]) if G is not None else None,
                                 guide_weight=_guide_weight(cfg, run.step) if G is not None else 0.0,
                                 distilling=distilling)
            run.step += 1
            _set_lr(run, cfg)
            if bar is not None:
                bar.update(1)
                if run.step % 10 == 0:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            if run.step % cfg.eval_every == 0 or run.step == total or (G is not None and run.step == cfg.init_steps):
                _evaluate(run, evalset, cfg)
            if ckpt is not None and run.step % cfg.checkpoint_every == 0:
                _save_training_state(ckpt, run, key)
        if bar is not None:
            bar.close()
        if run.best is None or (run.history and run.history[-1]["step"] != run.step):
            _evaluate(run, evalset, cfg)
        if ckpt is not None:
            _save_training_state(ckpt, run, key)
        return run

    # --- init="linear": the unsupervised linear translator as a guide ---------
    guide: Translator | None = None  # set to a fitted linear translator to reuse it

    def _linear_guide(self, old, new, pairs) -> "_Guide":
        """The best linear map available: ``auto`` on the pairs when there are
        some (Procrustes unless a rival is clearly better), else the
        unsupervised linear translator."""
        from . import make_translator
        if self.guide is not None:
            if (self.guide.old_dim, self.guide.new_dim) != (self.old_dim, self.new_dim):
                raise UsageError("the guide translator was fitted for other dimensions",
                                 "fit the guide on the same old and new samples")
            return _Guide(self.guide, old, new)
        method = "auto" if pairs is not None else "linear"
        lin = make_translator(method, seed=self.config.seed)
        lin.fit(old, new, pairs)
        return _Guide(lin, old, new)

    # --- inference and persistence ----------------------------------------------
    @torch.no_grad()
    def _translate(self, x: np.ndarray) -> np.ndarray:
        return self._net.translate(torch.from_numpy(_normalise(x))).numpy()

    @torch.no_grad()
    def _inverse(self, y: np.ndarray) -> np.ndarray:
        return self._net.inverse(torch.from_numpy(_normalise(y))).numpy()

    def _state(self) -> dict[str, np.ndarray]:
        return {f"net.{k}": v.detach().cpu().numpy() for k, v in self._net.state_dict().items()}

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        self._net = Vec2VecNet(self.old_dim, self.new_dim, self.config)
        own = {k[len("net."):]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("net.")}
        try:
            self._net.load_state_dict(own)
        except RuntimeError as e:
            raise DataError(f"vec2vec weights do not match the saved configuration: {str(e)[:200]}",
                            "retrain the checkpoint") from None
        self._net.eval()


NULL_SEED = 10_000  # the null run's seed offset (its own training checkpoint file)


class _RandomRotation:
    """The null's start: a random (semi-)orthogonal map, shaped like a linear
    translator (translate / inverse) so that it is distilled the same way."""

    method = "random rotation"

    def __init__(self, old_dim: int, new_dim: int, seed: int):
        from .linear import random_rotation
        self.w = random_rotation(old_dim, new_dim, np.random.default_rng([seed, NULL_SEED]))
        self.meta: dict = {}

    def translate(self, x):
        return _normalise(_normalise(x) @ self.w)

    def inverse(self, y):
        return _normalise(_normalise(y) @ self.w.T)


@torch.no_grad()
def _translate_with(run: "Run", x: np.ndarray, old_dim, new_dim, cfg) -> np.ndarray:
    """Translate with a run's best snapshot (not its last weights)."""
    net = Vec2VecNet(old_dim, new_dim, cfg)
    net.load_state_dict(run.best["state"])
    return net.eval().translate(torch.from_numpy(x)).numpy()


# --- the step -----------------------------------------------------------------------


def _train_step(run: Run, cfg: Config, amp: bool, x, y, pairs=None, guide=None,
                guide_weight: float = 0.0, distilling: bool = False) -> dict:
    net, disc = run.net, run.disc
    net.train()
    with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=amp):
        zx, zy = net.latent_old(x), net.latent_new(y)
        x2y, y2x = net.to_new(zx), net.to_old(zy)

    losses = {}
    if not distilling:
        # 1) discriminators: real vs translated (generator outputs detached)
        with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=amp):
            loss_d = (lsgan_discriminator_loss(disc["new"](y), disc["new"](x2y.detach()), cfg.smooth)
                      + lsgan_discriminator_loss(disc["old"](x), disc["old"](y2x.detach()), cfg.smooth)
                      + lsgan_discriminator_loss(disc["latent"](zy.detach()), disc["latent"](zx.detach()),
                                                 cfg.smooth))
        run.opt_d.zero_grad(set_to_none=True)
        run.scaler_d.scale(loss_d).backward()
        run.scaler_d.unscale_(run.opt_d)
        nn.utils.clip_grad_norm_(disc.parameters(), cfg.max_grad_norm)
        run.scaler_d.step(run.opt_d)
        run.scaler_d.update()
        losses["disc"] = loss_d.item()

    # 2) generator
    disc.requires_grad_(False)  # the generator step must not train the discriminators
    with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=amp):
        total = torch.zeros((), device=x.device)
        if guide is not None and (distilling or guide_weight > 0):
            g = reconstruction_loss(x2y, guide[0]) + reconstruction_loss(y2x, guide[1])
            total = total + (1.0 if distilling else guide_weight) * g
            losses["guide"] = g.item()
        if not distilling:
            gan = lsgan_generator_loss(disc["new"](x2y), cfg.smooth) + lsgan_generator_loss(disc["old"](y2x), cfg.smooth)
            lat = lsgan_generator_loss(disc["latent"](zx), cfg.smooth)
            rec = reconstruction_loss(x, net.to_old(zx)) + reconstruction_loss(y, net.to_new(zy))
            vsp = vsp_loss(x, x2y) + vsp_loss(y, y2x)
            x_cyc, y_cyc = net.inverse(x2y), net.translate(y2x)
            cc = reconstruction_loss(x, x_cyc) + reconstruction_loss(y, y_cyc)
            cc_vsp = vsp_loss(x, x_cyc) + vsp_loss(y, y_cyc)
            total = (total + cfg.w_gan * gan + cfg.w_latent_gan * lat + cfg.w_rec * rec
                     + cfg.w_vsp * vsp + cfg.w_cc * cc + cfg.w_cc_vsp * cc_vsp)
            losses.update(gan=gan.item(), lat=lat.item(), rec=rec.item(), vsp=vsp.item(), cc=cc.item())
        if pairs is not None and cfg.w_pairs > 0:
            po, pn = pairs
            sup = reconstruction_loss(net.translate(po), pn) + reconstruction_loss(net.inverse(pn), po)
            total = total + cfg.w_pairs * sup
            losses["pairs"] = sup.item()
    run.opt_g.zero_grad(set_to_none=True)
    run.scaler_g.scale(total).backward()
    run.scaler_g.unscale_(run.opt_g)
    nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
    run.scaler_g.step(run.opt_g)
    run.scaler_g.update()
    disc.requires_grad_(True)
    if not np.isfinite(total.item()):
        raise DataError("vec2vec training diverged (loss is NaN or inf)",
                        "lower lr / disc_lr, or use amp=False")
    losses["total"] = total.item()
    return losses


def _set_lr(run: Run, cfg: Config) -> None:
    """Linear warm-up to the configured learning rates, then constant."""
    scale = min(1.0, (run.step + 1) / max(cfg.warmup, 1))
    for g in run.opt_g.param_groups:
        g["lr"] = cfg.lr * scale
    for g in run.opt_d.param_groups:
        g["lr"] = cfg.disc_lr * scale


def _guide_weight(cfg: Config, step: int) -> float:
    """init="linear": full weight right after distillation, 0 after guide_steps."""
    after = step - cfg.init_steps
    return cfg.w_guide * max(0.0, 1.0 - after / max(cfg.guide_steps, 1))


# --- evaluation, selection --------------------------------------------------------


class _EvalSet:
    """A fixed subset for label-free scoring: old points, and two disjoint
    new-model subsets of the same size (reference and ceiling)."""

    def __init__(self, old, new, n, seed):
        rng = np.random.default_rng(seed)
        n = max(2, min(n, len(old), len(new) // 2))
        self.old = old[rng.choice(len(old), n, replace=False)]
        idx = rng.permutation(len(new))
        self.new_ref, self.new_other = new[idx[:n]], new[idx[n:2 * n]]


@torch.no_grad()
def _evaluate(run: Run, evalset: _EvalSet, cfg: Config) -> None:
    run.net.eval()
    x = torch.from_numpy(evalset.old).to(run.device)
    t = run.net.translate(x)
    back = run.net.inverse(t)
    run.net.train()
    scores = alignment_scores(evalset.old, t.float().cpu().numpy(), evalset.new_ref, evalset.new_other)
    scores["cycle_error"] = float(1.0 - F.cosine_similarity(x, back.float(), dim=1).mean().item())
    run.history.append({"step": run.step, **scores})
    if run.best is None or _selection_score(scores) > _selection_score(run.best["scores"]):
        run.best = {"step": run.step, "scores": scores,
                    "state": {k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()}}


def _selection_score(scores: dict) -> tuple:
    return (round(scores["gram_corr"], 3), scores["mnn_ratio"])


def _restart_agreement(runs: list[Run], old_eval: np.ndarray, old_dim, new_dim, cfg) -> dict:
    """Mean cosine between the chosen snapshots' translations of the same old
    points, over every pair of restarts: failures are random, successes agree."""
    outs, fresh = [], []
    for run in runs:
        net = Vec2VecNet(old_dim, new_dim, cfg)
        net.load_state_dict(run.best["state"])
        seed_everything(run.seed)  # the untrained network of this restart (Run builds it first)
        init = Vec2VecNet(old_dim, new_dim, cfg)
        with torch.no_grad():
            x = torch.from_numpy(old_eval)
            outs.append(net.eval().translate(x).numpy())
            fresh.append(init.eval().translate(x).numpy())
    return {"mean_cos": _mean_pairwise_cos(outs), "at_init": _mean_pairwise_cos(fresh),
            "pairs": _pairwise_cos(outs)}


def _pairwise_cos(outs: list[np.ndarray]) -> list[float]:
    return [float(np.mean(np.sum(outs[a] * outs[b], axis=1)))
            for a in range(len(outs)) for b in range(a + 1, len(outs))]


def _mean_pairwise_cos(outs: list[np.ndarray]) -> float:
    return float(np.mean(_pairwise_cos(outs)))


def _progress(cfg: Config, total: int, start: int, desc: str):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True)


class _Guide:
    """Targets from the linear translator: translate(old) and inverse(new)."""

    def __init__(self, lin, old, new):
        self.lin = lin
        self.old_t = _normalise(lin.translate(old)).astype(np.float32)
        self.new_t = _normalise(lin.inverse(new)).astype(np.float32)
        conf = getattr(lin, "meta", {}).get("confidence")
        self.scores = {"method": getattr(lin, "method", "linear"), "confidence": copy.deepcopy(conf),
                       "n_pairs": getattr(lin, "meta", {}).get("n_pairs", 0)}

    def targets(self, device):
        return torch.from_numpy(self.old_t).to(device), torch.from_numpy(self.new_t).to(device)


__all__ = ["Vec2Vec", "Config", "Vec2VecNet", "Discriminator", "ResidualMLP", "pick_device",
           "use_amp", "seed_everything", "lsgan_discriminator_loss", "lsgan_generator_loss",
           "reconstruction_loss", "vsp_loss", "cosine_gram", "alignment_scores", "decide_aligned"]
