"""Qdrant: a server, an embedded ``path=`` store, or the process-wide in-memory store.

    qdrant://host:6333/docs          API key from $QDRANT_API_KEY, ?api_key_env=NAME or
                                     ?api_key_file=PATH (see credentials.py);
    qdrants://host:6333/docs         TLS (same as ?https=true); ?sslrootcert=CA.pem,
                                     ?sslcert=&sslkey= (client certificate), ?verify=false
                                     (REST only); ?timeout=SECONDS, ?retries=N,
                                     ?retry_delay=SECONDS (or EMBEDMIGRATE_RETRIES / _DELAY),
                                     ?prefer_grpc=true&grpc_port=6334
    qdrant+local:///data/qdrant/docs QdrantClient(path="/data/qdrant")
    qdrant+memory:///docs            one in-memory store shared by the whole process (tests)
    ...?vector=NAME                  which named vector to migrate

Engine facts this module is built around:

* A ``path=`` store can be opened by ONE client at a time (it holds a file
  lock), so clients of embedded stores live in a process-wide cache keyed by
  store, shared by the source and target connectors (``shared_client``), and
  a per-store lock serialises calls (local mode is not thread-safe).
* Cosine collections hand back *normalised* vectors, not the ones written.
* Qdrant's random sampling (``SampleQuery(sample=Sample.RANDOM)``) cannot be
  seeded, so ``sample`` runs a seeded reservoir over one id-only scroll
  (no vectors, no payloads: cheap) and then retrieves the chosen points.
* An application should query an *alias*: ``cutover`` swaps it atomically in
  one ``update_collection_aliases`` call; a real collection is never deleted.
* The server rejects requests over 32 MB: ``write`` splits big batches.
* A ``path=`` store commits (and fsyncs) sqlite once per point: about 17 ms a
  point on an ordinary disk. ``write`` switches the *target's* sqlite file to
  WAL with synchronous=NORMAL (still crash-consistent, ~90x faster) and
  ``finish_write`` checkpoints it. This reaches into qdrant-client's local
  storage and is skipped silently if that ever changes shape.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import warnings
from typing import Iterator, Sequence

import numpy as np
from pydantic import TypeAdapter
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ..errors import (ConflictError, DataError, EmbedMigrateError, NotFoundError,
                      UnavailableError, UsageError)
from .base import (Batch, CollectionInfo, Connector, Cursor, Part, check_batch, retry_delays,
                   retry_settings)
from .credentials import http_tls, secret, tls_failure
from .qdrant_points import (check_depth, fields_seen, id_range_parts, point_ids, reservoir,
                            select_vector, id_order as _id_order, part_bounds as _part_bounds)
from .uri import CollectionURI

DISTANCE_TO_METRIC = {models.Distance.COSINE: "cosine", models.Distance.DOT: "dot",
                      models.Distance.EUCLID: "l2"}
METRIC_TO_DISTANCE = {metric: distance for distance, metric in DISTANCE_TO_METRIC.items()}

REQUEST_LIMIT_BYTES = 32 * 1024 * 1024  # the server's default max_request_size_mb
REQUEST_HEADROOM = 0.9  # our size estimate is an upper bound; keep a margin all the same
FLOAT_JSON_BYTES = 24  # "-0.12345678901234568," is 21 characters: the worst float32 as JSON
POINT_OVERHEAD_BYTES = 64  # a UUID id in quotes, commas and brackets
ID_PAGE = 10_000  # ids per scroll page in sample()'s id-only pass
RETRIEVE_PAGE = 1_000
PEEK_POINTS = 256  # points read by describe() to list payload fields and the id type
TRUE = ("1", "true", "yes", "on")


# --- one client per embedded store, shared by every connector of the process -------

_clients_lock = threading.Lock()
_shared: dict[str, tuple[QdrantClient, threading.RLock]] = {}


def shared_client(path: str | None) -> tuple[QdrantClient, threading.RLock]:
    """The process-wide client of an embedded store and the lock serialising its calls.

    ``path=None`` is the in-memory store; otherwise the storage folder of a
    ``path=`` store, which Qdrant lets only one client open at a time. Test
    harnesses populate stores through this same client for that reason.
    """
    key = ":memory:" if path is None else os.path.realpath(path)
    with _clients_lock:
        if key not in _shared:
            try:
                # calls are serialised by the lock, so sqlite may be used from worker threads
                client = (QdrantClient(location=":memory:", force_disable_check_same_thread=True)
                          if path is None else
                          QdrantClient(path=key, force_disable_check_same_thread=True))
            except RuntimeError as e:  # another process holds the store's file lock
                raise ConflictError(f"the Qdrant storage folder {key} is open in another process "
                                    f"({e})", "stop the other process using that folder, or serve "
                                    "it with a Qdrant server and use qdrant://host:6333/...") from None
            _shared[key] = (client, threading.RLock())
        return _shared[key]


def close_shared_client(path: str | None) -> None:
    """Close one embedded store's cached client (a later connector reopens it from disk)."""
    key = ":memory:" if path is None else os.path.realpath(path)
    with _clients_lock:
        entry = _shared.pop(key, None)
    if entry is not None:
        client, lock = entry
        with lock:
            client.close()


def close_shared_clients() -> None:
    """Close every cached embedded client (releases the ``path=`` stores' file locks)."""
    with _clients_lock:
        for client, lock in _shared.values():
            with lock:
                client.close()
        _shared.clear()


atexit.register(close_shared_clients)  # release file locks before the interpreter tears down


# --- pure helpers (tested on their own) ---------------------------------------------

def choose_vector(vectors, wanted: str | None) -> tuple[str | None, models.VectorParams]:
    """Which dense vector of a collection to migrate: ``(name or None, params)``."""
    named = {"": vectors} if isinstance(vectors, models.VectorParams) else dict(vectors or {})
    return select_vector(named, wanted, "collection", _dense_only)


def _dense_only(params: models.VectorParams, name: str | None) -> models.VectorParams:
    if params.multivector_config is not None:
        raise UsageError(f"vector '{name or ''}' is a multivector, which embedmigrate cannot "
                         "translate", "migrate a single-vector (dense) collection")
    if params.distance not in DISTANCE_TO_METRIC:
        raise UsageError(f"distance {params.distance.value} is not supported",
                         "embedmigrate supports Cosine, Dot and Euclid collections")
    return params


def creation_spec(source: CollectionInfo, dim: int, vector_name: str | None) -> tuple[dict, list]:
    """``create_collection`` keyword arguments and ``(field, schema)`` payload indexes
    for a collection like ``source`` with vectors of ``dim``.

    From a Qdrant source everything in ``source.settings`` that does not
    depend on the dimension is copied: vector storage, datatype, HNSW and
    quantization (collection and per vector), optimizers, WAL, sharding,
    collection metadata, payload indexes. From another engine only the metric.
    """
    if source.metric not in METRIC_TO_DISTANCE:
        raise UsageError(f"metric '{source.metric}' has no Qdrant distance",
                         "use a cosine, dot or l2 source")
    settings = source.settings if source.engine == "qdrant" else {}
    if settings.get("sparse_vectors"):
        raise UsageError(f"the source has sparse vectors ({', '.join(settings['sparse_vectors'])}) "
                         "that embedmigrate cannot carry over",
                         "migrate a collection without sparse vectors, or copy them separately")
    vector = dict(settings.get("vector_params") or {})
    vector.pop("multivector_config", None)
    vector.update(size=dim, distance=METRIC_TO_DISTANCE[source.metric])
    params = models.VectorParams(**vector)
    kwargs: dict = {"vectors_config": {vector_name: params} if vector_name else params}
    for key, model in (("hnsw_config", models.HnswConfigDiff),
                       ("optimizer_config", models.OptimizersConfigDiff),
                       ("wal_config", models.WalConfigDiff)):
        if settings.get(key):
            arg = "optimizers_config" if key == "optimizer_config" else key
            kwargs[arg] = model(**_known_fields(model, settings[key]))
    if settings.get("quantization_config"):
        kwargs["quantization_config"] = TypeAdapter(models.QuantizationConfig).validate_python(
            settings["quantization_config"])
    for key in ("shard_number", "replication_factor", "write_consistency_factor",
                "on_disk_payload", "metadata"):
        if settings.get(key) is not None:
            kwargs[key] = settings[key]
    indexes = [(field, _index_schema(spec)) for field, spec
               in sorted((settings.get("payload_schema") or {}).items())]
    return kwargs, indexes


def _known_fields(model, values: dict) -> dict:
    # a server's config may hold fields its *Diff model does not accept (e.g. newer ones)
    return {k: v for k, v in values.items() if k in model.model_fields and v is not None}


def _index_schema(spec: dict):
    """A payload index as described by the server -> what create_payload_index takes."""
    if spec.get("params"):
        return TypeAdapter(models.PayloadSchemaParams).validate_python(spec["params"])
    return models.PayloadSchemaType(spec["data_type"])


def request_chunks(dim: int, payloads: Sequence, limit: int = REQUEST_LIMIT_BYTES) -> list[slice]:
    """Split a batch into upserts whose JSON stays under ``limit`` bytes.

    The estimate is an upper bound (every float at its longest JSON form).
    One pass of ``json.dumps`` over the whole batch decides the common case;
    per-point sizes are only measured when the batch must be split.
    """
    budget = int(limit * REQUEST_HEADROOM)
    n = len(payloads)
    per_vector = dim * FLOAT_JSON_BYTES + POINT_OVERHEAD_BYTES
    if n * per_vector + len(_json(payloads)) <= budget:
        return [slice(0, n)] if n else []
    chunks, start, used = [], 0, 0
    for i, payload in enumerate(payloads):
        size = per_vector + len(_json(payload))
        if size > budget:
            raise DataError(f"point #{i} of the batch is about {size:,} bytes, over Qdrant's "
                            f"{limit:,}-byte request limit", "shrink its payload, or raise the "
                            "server's max_request_size_mb and ?max_request_mb=")
        if used + size > budget:
            chunks.append(slice(start, i))
            start, used = i, 0
        used += size
    chunks.append(slice(start, n))
    return chunks


def _json(value) -> bytes:
    return json.dumps(value, default=str).encode()


def _dump(model) -> dict | None:
    return None if model is None else model.model_dump(mode="json", exclude_none=True)


# --- the connector -----------------------------------------------------------------

class QdrantConnector(Connector):
    engine = "qdrant"
    embedded_schemes = ("qdrant+local", "qdrant+memory")

    @classmethod
    def default_live_name(cls, uri: CollectionURI, info: CollectionInfo) -> str:
        # a Qdrant source reached through an alias is switched by that alias;
        # a bare collection needs an alias for the application to follow
        return uri.collection if info.settings.get("alias") else f"{uri.collection}_live"

    @classmethod
    def cutover_description(cls, live: str, target: str) -> str:
        return f"atomic alias switch: alias '{live}' -> collection '{target}'"

    @classmethod
    def rollback_outcome(cls, record: dict) -> str:
        live, previous, ours = record["live_name"], record.get("previous"), record["collection"]
        if previous:
            return f"alias '{live}' points at '{previous}' again; '{ours}' is kept"
        return (f"alias '{live}' removed: the cutover had created it, nothing used it before; "
                f"'{ours}' is kept")

    @classmethod
    def retired_collection(cls, record: dict) -> str | None:
        return record.get("previous")  # the collection the alias named before

    def __init__(self, uri: CollectionURI):
        super().__init__(uri)
        opts = uri.options
        self.embedded = uri.scheme in ("qdrant+local", "qdrant+memory")
        # local mode sorts every id on each scroll call, so each part's extra partial
        # page costs a full sort; its calls also queue on one lock, so parts beyond
        # one per worker only add calls (docs/benchmarks.md)
        self.cheap_parts = not self.embedded
        self.wanted_vector = opts.get("vector") or None
        self.timeout = _positive(opts, "timeout", 10)
        self.retries, self.retry_delay = retry_settings(opts)
        self.request_limit = int(_positive(opts, "max_request_mb", 32, kind=float) * 1024 * 1024)
        self._client: QdrantClient | None = None
        self._lock = contextlib.nullcontext()
        self._target: tuple[int, str | None] | None = None  # (dim, vector name) for write()

    # --- connection and calls ---------------------------------------------------------
    def _connect(self, create: bool = False) -> QdrantClient:
        if self._client is not None:
            return self._client
        if self.uri.scheme == "qdrant+memory":
            self._client, self._lock = shared_client(None)
        elif self.uri.scheme == "qdrant+local":
            path = self.uri.path
            if not create and not os.path.exists(os.path.join(path, "meta.json")):
                # opening would create an empty store: a read must not write anything
                raise NotFoundError(f"there is no Qdrant storage at {path} (for {self.uri})",
                                    "check the folder in the URI: qdrant+local:///STORAGE/COLLECTION")
            self._client, self._lock = shared_client(path)
        else:
            self._client = QdrantClient(**self.client_options())
        return self._client

    def client_options(self) -> dict:
        """QdrantClient keyword arguments for a server URI: address, TLS, API key."""
        opts = self.uri.options
        https = self.uri.scheme == "qdrants" or opts.get("https", "").lower() in TRUE
        grpc = opts.get("prefer_grpc", "").lower() in TRUE
        verify = http_tls(self.uri, https)
        if grpc and verify is not None:
            raise UsageError("?sslrootcert=, ?sslcert= and ?verify= apply to Qdrant's REST API, "
                             "not to gRPC", "drop ?prefer_grpc=true, or set "
                             "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH for a gRPC CA bundle")
        kwargs = dict(host=self.uri.host, port=self.uri.port or 6333,
                      grpc_port=_positive(opts, "grpc_port", 6334), prefer_grpc=grpc, https=https,
                      api_key=secret(self.uri, "api_key", default_env="QDRANT_API_KEY",
                                     what="Qdrant API key"),
                      timeout=self.timeout,
                      check_compatibility=False)  # it would cost a request and only warn
        if verify is not None:
            kwargs["verify"] = verify  # handed on to httpx by the REST client
        return kwargs

    def _call(self, method: str, *args, **kwargs):
        """One client call: bounded retries with backoff on transport errors,
        engine errors mapped to errors the user can act on."""
        client = self._connect(create=method == "create_collection")

        def once():
            try:
                with self._lock:
                    return getattr(client, method)(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - classified just below
                tls = None if self.embedded else tls_failure(e)
                if tls:  # a certificate problem: retrying cannot help
                    raise UsageError(f"TLS connection to Qdrant at {self.uri.redacted()} failed: "
                                     f"{tls}", "check ?sslrootcert= (the CA that signed the "
                                     "server's certificate) and the host name in the URI") from None
                if not _is_transient(e) and _is_engine_error(e):
                    raise self._user_error(e) from None
                raise  # transient (retried), or our own errors and bugs, unchanged
        return self.retrying(once, method)

    def is_transient(self, error: Exception) -> bool:
        return _is_transient(error)

    def backoff(self) -> list[float]:
        return [] if self.embedded else retry_delays(self.retries, base=self.retry_delay, cap=4.0)

    def unavailable(self, error: Exception, attempts: int, what: str) -> Exception:
        return UnavailableError(
            f"Qdrant at {self.uri.redacted()} did not answer after {attempts} "
            f"attempts ({self._reason(error)})",
            "check that the server runs and the host and port are right (REST 6333, "
            "gRPC 6334), or raise ?timeout=SECONDS / ?retries=N")

    def _reason(self, e: Exception) -> str:
        source = getattr(e, "source", e)
        text = f"{type(source).__name__}: {source}"[:200]
        return text.replace(self.uri.password, "***") if self.uri.password else text

    def _user_error(self, e: Exception) -> EmbedMigrateError:
        status = getattr(e, "status_code", None)
        if status is None and callable(getattr(e, "code", None)):  # gRPC
            status = {"NOT_FOUND": 404, "ALREADY_EXISTS": 409, "UNAUTHENTICATED": 401,
                      "PERMISSION_DENIED": 403}.get(getattr(e.code(), "name", ""))
        detail = self._reason(e)
        if isinstance(e, UnexpectedResponse):
            try:
                detail = e.structured()["status"]["error"]
            except Exception:  # noqa: BLE001 - keep the raw reason
                pass
        if status in (401, 403):
            return UsageError(f"Qdrant at {self.uri.redacted()} refused the API key ({status})",
                              "set QDRANT_API_KEY (or ?api_key_env=NAME / ?api_key_file=PATH) "
                              "to a valid key")
        if status == 404 or (isinstance(e, ValueError) and "not found" in str(e)):
            return self._not_found()
        if status == 409 or "already exists" in str(e):
            return ConflictError(f"Qdrant: {detail}", "choose another name")
        return DataError(f"Qdrant rejected the request on {self.uri.redacted()}: {detail}",
                         "check the collection settings and the data being written")

    def _not_found(self) -> NotFoundError:
        return NotFoundError(f"Qdrant collection '{self.name}' does not exist ({self.uri})",
                             "check the collection name, or list them with the Qdrant dashboard "
                             "or GET /collections")

    # --- names and aliases -----------------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        response = self._call("get_aliases")
        return {a.alias_name: a.collection_name for a in response.aliases}

    def _collections(self) -> set[str]:
        return {c.name for c in self._call("get_collections").collections}

    def _resolve(self) -> str:
        """The real collection this URI names (it may name an alias); NotFoundError if none."""
        real = self._aliases().get(self.name, self.name)
        if real not in self._collections():
            raise self._not_found()
        return real

    def exists(self) -> bool:
        try:
            self._resolve()
            return True
        except NotFoundError:
            return False

    # --- reading -------------------------------------------------------------------------
    def _vector(self, info: models.CollectionInfo) -> tuple[str | None, models.VectorParams]:
        return choose_vector(info.config.params.vectors, self.wanted_vector)

    def describe(self) -> CollectionInfo:
        real = self._resolve()
        info = self._call("get_collection", real)
        vector_name, params = self._vector(info)
        count = self._call("count", real, exact=True).count
        peek, _ = self._call("scroll", real, limit=PEEK_POINTS, with_payload=True,
                             with_vectors=False)
        fields, text_fields = fields_seen([p.payload for p in peek])
        metric = DISTANCE_TO_METRIC[params.distance]
        return CollectionInfo(
            engine="qdrant", name=real, count=count, dim=params.size, metric=metric,
            id_type="uuid" if peek and isinstance(peek[0].id, str) else "int",
            vector_name=vector_name, payload_fields=fields, text_fields=text_fields,
            settings=self._settings(info, params, alias=self.name if real != self.name else None))

    @staticmethod
    def _settings(info: models.CollectionInfo, params: models.VectorParams, alias) -> dict:
        config = info.config
        vectors = config.params.vectors
        return {
            "alias": alias,  # the URI named this alias of the collection
            "vector_names": sorted(vectors) if isinstance(vectors, dict) else [],
            "vector_params": _dump(params),
            # Qdrant normalises vectors of cosine collections: reads are not the vectors written
            "returns_normalised_vectors": params.distance == models.Distance.COSINE,
            "sparse_vectors": sorted(config.params.sparse_vectors or {}),
            "hnsw_config": _dump(config.hnsw_config),
            "optimizer_config": _dump(config.optimizer_config),
            "wal_config": _dump(config.wal_config),
            "quantization_config": _dump(config.quantization_config),
            "shard_number": config.params.shard_number,
            "replication_factor": config.params.replication_factor,
            "write_consistency_factor": config.params.write_consistency_factor,
            "on_disk_payload": config.params.on_disk_payload,
            "metadata": config.metadata,
            "payload_schema": {field: {k: v for k, v in _dump(index).items() if k != "points"}
                               for field, index in (info.payload_schema or {}).items()},
        }

    def count(self) -> int:
        return self._call("count", self._resolve(), exact=True).count

    def _to_batch(self, records, vector_name: str | None) -> Batch:
        raw = [r.vector.get(vector_name) if vector_name and isinstance(r.vector, dict) else r.vector
               for r in records]
        missing = [r.id for r, v in zip(records, raw) if not v or isinstance(v, dict)]
        if missing:
            raise DataError(f"{len(missing)} points have no vector '{vector_name or ''}' "
                            f"(e.g. id {missing[0]})", "give every point that vector, or migrate "
                            "another named vector with ?vector=NAME")
        return Batch([r.id for r in records], np.asarray(raw, dtype=np.float32),
                     [r.payload or {} for r in records])

    def scan(self, batch_size: int, after: Cursor = None,
             part: Part = None) -> Iterator[tuple[Batch, Cursor]]:
        """Scroll in id order. The cursor is ``{"next_id": id}``, the first id of the next
        batch (``None`` once the collection or part is exhausted); a bare id is accepted
        too. A part is ``{"from": id, "to": id}``: ids in [from, to), ends open as None."""
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}", "use e.g. 1000")
        start, stop = _part_bounds(part)
        offset = after.get("next_id") if isinstance(after, dict) else after
        if isinstance(after, dict) and offset is None:
            return  # the saved cursor says the scan had finished
        offset = start if after is None else offset
        real = self._resolve()
        vector_name, _ = self._vector(self._call("get_collection", real))
        with_vectors = [vector_name] if vector_name else True
        while True:
            records, next_id = self._call("scroll", real, limit=batch_size, offset=offset,
                                          with_payload=True, with_vectors=with_vectors)
            if stop is not None:
                inside = [r for r in records if _id_order(r.id) < _id_order(stop)]
                if len(inside) < len(records) or (next_id is not None
                                                  and _id_order(next_id) >= _id_order(stop)):
                    records, next_id = inside, None
            if not records:
                return
            yield self._to_batch(records, vector_name), {"next_id": next_id}
            if next_id is None:
                return
            offset = next_id

    def scan_ids(self, page_size: int = ID_PAGE) -> Iterator[list]:
        return self._id_pages(self._resolve(), page_size)

    def _id_pages(self, real: str, page_size: int) -> Iterator[list]:
        """An id-only scroll of collection ``real``, a page of ids at a time."""
        offset = None
        while True:
            records, offset = self._call("scroll", real, limit=page_size, offset=offset,
                                         with_payload=False, with_vectors=False)
            if records:
                yield [r.id for r in records]
            if offset is None:
                return

    def partitions(self, n: int) -> list[Part]:
        """Id ranges cut at quantiles of a uniform sample of ids (one id-only scroll;
        the sample is 200 ids per part, so parts are near-equal, not exactly equal)."""
        real = self._resolve()
        if n <= 1:
            return [None]
        return id_range_parts(self._reservoir_of_ids(real, 200 * n, seed=0), n)

    def sample(self, n: int, seed: int = 0) -> Batch:
        """A seeded uniform sample: a reservoir over one id-only scroll, then a retrieve."""
        if n < 1:
            raise UsageError(f"sample size must be positive, got {n}", "ask for at least 1 point")
        real = self._resolve()
        vector_name, _ = self._vector(self._call("get_collection", real))
        chosen = self._reservoir_of_ids(real, n, seed)
        if not chosen:
            raise DataError(f"Qdrant collection '{self.name}' is empty: nothing to sample",
                            "point the source URI at a collection that holds vectors")
        # a point deleted between the two passes is simply left out
        return self._retrieve(real, vector_name, chosen)

    def fetch(self, ids: list) -> Batch:
        real = self._resolve()
        vector_name, _ = self._vector(self._call("get_collection", real))
        return self._retrieve(real, vector_name, point_ids(list(ids)))

    def _retrieve(self, real: str, vector_name: str | None, ids: list) -> Batch:
        """Full points for ids, in the order given (missing ids are left out)."""
        found = {}
        for start in range(0, len(ids), RETRIEVE_PAGE):
            for r in self._call("retrieve", real, ids=ids[start:start + RETRIEVE_PAGE],
                                with_payload=True,
                                with_vectors=[vector_name] if vector_name else True):
                found[str(r.id)] = r
        return self._to_batch([found[str(i)] for i in ids if str(i) in found], vector_name)

    def _reservoir_of_ids(self, real: str, n: int, seed: int) -> list:
        return reservoir(self._id_pages(real, ID_PAGE), n, seed)

    # --- writing the target ---------------------------------------------------------
    def create_like(self, source: CollectionInfo, dim: int, *, if_exists: str = "error") -> None:
        if if_exists not in ("error", "resume", "replace"):
            raise UsageError(f"if_exists must be error, resume or replace, not '{if_exists}'",
                             "use if_exists='resume' or 'replace'")
        vector_name = self.wanted_vector or source.vector_name
        kwargs, indexes = creation_spec(source, dim, vector_name)  # checks before any write
        self._connect(create=True)
        aliases = self._aliases()
        if self.name in aliases:
            raise ConflictError(f"'{self.name}' is an alias of collection '{aliases[self.name]}'",
                                "choose another target collection name")
        if self.name in self._collections():
            if if_exists == "error":
                raise ConflictError(f"target collection '{self.name}' already exists ({self.uri})",
                                    "resume into it (if_exists='resume'), replace it "
                                    "(if_exists='replace'), or choose another target name")
            if if_exists == "resume":
                self._check_resumable(dim, source.metric)
                return
            serving = sorted(a for a, c in aliases.items() if c == self.name)
            if serving:
                raise ConflictError(f"cannot replace '{self.name}': alias(es) "
                                    f"{', '.join(serving)} point at it",
                                    "switch or delete those aliases first, or choose another "
                                    "target name")
            self._call("delete_collection", self.name)
        self._target = None
        self._call("create_collection", self.name, **kwargs)
        try:
            with warnings.catch_warnings():
                # local mode warns that it ignores payload indexes: we copy them all the same
                warnings.filterwarnings("ignore", message="Payload indexes have no effect")
                for field, schema in indexes:
                    self._call("create_payload_index", self.name, field, field_schema=schema,
                               wait=True)
        except Exception:
            self._call("delete_collection", self.name)  # nothing half-made is left behind
            raise

    def _check_resumable(self, dim: int, metric: str) -> None:
        have = self.describe()
        if have.dim != dim or have.metric != metric:
            raise DataError(f"target '{self.name}' holds {have.metric} vectors of dimension "
                            f"{have.dim}, not {metric} vectors of dimension {dim}",
                            "resume only a target created for this migration, or replace it")

    def _target_vector(self) -> tuple[int, str | None]:
        if self._target is None:
            name, params = self._vector(self._call("get_collection", self._resolve()))
            self._target = (params.size, name)
            self._fast_local_commits()
        return self._target

    def write(self, batch: Batch) -> None:
        """Upsert (idempotent by id), split to stay under the request size limit."""
        dim, vector_name = self._target_vector()
        batch = check_batch(batch, dim)
        ids = point_ids(batch.ids)
        payloads = [p if p is not None else {} for p in batch.payloads]
        check_depth(payloads)
        for part in request_chunks(dim, payloads, self.request_limit):
            vectors = batch.vectors[part].tolist()
            self._call("upsert", self.name, wait=True, points=models.Batch(
                ids=ids[part], payloads=payloads[part],
                vectors={vector_name: vectors} if vector_name else vectors))

    def finish_write(self) -> None:
        sqlite = self._local_sqlite()
        if sqlite is not None:
            with self._lock:
                sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # make the load durable

    def _local_sqlite(self):
        """The sqlite connection of this collection in a ``path=`` store, else None."""
        if self.uri.scheme != "qdrant+local" or self._client is None:
            return None
        try:
            return self._client._client.collections[self.name].storage.storage
        except (AttributeError, KeyError):  # another qdrant-client layout: keep its defaults
            return None

    def _fast_local_commits(self) -> None:
        sqlite = self._local_sqlite()
        if sqlite is not None:
            with self._lock:
                sqlite.execute("PRAGMA journal_mode=WAL")
                sqlite.execute("PRAGMA synchronous=NORMAL")

    def drop(self) -> None:
        if self.name in self._aliases():
            raise UsageError(f"'{self.name}' is an alias, not a collection",
                             "drop the collection by its own name")
        if self.name in self._collections():
            self._call("delete_collection", self.name)
        self._target = None

    # --- cutover -------------------------------------------------------------------------
    def cutover(self, live_name: str) -> dict:
        """Point the alias ``live_name`` at this collection in one atomic alias update."""
        real = self._resolve()
        if live_name in self._collections():
            raise ConflictError(
                f"'{live_name}' is a real Qdrant collection, not an alias, so it cannot be "
                "switched atomically", f"make the application query an alias instead (create "
                f"one, e.g. '{live_name}_live' -> '{live_name}', and cut over that alias); "
                "embedmigrate never deletes the source collection")
        previous = self._aliases().get(live_name)
        operations = []
        if previous is not None:
            operations.append(models.DeleteAliasOperation(
                delete_alias=models.DeleteAlias(alias_name=live_name)))
        operations.append(models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=real, alias_name=live_name)))
        self._call("update_collection_aliases", change_aliases_operations=operations)
        return {"engine": "qdrant", "live_name": live_name, "collection": real,
                "previous": previous}

    def rollback(self, record: dict) -> None:
        """Point ``live_name`` back at the previous collection (or remove the alias if
        there was none), atomically; a second rollback is a no-op."""
        live, previous, ours = record["live_name"], record.get("previous"), record["collection"]
        now = self._aliases().get(live)
        if now == previous:
            return  # already rolled back
        if now not in (ours, None):
            raise ConflictError(f"alias '{live}' now points at '{now}', not at '{ours}' as the "
                                "cutover left it", f"someone switched it since: point it back "
                                f"at '{previous}' by hand if that is still wanted")
        if previous is not None and previous not in self._collections():
            raise NotFoundError(f"the previous collection '{previous}' no longer exists",
                                f"restore '{previous}' before rolling back")
        operations = []
        if now is not None:
            operations.append(models.DeleteAliasOperation(
                delete_alias=models.DeleteAlias(alias_name=live)))
        if previous is not None:
            operations.append(models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=previous, alias_name=live)))
        self._call("update_collection_aliases", change_aliases_operations=operations)

    def close(self) -> None:
        # embedded clients are shared by the process (close_shared_clients releases them)
        if self._client is not None and not self.embedded:
            self._client.close()
        self._client = None


def _positive(opts: dict, key: str, default, allow_zero: bool = False, kind=int):
    """A positive (or zero) number from the URI's query options; ``kind`` int or float."""
    try:
        value = kind(opts.get(key, default))
    except ValueError:
        value = -1
    if not (value > 0 or allow_zero and value == 0) or value == float("inf"):  # nan fails too
        raise UsageError(f"?{key}={opts.get(key)} is not a valid number",
                         f"use a {'whole ' if kind is int else ''}number, e.g. ?{key}={default}")
    return value


def _is_engine_error(e: Exception) -> bool:
    """An error Qdrant reported about the request (local mode raises ValueError)."""
    if isinstance(e, (UnexpectedResponse, ValueError)) and not isinstance(e, EmbedMigrateError):
        return True
    try:
        import grpc
        return isinstance(e, grpc.RpcError)
    except ImportError:
        return False


def _is_transient(e: Exception) -> bool:
    """Network trouble worth retrying (refused, reset, timeout, 502/503/504)."""
    if isinstance(e, ResponseHandlingException):
        return True
    if isinstance(e, UnexpectedResponse):
        return e.status_code in (429, 502, 503, 504)
    try:
        import grpc
        if isinstance(e, grpc.RpcError):
            return e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    except ImportError:
        pass
    return isinstance(e, (ConnectionError, TimeoutError))
