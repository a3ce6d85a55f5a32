"""The translator interface and its checkpoint format.

A translator maps old-model vectors to the new model's space (``translate``)
and back (``inverse``, used to send new-model queries to the old index while
a rewrite runs). It is fitted on float32 arrays:

    fit(old, new, pairs=None)

``old`` and ``new`` are *unpaired* samples (different texts); ``pairs`` is an
optional ``(old_k, new_k)`` tuple of k aligned rows (same texts, both models).

A checkpoint is a directory:

    weights.safetensors   every tensor, nothing executable
    translator.json       method, config, dims, model names, data fingerprint,
                          metrics, library version
It is written to a temporary sibling directory and renamed into place, so a
half-written checkpoint is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, NotFoundError, UsageError

CHECKPOINT_FORMAT = 1
META_FILE = "translator.json"
WEIGHTS_FILE = "weights.safetensors"


def check_vectors(x, what: str, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (n, dim), got shape {arr.shape}",
                        "pass one vector per row")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(f"{what} have dimension {arr.shape[1]}, the translator expects {dim}",
                        "use the checkpoint trained for this model pair, or retrain")
    if len(arr) < min_rows:
        raise DataError(f"{what}: {len(arr)} vectors, at least {min_rows} are needed",
                        "sample more points (plan: sample.old / sample.new)")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise DataError(f"{what}: {bad} of {len(arr)} vectors contain NaN or inf",
                        "drop or repair those vectors before training")
    return arr


def fingerprint(*arrays: np.ndarray | None) -> str:
    """A short content hash of the training data (recorded in the checkpoint)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a, dtype=np.float32)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Translator(ABC):
    """Base class. Subclasses define ``method``, a ``Config`` dataclass, and
    ``_fit`` / ``_translate`` / ``_inverse`` / ``_state`` / ``_load_state``."""

    method: str = ""

    def __init__(self, config=None, **overrides):
        cfg_cls = getattr(type(self), "Config", None)
        if cfg_cls is not None:
            self.config = config if config is not None else cfg_cls()
            for k, v in overrides.items():
                if not hasattr(self.config, k):
                    raise UsageError(f"unknown option '{k}' for translator '{self.method}'",
                                     "options: " + ", ".join(f.name for f in fields(cfg_cls)))
                setattr(self.config, k, v)
        else:
            self.config = config
        self.old_dim: int | None = None
        self.new_dim: int | None = None
        self.meta: dict = {}  # model names, metrics, selection report ... (saved)

    # --- public API -----------------------------------------------------------
    def fit(self, old, new, pairs=None) -> "Translator":
        old = check_vectors(old, "old-model sample", min_rows=2)
        new = check_vectors(new, "new-model sample", min_rows=2)
        if pairs is not None:
            po, pn = pairs
            po = check_vectors(po, "paired old vectors", old.shape[1])
            pn = check_vectors(pn, "paired new vectors", new.shape[1])
            if len(po) != len(pn):
                raise DataError(f"{len(po)} old and {len(pn)} new paired vectors",
                                "pairs must have one new vector per old vector")
            pairs = (po, pn)
        self.old_dim, self.new_dim = old.shape[1], new.shape[1]
        self.meta["fingerprint"] = fingerprint(old, new, *(pairs or (None, None)))
        self.meta["n_old"], self.meta["n_new"] = len(old), len(new)
        self.meta["n_pairs"] = 0 if pairs is None else len(pairs[0])
        self._fit(old, new, pairs)
        return self

    def translate(self, x, batch_size: int = 65536) -> np.ndarray:
        """Old space -> new space (rows L2-normalised)."""
        return self._batched(self._translate, x, self.old_dim, "vectors to translate", batch_size)

    def inverse(self, y, batch_size: int = 65536) -> np.ndarray:
        """New space -> old space (rows L2-normalised)."""
        return self._batched(self._inverse, y, self.new_dim, "vectors to map back", batch_size)

    def _batched(self, fn, x, dim, what, batch_size):
        if self.old_dim is None:
            raise UsageError("translator is not fitted", "call fit() or Translator.load(dir)")
        x = check_vectors(x, what, dim, min_rows=0)
        if len(x) <= batch_size:
            return fn(x).astype(np.float32, copy=False)
        return np.concatenate([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
                              ).astype(np.float32, copy=False)

    # --- persistence -----------------------------------------------------------
    def save(self, directory) -> Path:
        from safetensors.numpy import save_file

        from .. import __version__
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            tensors = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            meta = {
                "format": CHECKPOINT_FORMAT,
                "method": self.method,
                "config": asdict(self.config) if is_dataclass(self.config) else self.config,
                "old_dim": self.old_dim,
                "new_dim": self.new_dim,
                "library_version": __version__,
                **self.meta,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
            for f in (WEIGHTS_FILE, META_FILE):
                with open(tmp / f, "rb") as fh:
                    os.fsync(fh.fileno())
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                directory.rename(old)
                tmp.rename(directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(directory)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UsageError(f"cannot write checkpoint {directory}: {e.strerror or e}",
                             "choose a writable directory with free space (--checkpoint-dir)") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory) -> "Translator":
        """Load any translator checkpoint (the method is read from the directory)."""
        from safetensors.numpy import load_file

        from . import translator_class
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise NotFoundError(f"'{directory}' is not a translator checkpoint (no {META_FILE} "
                                f"and {WEIGHTS_FILE})", "pass the directory that train wrote, "
                                "e.g. checkpoints/<name>")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"checkpoint {directory} is unreadable: {e}", "retrain it") from None
        impl = translator_class(meta.get("method", ""))
        if cls is not Translator and not issubclass(impl, cls):
            raise UsageError(f"checkpoint {directory} holds a '{meta['method']}' translator, "
                             f"not '{cls.method}'", "load it with Translator.load()")
        cfg_cls = getattr(impl, "Config", None)
        config = cfg_cls(**meta["config"]) if cfg_cls is not None else meta.get("config")
        obj = impl(config)
        obj.old_dim, obj.new_dim = meta["old_dim"], meta["new_dim"]
        obj.meta = {k: v for k, v in meta.items()
                    if k not in ("format", "method", "config", "old_dim", "new_dim")}
        obj._load_state(load_file(str(directory / WEIGHTS_FILE)))
        return obj

    # --- to implement ------------------------------------------------------------
    @abstractmethod
    def _fit(self, old: np.ndarray, new: np.ndarray, pairs) -> None: ...

    @abstractmethod
    def _translate(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _inverse(self, y: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _load_state(self, state: dict[str, np.ndarray]) -> None: ...


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
