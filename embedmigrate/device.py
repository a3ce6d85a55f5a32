"""The one place embedmigrate chooses where PyTorch runs, and whether in mixed precision.

Translators (vec2vec, the residual MLP) and sentence-transformers encoders all
ask ``pick_device``: ``auto`` takes a CUDA GPU when PyTorch sees one, else Apple
MPS, else the CPU; a named device that is not there is a one-line error instead
of a PyTorch traceback deep inside training. ``mixed_precision`` says whether
fp16 autocast (and a GradScaler) is used: only on CUDA, where it pays off and is
safe.
"""

from __future__ import annotations

from .errors import MissingDependencyError, UsageError

DEVICES = "'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'"


def pick_device(pref: str | None = "auto"):
    """A ``torch.device``: cuda > mps > cpu for "auto" (or None); a named device must exist."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", pip="torch") from None
    pref = (pref or "auto").strip().lower()
    has_cuda = torch.cuda.is_available()
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref == "auto":
        return torch.device("cuda" if has_cuda else "mps" if has_mps else "cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not has_cuda:
            raise UsageError(f"device '{pref}' requested but PyTorch sees no CUDA GPU",
                             "use device 'auto' or 'cpu', or install a CUDA build of torch")
        index = pref.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UsageError(f"device '{pref}' does not exist ({torch.cuda.device_count()} CUDA GPU(s))",
                             f"use one of {DEVICES}")
        return torch.device(pref)
    if pref == "mps":
        if not has_mps:
            raise UsageError("device 'mps' requested but Apple MPS is not available",
                             "use device 'auto' or 'cpu'")
        return torch.device("mps")
    if pref == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown device '{pref}'", f"use {DEVICES}")


def mixed_precision(device, wanted: bool = True) -> bool:
    """Whether to train in fp16 autocast with a GradScaler: asked for, and on CUDA."""
    return bool(wanted) and getattr(device, "type", str(device)) == "cuda"


__all__ = ["pick_device", "mixed_precision", "DEVICES"]
