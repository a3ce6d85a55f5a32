"""Translators old space -> new space.

    >>> from embedmigrate.translators import make_translator, Translator
    >>> t = make_translator("auto").fit(old_sample, new_sample, pairs=None)
    >>> t.save("checkpoints/docs-minilm-to-mpnet")
    >>> Translator.load("checkpoints/docs-minilm-to-mpnet").translate(x)

Methods are registered by name and imported lazily (vec2vec needs torch).
"""

from __future__ import annotations

import importlib

from ..errors import UsageError
from .base import Translator

# method name -> "module:Class"
REGISTRY = {
    "identity": "embedmigrate.translators.paired:Identity",
    "mean": "embedmigrate.translators.paired:MeanEstimator",
    "procrustes": "embedmigrate.translators.paired:Procrustes",
    "ridge": "embedmigrate.translators.paired:Ridge",
    "mlp": "embedmigrate.translators.paired:ResidualMLP",
    "semi": "embedmigrate.translators.paired:SemiSupervised",
    "linear": "embedmigrate.translators.linear:UnsupervisedLinear",
    "vec2vec": "embedmigrate.translators.vec2vec:Vec2Vec",
    "auto": "embedmigrate.translators.auto:Auto",
}


def translator_class(method: str) -> type[Translator]:
    if method not in REGISTRY:
        raise UsageError(f"unknown translator method '{method}'",
                         "use one of " + ", ".join(REGISTRY))
    module, _, name = REGISTRY[method].partition(":")
    return getattr(importlib.import_module(module), name)


def make_translator(method: str = "auto", **options) -> Translator:
    return translator_class(method)(**options)


__all__ = ["Translator", "make_translator", "translator_class", "REGISTRY"]
