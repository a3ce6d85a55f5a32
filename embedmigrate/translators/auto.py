"""``auto``: pick a translator from what the data allows, then delegate.

    >= 1,000 pairs   procrustes or ridge (identity too when the dims match),
                     whichever keeps more of the true top-10 on held-out pairs
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
from .paired import split_holdout

_OWN_META = ("fingerprint", "n_old", "n_new", "n_pairs", "library_version")


def held_out_retrieval(translator: Translator, old: np.ndarray, new: np.ndarray, k: int = 10) -> dict:
    """R@k retained on held-out pairs: search the translated old vectors with the
    true new vectors as queries and compare with searching the true new vectors."""
    from ..metrics import rank_metrics, recall_retained
    pred = translator.translate(old)
    k = max(1, min(k, len(new) - 1))
    return {"recall_retained": recall_retained(new, pred, new, k),
            "top1": rank_metrics(pred, new)["top1"]}


class Auto(Translator):
    method = "auto"

    @dataclass
    class Config:
        many_pairs: int = 1000   # from here on paired methods win (Vulić et al. 2019)
        min_semi_pairs: int = 5
        holdout: float = 0.2
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
        from . import make_translator

        po, pn = pairs
        candidates = ["procrustes", "ridge"] + (["identity"] if po.shape[1] == pn.shape[1] else [])
        train, hold = split_holdout(len(po), self.config.holdout, self.config.seed)
        scores = {}
        for m in candidates:
            t = make_translator(m).fit(old, new, (po[train], pn[train]))
            scores[m] = held_out_retrieval(t, po[hold], pn[hold])
        best = max(scores, key=lambda m: (scores[m]["recall_retained"], scores[m]["top1"]))
        reason = (f"{len(po)} pairs: {best} kept the most of the true top-10 on "
                  f"{len(hold)} held-out pairs ({scores[best]['recall_retained']:.3f})")
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
