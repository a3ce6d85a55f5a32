"""``auto``: pick a translator from what the data allows, then delegate.

    >= 1,000 pairs   procrustes, unless ridge (or identity, when the dims match)
                     beats it in k-fold cross-validation on the pairs by a clear
                     margin on BOTH top-1 and recall@10 retained
    5 .. 999 pairs   semi (pairs as anchors + refinement on the unpaired samples)
    no pairs         linear (unsupervised alignment; vec2vec is slower and opt-in)

The choice and its reason are in ``meta["auto_choice"]``. The chosen
translator's state is stored inside the auto checkpoint, and its meta
(confidence, selection ...) is copied up, so ``Translator.load(dir)`` returns
a working ``Auto`` that behaves exactly like the translator it chose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DataError
from .base import Translator

CEILING = 0.995  # both candidates at least this good on a metric: a tie
_OWN_META = ("fingerprint", "n_old", "n_new", "n_pairs", "library_version")


def held_out_retrieval(translator: Translator, old: np.ndarray, new: np.ndarray, k: int = 10) -> dict:
    """R@k retained on held-out pairs: search the translated old vectors with the
    true new vectors as queries and compare with searching the true new vectors."""
    from ..metrics import rank_metrics, recall_retained
    pred = translator.translate(old)
    k = max(1, min(k, len(new) - 1))
    return {"recall_retained": recall_retained(new, pred, new, k),
            "top1": rank_metrics(pred, new)["top1"]}


def cv_folds(n: int, k: int, seed: int, min_fold: int = 5) -> list[np.ndarray]:
    """k disjoint held-out index sets covering the pairs (fewer folds when a
    fold would hold fewer than ``min_fold`` pairs)."""
    k = max(2, min(k, n // min_fold))
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(f) for f in np.array_split(order, k)]


def summarise_folds(scores: list[dict], baseline: list[dict], config) -> dict:
    """Mean per metric over the folds, and whether the candidate beats the
    baseline (same folds: a paired comparison) by more than the margin and the
    fold-to-fold noise on every metric. A metric on which both sit at the
    ceiling (top-1 = 1 among a fold's pairs is common) cannot separate them:
    it is a tie that does not block, but at least one metric must be won."""
    out, clear, won = {}, True, False
    for key in ("top1", "recall_retained"):
        mine = np.array([s[key] for s in scores])
        theirs = np.array([s[key] for s in baseline])
        gain = mine - theirs
        se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
        better = bool(gain.mean() > max(config.min_margin, config.noise_factor * se))
        at_ceiling = bool(min(mine.mean(), theirs.mean()) >= CEILING)
        out[key] = float(mine.mean())
        out[f"{key}_per_fold"] = [round(float(v), 4) for v in mine]
        out[f"{key}_gain"] = float(gain.mean())
        out[f"{key}_gain_se"] = se
        if at_ceiling:
            out[f"{key}_tie_at_ceiling"] = True
        clear, won = clear and (better or at_ceiling), won or better
    out["clearly_better"] = bool(clear and won)
    return out


def _fit_quiet(method: str, old, new, pairs) -> Translator:
    from . import make_translator
    return make_translator(method).fit(old, new, pairs)


class Auto(Translator):
    method = "auto"

    @dataclass
    class Config:
        many_pairs: int = 1000   # from here on paired methods win (Vulić et al. 2019)
        min_semi_pairs: int = 5
        folds: int = 5           # k-fold cross-validation of the paired candidates
        min_margin: float = 0.01  # a rival must beat Procrustes by this much ...
        noise_factor: float = 2.0  # ... and by this many standard errors of the fold-wise gain
        seed: int = 0

    def _fit(self, old, new, pairs):
        from . import make_translator

        n_pairs = 0 if pairs is None else len(pairs[0])
        if n_pairs >= self.config.many_pairs:
            method, reason, scores = self._pick_paired(old, new, pairs)
        elif n_pairs >= self.config.min_semi_pairs:
            method, scores = "semi", None
            reason = (f"{n_pairs} pairs (< {self.config.many_pairs}): Procrustes seeded by the "
                      "pairs, refined on the unpaired samples")
        else:
            method, scores = "linear", None
            reason = ("no pairs: unsupervised linear alignment (check meta['confidence']"
                      "['aligned'] before writing)") if n_pairs == 0 else \
                     f"only {n_pairs} pairs (< {self.config.min_semi_pairs}): unsupervised alignment"
            pairs = None
        inner = make_translator(method)
        inner.fit(old, new, pairs)
        self._adopt(inner)
        self.meta["auto_choice"] = {"method": method, "reason": reason,
                                    "config": asdict(inner.config), "validation": scores}

    def _pick_paired(self, old, new, pairs):
        """Procrustes unless a rival clearly beats it out of sample.

        Why Procrustes is the default: with a single 200-pair hold-out, ridge won
        on recall retained by a hair (0.523 vs 0.501) and then lost a third of
        the top-1 (0.55 vs 0.82, WordLlama -> MiniLM, issue #13): ridge shrinks
        towards the mean, which makes hubs. So every candidate is scored in
        k-fold cross-validation on both metrics, and a rival replaces
        Procrustes only when its mean fold-wise gain on top-1 AND on recall
        retained exceeds max(min_margin, noise_factor x the gain's standard
        error over the folds)."""
        po, pn = pairs
        candidates = ["procrustes", "ridge"] + (["identity"] if po.shape[1] == pn.shape[1] else [])
        folds = cv_folds(len(po), self.config.folds, self.config.seed)
        per_fold = {m: [] for m in candidates}
        for hold in folds:
            train = np.setdiff1d(np.arange(len(po)), hold)
            for m in candidates:
                t = _fit_quiet(m, old, new, (po[train], pn[train]))
                per_fold[m].append(held_out_retrieval(t, po[hold], pn[hold]))
        scores = {m: summarise_folds(per_fold[m], per_fold["procrustes"], self.config)
                  for m in candidates}
        winners = [m for m in candidates if m != "procrustes" and scores[m]["clearly_better"]]
        best = max(winners, key=lambda m: scores[m]["top1"]) if winners else "procrustes"
        base = scores["procrustes"]
        if best == "procrustes":
            reason = (f"{len(po)} pairs, {len(folds)}-fold cross-validation: no rival beat Procrustes "
                      f"by a clear margin on both top-1 and recall@10 retained (Procrustes: top-1 "
                      f"{base['top1']:.3f}, recall retained {base['recall_retained']:.3f})")
        else:
            reason = (f"{len(po)} pairs, {len(folds)}-fold cross-validation: {best} beat Procrustes on "
                      f"both top-1 ({scores[best]['top1']:.3f} vs {base['top1']:.3f}) and recall@10 "
                      f"retained ({scores[best]['recall_retained']:.3f} vs "
                      f"{base['recall_retained']:.3f}) by more than the fold-to-fold noise")
        scores["rule"] = (f"procrustes unless a rival's mean fold-wise gain on top-1 and on recall@10 "
                          f"retained both exceed max({self.config.min_margin}, "
                          f"{self.config.noise_factor} x its standard error); a metric on which "
                          f"both score >= {CEILING} is a tie and does not block")
        scores["folds"] = len(folds)
        return best, reason, scores

    def _adopt(self, inner: Translator):
        self.inner = inner
        self.meta.update({k: v for k, v in inner.meta.items() if k not in _OWN_META})

    def _translate(self, x):
        return self.inner._translate(x)

    def _inverse(self, y):
        return self.inner._inverse(y)

    def _state(self):
        return self.inner._state()

    def _load_state(self, state):
        from . import translator_class

        choice = self.meta.get("auto_choice") or {}
        if "method" not in choice:
            raise DataError("auto checkpoint does not record the chosen method",
                            "retrain the translator")
        cls = translator_class(choice["method"])
        cfg_cls = getattr(cls, "Config", None)
        inner = cls(cfg_cls(**choice.get("config", {})) if cfg_cls else None)
        inner.old_dim, inner.new_dim = self.old_dim, self.new_dim
        inner.meta = dict(self.meta)
        inner._load_state(state)
        self.inner = inner
