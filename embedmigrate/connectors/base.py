"""The one interface every vector store implements.

A backend is one module in this package with one ``Connector`` subclass,
registered by URI scheme in ``connectors/__init__.py``. Everything above this
layer (sampling for training, the streamed rewrite, cutover, reports) is
written once against these methods.
"""

from __future__ import annotations

import json

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

from .. import retry
from ..errors import DataError, UnavailableError, UsageError
from ..retry import retry_delays, retry_settings  # noqa: F401 - the connectors import them from here
from ..vectors import as_float32  # noqa: F401 - one check for every vector (vectors.py)
from .uri import CollectionURI

METRICS = ("cosine", "dot", "l2")


@dataclass
class Batch:
    """A batch of points: ids, float32 vectors (n, d), and what travels with them.

    ``payloads`` are the engine's own per-point fields, copied untouched
    (Qdrant payload, Chroma metadata, the non-vector columns of a Postgres
    row). ``documents`` is Chroma's document string per point, else ``None``.
    """

    ids: list
    vectors: np.ndarray
    payloads: list[dict]
    documents: list | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def texts(self, field_name: str) -> list:
        """The text stored with each point under ``field_name`` (None where absent)."""
        if field_name == "document" and self.documents is not None:
            return list(self.documents)
        return [p.get(field_name) if isinstance(p, dict) else None for p in self.payloads]

    def replace_vectors(self, vectors: np.ndarray) -> "Batch":
        return Batch(self.ids, vectors, self.payloads, self.documents)


@dataclass
class CollectionInfo:
    """What ``describe()`` reports about a collection."""

    engine: str
    name: str
    count: int
    dim: int
    metric: str  # one of METRICS
    id_type: str  # "int", "uuid" or "str"
    vector_name: str | None = None  # Qdrant named vector; Postgres vector column
    payload_fields: list[str] = field(default_factory=list)
    text_fields: list[str] = field(default_factory=list)
    # engine-specific settings that create_like copies: HNSW parameters,
    # payload indexes, pgvector opclass/index definition, vector type ...
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


Cursor = Any  # JSON-serialisable scan position: engine-specific (last id, offset ...)
Part = Any  # JSON-serialisable range of a collection (see partitions()); None is all of it


class Connector(ABC):
    """One collection on one store.

    Subclasses set ``engine`` and implement the abstract methods. Instances
    are cheap; connections are opened lazily and shared per store where the
    engine requires it (a Qdrant ``path=`` store opens in one client at a time).
    """

    engine: str = ""
    # Whether splitting the scan into many parts costs little. Apply makes more parts
    # than workers (so a resume may use any number of workers) only where it does.
    cheap_parts: bool = True
    # URI schemes of stores that live in this process's memory or files: another
    # process (a Ray worker) cannot open them
    embedded_schemes: tuple[str, ...] = ()

    def __init__(self, uri: CollectionURI):
        self.uri = uri
        self.name = uri.collection

    # --- what the engine's cutover means (asked before any connection) --------------------
    @classmethod
    def reachable_from_other_processes(cls, uri: CollectionURI) -> bool:
        """Whether a worker in another process (Ray) can open the store ``uri`` names."""
        return uri.scheme not in cls.embedded_schemes

    @classmethod
    def default_live_name(cls, uri: CollectionURI, info: CollectionInfo) -> str:
        """The name the application queries, when the plan names none: by default the
        source's own name (engines that rename at cutover)."""
        return uri.collection

    @classmethod
    def cutover_description(cls, live: str, target: str) -> str:
        """One line saying what ``cutover`` will do, for the plan's output."""
        return f"'{live}' serves collection '{target}'"

    @classmethod
    def retired_collection(cls, record: dict) -> str | None:
        """The collection that served before the cutover ``record`` describes (what
        ``cleanup --drop-old`` deletes), or None if nothing did."""
        return record.get("previous")

    @classmethod
    def rollback_outcome(cls, record: dict) -> str:
        """What rolling back the cutover ``record`` did, in words: the live name serves
        the old collection again, or, where nothing had the name before, it is gone."""
        return f"the cutover recorded as {json.dumps(record, default=str)} is undone"

    # --- reading -------------------------------------------------------------
    @abstractmethod
    def exists(self) -> bool:
        """Whether this collection exists."""

    @abstractmethod
    def describe(self) -> CollectionInfo:
        """Count, dimension, metric, id type, fields. NotFoundError if missing."""

    @abstractmethod
    def sample(self, n: int, seed: int = 0) -> Batch:
        """A uniform random sample of min(n, count) points, without replacement."""

    @abstractmethod
    def scan(self, batch_size: int, after: Cursor = None,
             part: Part = None) -> Iterator[tuple[Batch, Cursor]]:
        """Stream the whole collection (or one ``part`` of it) in a stable order,
        in constant memory.

        Yields ``(batch, cursor)``; passing ``cursor`` back as ``after`` (with
        the same ``part``) resumes right after that batch, in a new process too.
        """

    def scan_ids(self, page_size: int = 10_000) -> Iterator[list]:
        """Every id of the collection, a page at a time, in constant memory: what a count
        and an id checksum need. Engines that can read ids alone override this."""
        for batch, _ in self.scan(page_size):
            yield list(batch.ids)

    def partitions(self, n: int) -> list[Part]:
        """Split the collection into at most ``n`` disjoint parts that together
        cover it, each scanned on its own with ``scan(part=...)`` (by another
        thread, process or machine). Parts are JSON (id or offset ranges); the
        last one is open-ended so points added later still fall in a part.
        Engines that cannot split return one part, the whole collection."""
        return [None]

    def count(self) -> int:
        return self.describe().count

    def fetch(self, ids: list) -> Batch:
        """The points with these ids, in this order (ids that do not exist are
        left out). Used to compare written target points with their source."""
        raise NotImplementedError(f"{type(self).__name__}.fetch")

    # --- writing the target -----------------------------------------------
    @abstractmethod
    def create_like(self, source: CollectionInfo, dim: int, *, if_exists: str = "error") -> None:
        """Create this collection with ``source``'s metric, index settings and
        payload indexes, for vectors of ``dim``.

        ``if_exists``: "error" (ConflictError naming the fix), "resume" (keep
        it and its points; check the dimension matches) or "replace" (drop and
        recreate).
        """

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Idempotent upsert of ids, vectors and untouched payloads/documents."""

    def finish_write(self) -> None:
        """Called once after the bulk load (Postgres builds its index here)."""

    def add_text_fields(self, names) -> None:
        """Let ``write`` store these extra text payload fields (embedmigrate's provenance).
        Schemaless stores need nothing; PostgreSQL adds nullable text columns."""

    @abstractmethod
    def drop(self) -> None:
        """Delete this collection (used for targets and explicit cleanup only)."""

    # --- cutover --------------------------------------------------------------
    def plan_cutover(self, live_name: str) -> dict | None:
        """For engines whose cutover takes several steps (Chroma renames): the
        record ``cutover`` will follow, computed without changing anything, so
        the caller can persist it first and ``rollback`` can finish a cutover
        that died half-way. None where cutover is one atomic step."""
        return None

    @abstractmethod
    def cutover(self, live_name: str) -> dict:
        """Make this collection serve under ``live_name`` (atomic where the
        engine allows it). Returns a JSON-serialisable record that
        ``rollback`` takes to undo it; the previous collection is kept.
        Engines with ``plan_cutover`` also accept ``record=`` (the planned one)."""

    @abstractmethod
    def rollback(self, record: dict) -> None:
        """Undo ``cutover`` from its record: ``live_name`` serves the old collection again."""

    # --- retries: one mechanism, each engine says what is transient -----------------------
    def is_transient(self, error: Exception) -> bool:
        """Whether ``error`` is a lost or refused connection that another attempt may
        get past (a network failure, a server restarting). Engines override this;
        nothing is transient for an embedded store."""
        return False

    def backoff(self) -> list[float]:
        """The waits between attempts of a call (empty: a single attempt)."""
        return []

    def unavailable(self, error: Exception, attempts: int, what: str) -> Exception:
        """The error raised once the retries are spent."""
        return UnavailableError(f"{self.engine} at {self.uri.redacted()} did not answer after "
                                f"{attempts} attempt(s) ({what}: {_first_line(error)})",
                                "check that the store is up and the URI is right, then re-run")

    def retrying(self, call, what: str = ""):
        """``call()``, run again after each transient failure, with the waits of
        ``backoff()`` (see retry.py); other errors pass through unchanged. Only for
        calls that are safe to repeat (reads, idempotent upserts, connecting)."""
        return retry.retrying(call, delays=self.backoff(), is_transient=self.is_transient,
                              give_up=lambda e, attempts: self.unavailable(e, attempts, what))

    def wait_to_retry(self, failures: int, error: Exception, what: str = "") -> None:
        """Back off before attempt ``failures + 2``, or give up with ``unavailable``
        (for loops that cannot be one ``call``, e.g. a scan resuming from its cursor)."""
        retry.wait_before_retry(failures, error, self.backoff(),
                                lambda e, attempts: self.unavailable(e, attempts, what))

    def close(self) -> None:
        """Release connections (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def check_batch(batch: Batch, dim: int) -> Batch:
    """The checks every ``write`` runs before touching the store."""
    vectors = as_float32(batch.vectors, dim)
    if len(batch.ids) != len(vectors) or len(batch.payloads) != len(vectors):
        raise DataError(f"batch has {len(batch.ids)} ids, {len(vectors)} vectors and "
                        f"{len(batch.payloads)} payloads", "pass one id and one payload per vector")
    if len(set(map(str, batch.ids))) != len(batch.ids):
        raise DataError("batch contains duplicate ids", "deduplicate ids before writing")
    return Batch(list(batch.ids), vectors, batch.payloads, batch.documents)


def id_range_bounds(part: Part, engine: str) -> tuple:
    """``(from, to)`` of an id-range part (``{'from': id, 'to': id}``, None: an open end)
    that ``partitions()`` returned: the one part parser of the engines that cut by id."""
    if part is None:
        return None, None
    if not isinstance(part, dict) or not set(part) <= {"from", "to"}:
        raise UsageError(f"{part!r} is not a {engine} scan part",
                         "pass a part that partitions() returned ({'from': id, 'to': id})")
    return part.get("from"), part.get("to")


def quantile_positions(count: int, n: int) -> list[int]:
    """Start positions of ``n`` near-equal slices of ``count`` items (the first is 0)."""
    n = max(1, min(int(n), count))
    return [count * k // n for k in range(n)]
