"""The transform step of the copy: what turns a source batch into the batch written.

    TranslateTransform   the trained translator maps each old vector into the new space
    ReembedTransform     the new model encodes each point's stored text; points without
                         text are translated (and counted)

A transform runs in the copier's worker (``parallel.copy_part``), between the
reader and the writer threads. ``spec()`` is a small JSON dict that, with the
checkpoint's files, rebuilds the same transform in another process (a Ray
worker): ``from_spec``.

Provenance. With ``provenance`` on, every written point carries two payload
keys (Qdrant payload, Chroma metadata, PostgreSQL columns):

    _embedmigrate_model   the new model's spec, e.g. "minilm"
    _embedmigrate_vector  "translated" | "native" (encoded from the point's own text)

so users and the hybrid passes can filter on them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .connectors.base import Batch
from .errors import DataError, NotFoundError

PROVENANCE_MODEL = "_embedmigrate_model"
PROVENANCE_VECTOR = "_embedmigrate_vector"
PROVENANCE_KEYS = (PROVENANCE_MODEL, PROVENANCE_VECTOR)
TRANSLATED, NATIVE = "translated", "native"


@dataclass
class Counts:
    """What one call did: points encoded natively, points translated, encoder tokens."""
    native: int = 0
    translated: int = 0
    tokens: int = 0

    def to_dict(self) -> dict:
        return {"native": self.native, "translated": self.translated, "tokens": self.tokens}


class Transform:
    """source Batch -> Batch to write (same ids, payloads, documents; new vectors)."""

    kind = ""
    new_dim: int = 0

    def __call__(self, batch: Batch) -> Batch:
        return self.apply(batch)[0]

    def apply(self, batch: Batch) -> tuple[Batch, Counts]:
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError


def has_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def with_provenance(batch: Batch, model: str, kinds: list[str]) -> Batch:
    """The batch with each point's provenance added to (a copy of) its payload."""
    payloads = [{**(p or {}), PROVENANCE_MODEL: model, PROVENANCE_VECTOR: k}
                for p, k in zip(batch.payloads, kinds)]
    return Batch(batch.ids, batch.vectors, payloads, batch.documents)


class TranslateTransform(Transform):
    """Today's behaviour: ``translator.translate(batch.vectors)``."""

    kind = "translate"

    def __init__(self, translator, *, provenance: str = ""):
        self.translator = translator
        self.provenance = provenance  # the new model's spec to record; "" records nothing
        self.new_dim = int(translator.new_dim)

    def apply(self, batch: Batch) -> tuple[Batch, Counts]:
        out = batch.replace_vectors(self.translator.translate(batch.vectors))
        if self.provenance:
            out = with_provenance(out, self.provenance, [TRANSLATED] * len(batch))
        return out, Counts(translated=len(batch))

    def spec(self) -> dict:
        return {"kind": self.kind, "provenance": self.provenance}


class ReembedTransform(Transform):
    """Encode each point's stored text with the new model; translate the rest.

    ``translator`` may be None when every point has text; a point without one
    then stops the copy with an error naming the fix (train a translator)."""

    kind = "reembed"

    def __init__(self, encoder, text_field: str, *, model: str, translator=None,
                 provenance: bool = True, encode_batch: int | None = None, only_text: bool = False):
        self.encoder = encoder
        self.text_field = text_field
        self.model = model  # the spec string, recorded as provenance and used to rebuild
        self.translator = translator
        self.provenance = provenance
        self.encode_batch = encode_batch
        # hybrid passes: points without text keep their translated vector (nothing to do)
        self.only_text = only_text
        self.new_dim = int(encoder.dim)
        if translator is not None and int(translator.new_dim) != self.new_dim:
            raise DataError(f"model '{model}' now encodes {self.new_dim}-d vectors, but the "
                            f"translator trained for it writes {translator.new_dim}-d ones",
                            "point [model] new at the model (and endpoint settings) the translator "
                            "was trained with, or retrain: embedmigrate train PLAN --retrain")

    def apply(self, batch: Batch) -> tuple[Batch, Counts]:
        texts = batch.texts(self.text_field)
        native = [i for i, t in enumerate(texts) if has_text(t)]
        rest = [i for i, t in enumerate(texts) if not has_text(t)]
        vectors = np.zeros((len(batch), self.new_dim), np.float32)
        counts = Counts(native=len(native), translated=len(rest))
        if native:
            encoded, counts.tokens = self.encode([texts[i] for i in native])
            self._check_encoded(encoded, len(native))
            vectors[native] = encoded
        if rest:
            if self.translator is None:
                first = batch.ids[rest[0]]
                raise DataError(f"{len(rest)} points of this batch (first: id {first}) have no text "
                                f"in '{self.text_field}' and there is no translator for them",
                                "train one (embedmigrate train PLAN): points without text are "
                                "translated")
            vectors[rest] = self.translator.translate(batch.vectors[rest])
        kinds = [TRANSLATED] * len(batch)
        for i in native:
            kinds[i] = NATIVE
        out = batch.replace_vectors(vectors)
        if self.provenance:
            out = with_provenance(out, self.model, kinds)
        return out, counts

    def encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """The new model's vectors for ``texts`` and the tokens it took (reported by
        an HTTP endpoint where it says, else estimated)."""
        before = _thread_tokens(self.encoder)
        vectors = self.encoder.encode(texts, batch_size=self.encode_batch)
        used = _thread_tokens(self.encoder) - before
        return vectors, (used if used > 0 else estimate_tokens(texts))

    def _check_encoded(self, vectors: np.ndarray, n: int) -> None:
        if vectors.shape != (n, self.new_dim):
            raise DataError(f"encoder '{self.model}' returned shape {vectors.shape} for {n} texts, "
                            f"the target holds {self.new_dim}-d vectors",
                            "use the same model (and dimensions setting) for the whole migration")
        empty = int((np.linalg.norm(vectors, axis=1) < 1e-12).sum())
        if empty:
            raise DataError(f"encoder '{self.model}' returned {empty} empty (all-zero) vectors "
                            f"for non-empty texts", "check the model / endpoint; nothing was "
                            "written for this batch")

    def spec(self) -> dict:
        return {"kind": self.kind, "model": self.model, "text_field": self.text_field,
                "provenance": self.provenance, "encode_batch": self.encode_batch,
                "translator": self.translator is not None, "only_text": self.only_text}


def estimate_tokens(texts: list[str]) -> int:
    """About four characters a token (OpenAI's rule of thumb for English)."""
    return sum(max(1, (len(t) + 3) // 4) for t in texts)


def _thread_tokens(encoder) -> int:
    get = getattr(encoder, "tokens_used_here", None)
    return int(get()) if get is not None else 0


def from_spec(spec: dict, load_translator=None) -> Transform:
    """Rebuild a transform from ``spec()`` (``load_translator()`` returns the trained translator)."""
    if spec["kind"] == TranslateTransform.kind:
        return TranslateTransform(load_translator(), provenance=spec.get("provenance", ""))
    if spec["kind"] == ReembedTransform.kind:
        from .encoders import open_encoder
        translator = load_translator() if spec.get("translator") else None
        return ReembedTransform(open_encoder(spec["model"]), spec["text_field"], model=spec["model"],
                                translator=translator, provenance=spec.get("provenance", True),
                                encode_batch=spec.get("encode_batch"),
                                only_text=spec.get("only_text", False))
    raise NotFoundError(f"unknown transform '{spec.get('kind')}'", "use translate or reembed")


def as_transform(value) -> Transform:
    """A transform, or a bare translator wrapped as today's translation."""
    return value if isinstance(value, Transform) else TranslateTransform(value)


def expected_vectors(transform: Transform, source: Batch, written: Batch | None = None) -> np.ndarray:
    """The vectors the target should hold for the points of ``source``: what verify's
    ``written_matches_translation`` compares the target with.

    For a re-embed these are the new model's encodings of the stored texts (the
    translation where there is none). ``written`` (the target's points, same
    order) lets a hybrid target be checked point by point: a point whose
    provenance says ``native`` is compared with the encoding, any other with the
    translation."""
    if not isinstance(transform, ReembedTransform) or written is None:
        return transform(source).vectors
    kinds = [(p or {}).get(PROVENANCE_VECTOR) for p in written.payloads]
    native = [i for i, k in enumerate(kinds) if k == NATIVE]
    out = np.zeros((len(source), transform.new_dim), np.float32)
    rest = [i for i in range(len(source)) if kinds[i] != NATIVE]
    if rest and transform.translator is not None:
        out[rest] = transform.translator.translate(source.vectors[rest])
    if native:
        texts = source.texts(transform.text_field)
        out[native] = transform.encoder.encode([texts[i] or "" for i in native],
                                               batch_size=transform.encode_batch)
    return out


@dataclass
class Budget:
    """Limits on one apply / run: points, seconds, encoder tokens (None: no limit)."""
    max_docs: int | None = None
    max_seconds: float | None = None
    max_tokens: int | None = None
    used: dict = field(default_factory=lambda: {"docs": 0, "tokens": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def any(self) -> bool:
        return any(v is not None for v in (self.max_docs, self.max_seconds, self.max_tokens))

    def add(self, docs: int, tokens: int = 0) -> None:
        with self._lock:
            self.used["docs"] += docs
            self.used["tokens"] += tokens

    def exhausted(self, elapsed: float) -> str | None:
        """The first budget used up ("max_docs", "max_seconds", "max_tokens"), else None."""
        if self.max_docs is not None and self.used["docs"] >= self.max_docs:
            return "max_docs"
        if self.max_tokens is not None and self.used["tokens"] >= self.max_tokens:
            return "max_tokens"
        if self.max_seconds is not None and elapsed >= self.max_seconds:
            return "max_seconds"
        return None
