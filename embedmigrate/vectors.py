"""The one check and the one L2 normaliser every vector in embedmigrate goes through.

Connectors check a batch before writing it, translators check what they are fitted
on and asked to translate, encoders check what a model or an endpoint returned:
all with ``as_float32``, so a NaN, an inf, a ragged row or a wrong dimension is the
same one-line ``DataError`` wherever it shows up. ``l2_normalise`` is the one
normaliser (translators, metrics, encoders).
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

# an all-zero row (e.g. WordLlama on an empty text) stays zero instead of becoming NaN
_TINY = 1e-12

DIM_FIX = "translate to the target model's dimension, or create the target for dimension {got}"
NONFINITE_FIX = "clean or drop those points in the source before migrating"


def as_float32(vectors, dim: int | None = None, *, what: str = "vectors",
               expected_by: str = "the collection", dim_fix: str = DIM_FIX,
               nonfinite_fix: str = NONFINITE_FIX) -> np.ndarray:
    """``vectors`` as a float32 (n, dim) array: 2-D, finite, of dimension ``dim`` (if
    given). Anything else is a one-line DataError that names ``what`` and the fix;
    ``expected_by`` says whose dimension ``dim`` is, ``dim_fix`` may use ``{got}``."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: refused below
            arr = np.asarray(vectors, dtype=np.float32)
    except (ValueError, TypeError) as e:  # ragged rows, text, None, nested objects
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{what} are not a 2-D array of numbers ({reason})",
                        "pass one vector of numbers per row, all of the same dimension") from None
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, dim or 0)
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (n, dim), got shape {arr.shape}",
                        "pass one vector per row")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{what} have dimension {arr.shape[1]} but {expected_by} expects {dim}",
                        dim_fix.format(got=arr.shape[1]))
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise DataError(f"{what}: {bad} of {len(arr)} vectors contain NaN or inf", nonfinite_fix)
    return arr


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (all-zero rows stay zero); keeps ``x``'s dtype."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _TINY)


__all__ = ["as_float32", "l2_normalise"]
