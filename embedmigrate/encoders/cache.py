"""The encode cache: an encoder's vectors for a list of texts, kept on disk by content key."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..files import atomic_write_with
from .base import Encoder, _check_texts, _safe_name

def encode_cached(encoder: Encoder, texts, cache_dir, *, kind: str = "passage",
                  batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
    """``encoder.encode(texts)``, stored in ``cache_dir`` under a key of the
    encoder fingerprint and the exact texts; a second call reads the file.
    ``EMBEDMIGRATE_ENCODE_CACHE`` names one folder shared by every job instead
    (several plans over the same texts encode them once)."""
    texts = _check_texts(texts)
    cache_dir = os.environ.get("EMBEDMIGRATE_ENCODE_CACHE") or cache_dir
    path = encode_cache_path(encoder, texts, cache_dir, kind=kind)
    if path.exists():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(texts) and cached.dtype == np.float32:
                return cached
        except (ValueError, OSError):
            pass  # unreadable cache entry: recompute and overwrite it
    vectors = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress, kind=kind)
    # the one atomic writer: a crash never leaves a truncated entry behind
    atomic_write_with(path, lambda fh: np.save(fh, vectors),
                      elsewhere="free disk space, or set EMBEDMIGRATE_ENCODE_CACHE to a writable folder")
    return vectors


def encode_cache_path(encoder: Encoder, texts, cache_dir, *, kind: str = "passage") -> Path:
    digest = hashlib.sha256()
    digest.update(f"{encoder.fingerprint()}\n{kind}\n{len(texts)}\n".encode())
    for t in texts:
        raw = t.encode("utf-8", errors="surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))  # length-prefixed: no separator ambiguity
        digest.update(raw)
    return Path(cache_dir) / f"{_safe_name(encoder.fingerprint())}-{kind}-{digest.hexdigest()[:24]}.npy"
