"""WordLlama static embeddings, from the weights bundled in the ``wordllama`` package."""

from __future__ import annotations

import numpy as np

from .base import DEFAULT_BATCH_SIZE, Encoder, _batches
from .sentence_transformer import _package_dir, _package_version

class WordLlamaEncoder(Encoder):
    """WordLlama static embeddings (the l2_supercat weights bundled in the package)."""

    def __init__(self, *, config: str = "l2_supercat", dim: int = 256, normalize: bool = True):
        super().__init__(f"wordllama-{config}-{dim}", normalize=normalize)
        self.config, self.requested_dim = config, int(dim)
        self._model = None

    def model(self):
        if self._model is None:
            package_dir = _package_dir("wordllama", "wordllama")
            import logging
            root = logging.getLogger()
            level, handlers = root.level, list(root.handlers)
            from wordllama import WordLlama  # its import calls logging.basicConfig(level=INFO)
            # cache_dir = the package itself, where the weights ship; never the hub
            self._model = WordLlama.load(config=self.config, cache_dir=package_dir, dim=self.requested_dim,
                                         disable_download=True)
            root.setLevel(level)
            root.handlers[:] = handlers
        return self._model

    def _native_dim(self) -> int:
        return self.requested_dim

    def _encode(self, texts, batch_size, show_progress, kind):
        model = self.model()
        # static embeddings are cheap: big chunks, the caller's batch size inside
        return np.concatenate([model.embed(self._prefixed(batch, kind), norm=False,
                                           batch_size=batch_size or DEFAULT_BATCH_SIZE)
                               for batch in _batches(texts, 4096, show_progress, self.name)])

    def _identity(self) -> dict:
        return {"model": self.name, "version": _package_version("wordllama")}
