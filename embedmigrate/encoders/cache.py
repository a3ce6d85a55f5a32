"""The encode cache: an encoder's vectors for a list of texts, kept on disk by content key."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

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
    path.parent.mkdir(parents=True, exist_ok=True)
    # write beside, then rename: a crash never leaves a truncated entry behind
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, vectors)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return vectors


def encode_cache_path(encoder: Encoder, texts, cache_dir, *, kind: str = "passage") -> Path:
    digest = hashlib.sha256()
    digest.update(f"{encoder.fingerprint()}\n{kind}\n{len(texts)}\n".encode())
    for t in texts:
        raw = t.encode("utf-8", errors="surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))  # length-prefixed: no separator ambiguity
        digest.update(raw)
    return Path(cache_dir) / f"{_safe_name(encoder.fingerprint())}-{kind}-{digest.hexdigest()[:24]}.npy"
