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
half-written checkpoint is never loaded. Loading reads JSON and safetensors
only (never pickle), and probes the weights before handing them out.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import numpy as np

from safetensors import SafetensorError

from ..errors import DataError, EmbedMigrateError, NotFoundError, UsageError, file_error
from .. import files
from ..vectors import as_float32
from ..vectors import l2_normalise as _normalise  # noqa: F401 - the translators import it from here

CHECKPOINT_FORMAT = 1
META_FILE = "translator.json"
WEIGHTS_FILE = "weights.safetensors"
MAX_DIM = 65536  # larger "dimensions" in a translator.json are damage, not a model
RETRAIN = "retrain it: embedmigrate train PLAN --retrain"
CHOOSE_ANOTHER_DIR = "set [train] checkpoint in the plan (plan --checkpoint DIR) to another folder"


def check_vectors(x, what: str, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """``x`` through the one vector check (vectors.as_float32), with at least ``min_rows`` rows."""
    arr = as_float32(x, dim, what=what, expected_by="the translator",
                     dim_fix="use the checkpoint trained for this model pair, or retrain",
                     nonfinite_fix="drop or repair those vectors before training")
    if len(arr) < min_rows:
        raise DataError(f"{what}: {len(arr)} vectors, at least {min_rows} are needed",
                        "sample more points (plan: sample.old / sample.new)")
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
        """Write the checkpoint into a temporary sibling folder, fsync it, then swap
        it into place (files.atomic_write_folder): a failed or interrupted save leaves
        the previous checkpoint (or none), never a partial one."""
        from safetensors.numpy import save as serialise

        from .. import __version__

        def fill(tmp: Path) -> None:
            tensors = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
            meta = {
                "format": CHECKPOINT_FORMAT,
                "method": self.method,
                "config": asdict(self.config) if is_dataclass(self.config) else self.config,
                "old_dim": self.old_dim,
                "new_dim": self.new_dim,
                "library_version": __version__,
                **self.meta,
            }
            # serialised in memory and written by us, so a full disk is an OSError
            # (safetensors' own file writer reports it as a SafetensorError)
            files.write_synced(tmp / WEIGHTS_FILE, serialise(tensors))
            files.write_synced(tmp / META_FILE, json.dumps(meta, indent=2, default=_json_default).encode())

        return files.atomic_write_folder(directory, fill, elsewhere=CHOOSE_ANOTHER_DIR)

    @classmethod
    def load(cls, directory) -> "Translator":
        """Load any translator checkpoint (the method is read from the directory).

        Only JSON and safetensors are read: nothing in a checkpoint can run code.
        A checkpoint that is damaged, tampered with or written for other
        dimensions fails here with a one-line error, not later mid-apply."""
        from . import translator_class
        directory = Path(directory)
        meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
        if not meta_path.is_file() or not weights_path.is_file():
            raise NotFoundError(f"'{directory}' is not a translator checkpoint (no {META_FILE} "
                                f"and {WEIGHTS_FILE})", "pass the directory that train wrote, "
                                "e.g. checkpoints/<name>")
        meta = _read_meta(directory)
        try:
            impl = translator_class(meta["method"])
        except UsageError:
            raise DataError(f"checkpoint {directory} names an unknown translator method "
                            f"'{str(meta['method'])[:60]}'", RETRAIN) from None
        if cls is not Translator and not issubclass(impl, cls):
            raise UsageError(f"checkpoint {directory} holds a '{meta['method']}' translator, "
                             f"not '{cls.method}'", "load it with Translator.load()")
        try:
            cfg_cls = getattr(impl, "Config", None)
            config = cfg_cls(**meta["config"]) if cfg_cls is not None else meta.get("config")
            obj = impl(config)
            obj.old_dim, obj.new_dim = meta["old_dim"], meta["new_dim"]
            obj.meta = {k: v for k, v in meta.items()
                        if k not in ("format", "method", "config", "old_dim", "new_dim")}
            obj._load_state(_read_weights(weights_path))
            obj._probe()
        except EmbedMigrateError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError,
                SafetensorError) as e:
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise DataError(f"checkpoint {directory} is damaged or its weights do not match its "
                            f"{META_FILE} ({reason})", RETRAIN) from None
        return obj

    def _probe(self) -> None:
        """Translate two rows each way: weights of the wrong shape fail at load time."""
        rng = np.random.default_rng(0)
        for fn, d_in, d_out in ((self.translate, self.old_dim, self.new_dim),
                                (self.inverse, self.new_dim, self.old_dim)):
            out = fn(rng.normal(size=(2, d_in)).astype(np.float32))
            if out.shape != (2, d_out) or not np.isfinite(out).all():
                raise ValueError(f"a probe translation gave shape {out.shape}, expected (2, {d_out})")

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


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


def _read_meta(directory: Path) -> dict:
    """translator.json, checked for what load needs before anything is built from it."""
    path = directory / META_FILE
    for f in (path, directory / WEIGHTS_FILE):
        if not _inside(f, directory):  # a link to a file elsewhere is never followed
            raise DataError(f"checkpoint file {f} points outside {directory}",
                            "replace the link with the file itself, or retrain")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise file_error(e, path, action="read", elsewhere="copy the checkpoint somewhere "
                         "readable") from None
    except ValueError as e:
        raise DataError(f"checkpoint {directory}: {META_FILE} is not valid JSON ({e})", RETRAIN) \
            from None
    if not isinstance(meta, dict):
        raise DataError(f"checkpoint {directory}: {META_FILE} is not a JSON object", RETRAIN)
    fmt = meta.get("format")
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise DataError(f"checkpoint {directory} has format {fmt!r}; this embedmigrate reads "
                        f"format {CHECKPOINT_FORMAT}", "upgrade embedmigrate, or retrain")
    for key in ("old_dim", "new_dim"):
        dim = meta.get(key)
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= MAX_DIM:
            raise DataError(f"checkpoint {directory}: {key} is {dim!r}, not a dimension", RETRAIN)
    if not isinstance(meta.get("method"), str) or not isinstance(meta.get("config", {}), dict):
        raise DataError(f"checkpoint {directory}: {META_FILE} names no method / config", RETRAIN)
    meta.setdefault("config", {})
    return meta


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load
    try:
        data = path.read_bytes()
    except OSError as e:
        raise file_error(e, path, action="read", elsewhere="copy the checkpoint somewhere "
                         "readable") from None
    return load(data)  # tensors only: the format has no code and no pickles
