"""The one interface every encoder implements, and the spec-string mechanics they share.

A backend is one module in this package with one ``Encoder`` subclass and an
``open_*`` function that takes its part of a spec; ``encoders/__init__.py``
routes a spec to it. ``Encoder.encode`` checks inputs and outputs once for
every backend (texts are strings; the result is finite float32 of one fixed
dimension, L2-normalised unless ``normalize=false``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qsl, unquote

import numpy as np

from ..errors import DataError, UsageError
from ..vectors import as_float32, l2_normalise

KINDS = ("passage", "query")
DEFAULT_BATCH_SIZE = 64

SPEC_FORMS = ("minilm", "mpnet", "sre", "e5-small", "wordllama", "st:/path/to/model",
              "/path/to/model", "openai+http(s)://host:port/v1?model=NAME&key_env=VAR",
              "npy:/path/vectors.npy?texts=/path/texts.txt",
              "parquet:/path/file.parquet?column=embedding")


# --- the interface -------------------------------------------------------------

class Encoder:
    """Embeds texts. Subclasses implement ``_encode`` and ``_identity``.

    ``encode`` checks inputs and outputs once for every backend: texts are
    strings, the result is finite float32 of one fixed dimension, and rows
    are L2-normalised when ``normalize`` is on (the default).
    """

    name: str = ""

    def __init__(self, name: str, *, normalize: bool = True, prefixes: dict | None = None):
        self.name = name
        self.normalize = bool(normalize)
        # text put before each input, per kind (e5-style models need them)
        self.prefixes = {"passage": "", "query": "", **(prefixes or {})}
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            dim = self._native_dim()
            if dim < 1:
                raise DataError(f"encoder {self.name} returned empty vectors (dimension 0)",
                                "check the model / endpoint returns an embedding for each input")
            self._dim = dim
        return self._dim

    def encode(self, texts, batch_size: int | None = None, show_progress: bool = False,
               kind: str = "passage") -> np.ndarray:
        """Embed ``texts`` as float32 (len(texts), dim)."""
        texts = _check_texts(texts)
        if kind not in KINDS:
            raise UsageError(f"unknown encode kind '{kind}'", "use kind='passage' or kind='query'")
        if batch_size is not None and int(batch_size) < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}", "pass a positive batch size")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # None lets each backend use its own default (the HTTP spec's batch_size)
        batch_size = int(batch_size) if batch_size is not None else None
        vectors = np.asarray(self._encode(texts, batch_size, show_progress, kind), dtype=np.float32)
        self._check_output(vectors, len(texts))
        return l2_normalise(vectors) if self.normalize else vectors

    def fingerprint(self) -> str:
        """A stable id of this model and its settings: the key of encode caches."""
        identity = {"class": type(self).__name__, "normalize": self.normalize,
                    "prefixes": self.prefixes, **self._identity()}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        return f"{_safe_name(self.name)}-{digest[:16]}"

    def close(self) -> None:
        """Release the model (idempotent)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # --- for subclasses ---------------------------------------------------------
    def _encode(self, texts: list[str], batch_size: int | None, show_progress: bool, kind: str) -> np.ndarray:
        raise NotImplementedError

    def _identity(self) -> dict:
        raise NotImplementedError

    def _native_dim(self) -> int:
        # generic fallback: embed one probe text (remote endpoints say nothing else)
        return int(np.asarray(self._encode(["dimension probe"], 1, False, "passage")).shape[1])

    def _prefixed(self, texts: list[str], kind: str) -> list[str]:
        prefix = self.prefixes.get(kind, "")
        return [prefix + t for t in texts] if prefix else texts

    def _check_output(self, vectors: np.ndarray, n: int) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise DataError(f"encoder {self.name} returned shape {vectors.shape} for {n} texts",
                            "check the model / endpoint returns one vector per input")
        if n and vectors.shape[1] == 0:
            raise DataError(f"encoder {self.name} returned empty vectors (dimension 0)",
                            "check the model / endpoint returns an embedding for each input")
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise DataError(f"encoder {self.name} returned dimension {vectors.shape[1]}, "
                            f"earlier {self._dim}", "use one model (and one dimensions setting) throughout")
        as_float32(vectors, what=f"vectors from encoder {self.name}",
                   nonfinite_fix="check the model files / endpoint")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise UsageError("encode() takes a list of texts, got one string", "wrap it in a list: [text]")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text {i} is {type(t).__name__}, not a string",
                            "drop or convert non-text values before encoding")
    return texts


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "encoder"


def _batches(items: list, size: int | None, show_progress: bool, desc: str):
    size = size or DEFAULT_BATCH_SIZE
    starts = range(0, len(items), size)
    if show_progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        yield items[start:start + size]


# --- spec strings: options after '?' --------------------------------------------------

def _split_options(spec: str) -> tuple[str, dict]:
    if "?" not in spec:
        return spec, {}
    body, query = spec.split("?", 1)
    return body, dict(parse_qsl(query, keep_blank_values=True))


def _spec_path(text: str) -> Path:
    if text.startswith("//"):  # npy:///abs/path written URL-style
        text = text[2:]
    return Path(unquote(text)).expanduser()


def _allow(options: dict, known: set, spec: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)} in encoder spec '{spec}'",
                         f"valid options here: {', '.join(sorted(known))}")


def _normalize_option(options: dict, default: bool | None) -> bool:
    if "normalize" in options:
        return _parse_bool(options["normalize"], "normalize")
    return True if default is None else bool(default)


def _parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", ""):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"option {name}={value!r} is not a boolean", f"use {name}=true or {name}=false")


def _parse_number(value: str, name: str, kind):
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"option {name}={value!r} is not a number", f"pass a number, e.g. {name}=5") from None


def _unknown_spec(spec) -> UsageError:
    return UsageError(f"unknown encoder '{spec}'", "use one of: " + "; ".join(SPEC_FORMS))
