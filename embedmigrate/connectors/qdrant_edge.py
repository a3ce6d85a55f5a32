"""Qdrant Edge: Qdrant's own engine inside this process (PyPI ``qdrant-edge-py``).

    qdrant+edge:///data/edge/docs    the shard in the directory /data/edge/docs
    ...?vector=NAME                  which named vector to migrate

Edge has no server, no collections and no aliases: one *shard* is one directory
(``edge_config.json``, ``wal/``, ``segments/``), opened with
``EdgeShard.load(path)``. So the last segment of the URI is the shard's
directory name (the "collection") and the rest is the *store*: the directory
holding it and its siblings. A migration target is a sibling shard, e.g.
``/data/edge/docs__minilm``.

Engine facts this module is built around:

* A shard can be open in ONE ``EdgeShard`` at a time, also within a process (its
  WAL is locked; a second ``load`` fails with ``WouldBlock``). Shards live in a
  process-wide cache keyed by real path, shared by the source and target
  connectors and the test harness (``shared_shard``); a per-shard lock
  serialises calls.
* Cosine shards hand back *normalised* vectors, not the ones written (as Qdrant).
* Point ids are unsigned integers or UUIDs (UUIDs come back as ``uuid.UUID``:
  they are handed on as strings). Scroll order is integers, then UUIDs.
* Every update goes to the shard's WAL before ``update`` returns, so a process
  killed with SIGKILL loses nothing it was told was written; ``finish_write``
  flushes the segments and builds the HNSW index (``optimize``).
* ``create_like`` builds a shard in a hidden sibling (``.NAME.creating``) and
  renames it into place, so a create that is killed leaves no half-made shard.
* Cutover: the application opens a *live name*, a symbolic link in the store
  directory that names a shard directory (``/data/edge/docs_live ->
  docs__minilm``). ``cutover`` writes a new link beside it and renames it over
  the live name (``os.replace``: atomic), ``rollback`` points it back. An
  application must load the link path again to serve the new shard (an open
  ``EdgeShard`` keeps the directory it opened).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
import uuid
from typing import Iterator

import numpy as np
import qdrant_edge as edge

from ..errors import ConflictError, DataError, EmbedMigrateError, NotFoundError, UsageError
from .base import (Batch, CollectionInfo, Connector, Cursor, Part, check_batch)
from ..files import fsync_dir
from .qdrant_points import (check_depth, fields_seen, id_order, part_bounds, point_ids,
                            reservoir, select_vector, id_range_parts)
from .uri import CollectionURI

CONFIG_FILE = "edge_config.json"  # what makes a directory a shard
DISTANCE_TO_METRIC = {"Cosine": "cosine", "Dot": "dot", "Euclid": "l2"}
METRIC_TO_DISTANCE = {"cosine": edge.Distance.Cosine, "dot": edge.Distance.Dot,
                      "l2": edge.Distance.Euclid}
# payload index types by the name Qdrant's JSON uses (Edge's enums have no .name)
INDEX_TYPES = {name.lower(): getattr(edge.PayloadSchemaType, name) for name in (
    "Keyword", "Integer", "Float", "Geo", "Text", "Bool", "Datetime", "Uuid")}
HNSW_KEYS = ("m", "ef_construct", "full_scan_threshold", "max_indexing_threads", "on_disk",
             "payload_m")
ID_PAGE = 10_000  # ids per scroll page in the id-only passes
RETRIEVE_PAGE = 1_000
PEEK_POINTS = 256  # points read by describe() to list payload fields and the id type
MAX_INT_ID = 2**64 - 1


# --- one open shard per directory, shared by every connector of the process ---------

_shards_lock = threading.Lock()
_shards: dict[str, tuple[edge.EdgeShard, threading.RLock]] = {}


def shared_shard(path: str, create_with: "edge.EdgeConfig | None" = None):
    """The process-wide open shard at ``path`` and the lock serialising its calls;
    ``create_with`` creates the shard first (the directory must hold no shard)."""
    key = os.path.realpath(path)
    with _shards_lock:
        if key not in _shards:
            try:
                shard = (edge.EdgeShard.create(key, create_with) if create_with is not None
                         else edge.EdgeShard.load(key))
            except Exception as e:  # noqa: BLE001 - Edge raises plain Exception
                if "WouldBlock" in str(e):
                    raise ConflictError(f"the Qdrant Edge shard {key} is open in another process",
                                        "stop the other process using that shard, then run "
                                        "again") from None
                raise DataError(f"Qdrant Edge could not open the shard {key}: {_reason(e)}",
                                "check that the directory holds an intact Edge shard") from None
            _shards[key] = (shard, threading.RLock())
        return _shards[key]


def close_shared_shard(path: str) -> None:
    """Close one cached shard (a later connector loads it again from disk)."""
    with _shards_lock:
        entry = _shards.pop(os.path.realpath(path), None)
    if entry is not None:
        shard, lock = entry
        with lock:
            shard.close()


def close_shared_shards() -> None:
    """Close every cached shard (releases their WAL locks)."""
    with _shards_lock:
        entries = list(_shards.values())
        _shards.clear()
    for shard, lock in entries:
        with lock:
            shard.close()


atexit.register(close_shared_shards)


def _reason(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# --- pure helpers ----------------------------------------------------------------------

def read_config(shard_dir: str) -> dict:
    """The shard's own ``edge_config.json`` (vectors, distance, HNSW ...)."""
    with open(os.path.join(shard_dir, CONFIG_FILE)) as f:
        return json.load(f)


def choose_vector(vectors: dict, wanted: str | None) -> tuple[str | None, dict]:
    """Which dense vector of a shard to migrate: ``(name or None, params)``; the
    unnamed default vector is stored under the name ""."""
    return select_vector(vectors, wanted, "shard", _dense_only)


def _dense_only(params: dict, name: str | None) -> dict:
    if params.get("multivector_config"):
        raise UsageError(f"vector '{name or ''}' is a multivector, which embedmigrate cannot "
                         "translate", "migrate a single-vector (dense) shard")
    if params.get("distance") not in DISTANCE_TO_METRIC:
        raise UsageError(f"distance {params.get('distance')} is not supported",
                         "embedmigrate supports Cosine, Dot and Euclid shards")
    return params


def edge_config(source: CollectionInfo, dim: int, vector_name: str | None):
    """``(EdgeConfig, [(field, PayloadSchemaType)])`` for a shard like ``source`` with
    vectors of ``dim``. From an Edge source its HNSW settings, vector storage and
    payload indexes are copied; from a Qdrant collection its HNSW settings and payload
    index types; from other engines the metric only."""
    if source.metric not in METRIC_TO_DISTANCE:
        raise UsageError(f"metric '{source.metric}' has no Qdrant distance",
                         "use a cosine, dot or l2 source")
    settings = source.settings if source.engine in ("qdrant", "qdrant-edge") else {}
    if settings.get("sparse_vectors"):
        raise UsageError(f"the source has sparse vectors ({', '.join(settings['sparse_vectors'])}) "
                         "that embedmigrate cannot carry over",
                         "migrate a collection without sparse vectors, or copy them separately")
    vector_params = settings.get("vector_params") or {}
    vector = edge.EdgeVectorParams(size=dim, distance=METRIC_TO_DISTANCE[source.metric],
                                   on_disk=vector_params.get("on_disk"))
    hnsw = {k: v for k, v in (settings.get("hnsw_config") or {}).items()
            if k in HNSW_KEYS and v is not None}
    config = edge.EdgeConfig(
        vectors={vector_name: vector} if vector_name else vector,
        hnsw_config=edge.HnswIndexConfig(**hnsw) if {"m", "ef_construct",
                                                     "full_scan_threshold"} <= set(hnsw) else None)
    indexes = []
    for field, spec in sorted((settings.get("payload_schema") or {}).items()):
        kind = INDEX_TYPES.get(str(spec.get("data_type", "")).lower())
        if kind is not None:
            indexes.append((field, kind))
    return config, indexes


def _index_name(kind) -> str:
    return next((name for name, k in INDEX_TYPES.items() if k == kind), str(kind))


def _id_out(point_id):
    """Ids as the other connectors hand them on: ints, and UUIDs as strings."""
    return str(point_id) if isinstance(point_id, uuid.UUID) else point_id


def next_offset(last_id):
    """The smallest id after ``last_id`` in scroll order (None: there is none), so a
    cursor can name the last point read and a resume still sees points added after it."""
    if isinstance(last_id, int):
        return last_id + 1 if last_id < MAX_INT_ID else str(uuid.UUID(int=0))
    value = uuid.UUID(str(last_id)).int
    return str(uuid.UUID(int=value + 1)) if value < 2**128 - 1 else None


# --- the connector -----------------------------------------------------------------------

class QdrantEdgeConnector(Connector):
    engine = "qdrant-edge"
    embedded_schemes = ("qdrant+edge",)  # a shard opens in one process at a time
    # scroll starts at an id through the id tracker: one more part costs one short page
    cheap_parts = True

    @classmethod
    def default_live_name(cls, uri: CollectionURI, info: CollectionInfo) -> str:
        # a source reached through a live-name link is switched by that link;
        # a bare shard needs a link for the application to load
        return uri.collection if info.settings.get("alias") else f"{uri.collection}_live"

    @classmethod
    def cutover_description(cls, live: str, target: str) -> str:
        return (f"atomic link switch: symbolic link '{live}' -> shard directory '{target}' "
                "(os.replace); the application loads the link")

    @classmethod
    def rollback_outcome(cls, record: dict) -> str:
        live, previous, ours = record["live_name"], record.get("previous"), record["collection"]
        if previous:
            return f"link '{live}' names shard '{previous}' again; '{ours}' is kept"
        return (f"link '{live}' removed: the cutover had created it, nothing used it before; "
                f"'{ours}' is kept")

    @classmethod
    def retired_collection(cls, record: dict) -> str | None:
        return record.get("previous")  # the shard the link named before

    def __init__(self, uri: CollectionURI):
        super().__init__(uri)
        self.store = uri.path
        self.wanted_vector = uri.options.get("vector") or None
        self._target: tuple[int, str | None] | None = None  # (dim, vector name) for write()

    # --- names: shard directories and live-name links -----------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.store, name)

    def _is_shard(self, name: str) -> bool:
        path = self._path(name)
        return not os.path.islink(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))

    def _link(self, name: str) -> str | None:
        """The shard a live-name link names, or None if ``name`` is no link."""
        path = self._path(name)
        return os.path.basename(os.readlink(path).rstrip("/")) if os.path.islink(path) else None

    def _links_to(self, shard: str) -> list[str]:
        if not os.path.isdir(self.store):
            return []
        return sorted(n for n in os.listdir(self.store) if self._link(n) == shard)

    def _resolve(self) -> str:
        """The shard directory this URI names (it may name a live-name link)."""
        real = self._link(self.name) or self.name
        if not self._is_shard(real):
            raise NotFoundError(f"there is no Qdrant Edge shard '{self.name}' in {self.store} "
                                f"({self.uri})", "check the path: qdrant+edge:///STORE/SHARD, "
                                "where STORE/SHARD holds edge_config.json")
        return real

    def exists(self) -> bool:
        try:
            self._resolve()
            return True
        except NotFoundError:
            return False

    # --- calls ---------------------------------------------------------------------------
    def _call(self, real: str, method: str, *args):
        """One shard call under the shard's lock; Edge's errors (plain Exceptions)
        become errors the user can act on."""
        shard, lock = shared_shard(self._path(real))
        try:
            with lock:
                return getattr(shard, method)(*args)
        except EmbedMigrateError:
            raise
        except Exception as e:  # noqa: BLE001 - Edge raises plain Exception
            raise DataError(f"Qdrant Edge rejected {method} on {self.uri.redacted()}: {_reason(e)}",
                            "check the shard's settings and the data being written") from None

    # --- reading ---------------------------------------------------------------------------
    def _vector(self, real: str) -> tuple[str | None, dict]:
        return choose_vector(read_config(self._path(real)).get("vectors") or {},
                             self.wanted_vector)

    def describe(self) -> CollectionInfo:
        real = self._resolve()
        config = read_config(self._path(real))
        vector_name, params = choose_vector(config.get("vectors") or {}, self.wanted_vector)
        count = self._call(real, "count", edge.CountRequest(exact=True))
        peek, _ = self._call(real, "scroll", edge.ScrollRequest(
            limit=PEEK_POINTS, with_payload=True, with_vector=False))
        fields, text_fields = fields_seen([p.payload for p in peek])
        info = self._call(real, "info")
        return CollectionInfo(
            engine=self.engine, name=real, count=count, dim=params["size"],
            metric=DISTANCE_TO_METRIC[params["distance"]],
            id_type="uuid" if peek and isinstance(peek[0].id, uuid.UUID) else "int",
            vector_name=vector_name, payload_fields=fields, text_fields=text_fields,
            settings={
                "alias": self.name if real != self.name else None,  # the URI named a live link
                "vector_names": sorted(n for n in config.get("vectors") or {} if n),
                "vector_params": params,
                # like Qdrant, Edge normalises vectors of cosine shards
                "returns_normalised_vectors": params["distance"] == "Cosine",
                "sparse_vectors": sorted(config.get("sparse_vectors") or {}),
                "hnsw_config": config.get("hnsw_config"),
                "payload_schema": {f: {"data_type": _index_name(i.data_type)}
                                   for f, i in info.payload_schema.items()},
            })

    def count(self) -> int:
        return self._call(self._resolve(), "count", edge.CountRequest(exact=True))

    def _to_batch(self, records, vector_name: str | None) -> Batch:
        raw = [r.vector.get(vector_name if vector_name else "") if isinstance(r.vector, dict)
               else r.vector for r in records]
        missing = [r.id for r, v in zip(records, raw) if not v]
        if missing:
            raise DataError(f"{len(missing)} points have no vector '{vector_name or ''}' "
                            f"(e.g. id {_id_out(missing[0])})", "give every point that vector, "
                            "or migrate another named vector with ?vector=NAME")
        return Batch([_id_out(r.id) for r in records], np.asarray(raw, dtype=np.float32),
                     [r.payload or {} for r in records])

    def scan(self, batch_size: int, after: Cursor = None,
             part: Part = None) -> Iterator[tuple[Batch, Cursor]]:
        """Scroll in id order. The cursor is ``{"last_id": id}``, the last point handed
        out, so resuming an open-ended part after it also reads points added since. A
        part is ``{"from": id, "to": id}``: ids in [from, to), ends open as None."""
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}", "use e.g. 1000")
        start, stop = part_bounds(part)
        if after is not None and not (isinstance(after, dict) and "last_id" in after):
            raise UsageError(f"{after!r} is not a Qdrant Edge scan cursor",
                             "resume from a cursor that scan() yielded ({'last_id': id})")
        offset = start if after is None else next_offset(after["last_id"])
        if after is not None and offset is None:
            return  # the cursor names the very last id there can be
        real = self._resolve()
        vector_name, _ = self._vector(real)
        with_vector = [vector_name] if vector_name else True
        while True:
            records, next_id = self._call(real, "scroll", edge.ScrollRequest(
                offset=offset, limit=batch_size, with_payload=True, with_vector=with_vector))
            if stop is not None:
                inside = [r for r in records if id_order(_id_out(r.id)) < id_order(stop)]
                if len(inside) < len(records):
                    records, next_id = inside, None
            if not records:
                return
            yield self._to_batch(records, vector_name), {"last_id": _id_out(records[-1].id)}
            if next_id is None:
                return
            offset = _id_out(next_id)

    def scan_ids(self, page_size: int = ID_PAGE) -> Iterator[list]:
        return self._id_pages(self._resolve(), page_size)

    def _id_pages(self, real: str, page_size: int) -> Iterator[list]:
        offset = None
        while True:
            records, offset = self._call(real, "scroll", edge.ScrollRequest(
                offset=offset, limit=page_size, with_payload=False, with_vector=False))
            if records:
                yield [_id_out(r.id) for r in records]
            if offset is None:
                return

    def partitions(self, n: int) -> list[Part]:
        """Id ranges cut at quantiles of a uniform sample of ids (200 per part)."""
        real = self._resolve()
        if n <= 1:
            return [None]
        return id_range_parts(reservoir(self._id_pages(real, ID_PAGE), 200 * n, seed=0), n)

    def sample(self, n: int, seed: int = 0) -> Batch:
        """A seeded uniform sample: a reservoir over one id-only scroll, then a retrieve."""
        if n < 1:
            raise UsageError(f"sample size must be positive, got {n}", "ask for at least 1 point")
        real = self._resolve()
        vector_name, _ = self._vector(real)
        chosen = reservoir(self._id_pages(real, ID_PAGE), n, seed)
        if not chosen:
            raise DataError(f"Qdrant Edge shard '{self.name}' is empty: nothing to sample",
                            "point the source URI at a shard that holds vectors")
        return self._retrieve(real, vector_name, chosen)

    def fetch(self, ids: list) -> Batch:
        real = self._resolve()
        vector_name, _ = self._vector(real)
        return self._retrieve(real, vector_name, point_ids(list(ids)))

    def _retrieve(self, real: str, vector_name: str | None, ids: list) -> Batch:
        """Full points for ids, in the order given (missing ids are left out)."""
        found = {}
        with_vector = [vector_name] if vector_name else True
        for start in range(0, len(ids), RETRIEVE_PAGE):
            for r in self._call(real, "retrieve", ids[start:start + RETRIEVE_PAGE], True,
                                with_vector):
                found[str(r.id)] = r
        return self._to_batch([found[str(i)] for i in ids if str(i) in found], vector_name)

    # --- writing the target ------------------------------------------------------------------
    def create_like(self, source: CollectionInfo, dim: int, *, if_exists: str = "error") -> None:
        if if_exists not in ("error", "resume", "replace"):
            raise UsageError(f"if_exists must be error, resume or replace, not '{if_exists}'",
                             "use if_exists='resume' or 'replace'")
        vector_name = self.wanted_vector or source.vector_name
        config, indexes = edge_config(source, dim, vector_name)  # checks before any write
        if self._link(self.name) is not None:
            raise ConflictError(f"'{self.name}' is a live-name link to shard "
                                f"'{self._link(self.name)}'", "choose another target name")
        path = self._path(self.name)
        if self._is_shard(self.name):
            if if_exists == "error":
                raise ConflictError(f"target shard '{self.name}' already exists ({self.uri})",
                                    "resume into it (if_exists='resume'), replace it "
                                    "(if_exists='replace'), or choose another target name")
            if if_exists == "resume":
                self._check_resumable(dim, source.metric)
                return
            self.drop()
        elif os.path.exists(path) and os.listdir(path):
            # a directory that is no shard: not ours to delete
            raise ConflictError(f"{path} exists and is not a Qdrant Edge shard",
                                "choose another target name, or move that directory away")
        os.makedirs(self.store, exist_ok=True)
        self._target = None
        self._create_atomically(config, indexes)

    def _create_atomically(self, config, indexes) -> None:
        """Build the shard and its payload indexes in a hidden sibling directory, then
        rename it into place: a process killed half-way leaves no half-made shard
        under the target's name (the next create removes the hidden leftover)."""
        building = f".{self.name}.creating"
        if os.path.lexists(self._path(building)):
            close_shared_shard(self._path(building))
            shutil.rmtree(self._path(building))
        shared_shard(self._path(building), create_with=config)
        try:
            for field, kind in indexes:
                self._call(building, "update", edge.UpdateOperation.create_field_index(field, kind))
            self._call(building, "flush")
        except Exception:
            close_shared_shard(self._path(building))
            shutil.rmtree(self._path(building))
            raise
        close_shared_shard(self._path(building))  # Edge keeps the path it opened
        os.rename(self._path(building), self._path(self.name))
        fsync_dir(self.store)

    def _check_resumable(self, dim: int, metric: str) -> None:
        have = self.describe()
        if have.dim != dim or have.metric != metric:
            raise DataError(f"target '{self.name}' holds {have.metric} vectors of dimension "
                            f"{have.dim}, not {metric} vectors of dimension {dim}",
                            "resume only a target created for this migration, or replace it")

    def write(self, batch: Batch) -> None:
        """Upsert (idempotent by id); in the WAL when this returns."""
        real = self._resolve()
        if self._target is None:
            name, params = self._vector(real)
            self._target = (params["size"], name)
        dim, vector_name = self._target
        batch = check_batch(batch, dim)
        ids = point_ids(batch.ids)
        payloads = [p if p is not None else {} for p in batch.payloads]
        check_depth(payloads)
        vectors = batch.vectors.tolist()
        points = [edge.Point(i, {vector_name: v} if vector_name else v, p)
                  for i, v, p in zip(ids, vectors, payloads)]
        self._call(real, "update", edge.UpdateOperation.upsert_points(points))

    def finish_write(self) -> None:
        """Flush the segments and build the HNSW index, as a served shard needs."""
        real = self._resolve()
        self._call(real, "flush")
        self._call(real, "optimize")

    def drop(self) -> None:
        if self._link(self.name) is not None:
            raise UsageError(f"'{self.name}' is a live-name link, not a shard",
                             "drop the shard by its own name")
        serving = self._links_to(self.name)
        if serving:
            raise ConflictError(f"cannot drop '{self.name}': live name(s) {', '.join(serving)} "
                                "link to it", "cut over or roll back first, or remove the link")
        path = self._path(self.name)
        if self._is_shard(self.name):
            close_shared_shard(path)
            shutil.rmtree(path)
        self._target = None

    # --- cutover: an atomic rename of a symbolic link -------------------------------------------
    def cutover(self, live_name: str) -> dict:
        """Point the live-name link ``live_name`` at this shard (one atomic rename)."""
        real = self._resolve()
        if os.path.lexists(self._path(live_name)) and self._link(live_name) is None:
            raise ConflictError(
                f"'{live_name}' in {self.store} is a shard directory, not a live-name link, so "
                "it cannot be switched atomically", f"move the shard to another name and link "
                f"the old name to it (mv {live_name} {live_name}_v1 && ln -s {live_name}_v1 "
                f"{live_name}), then cut over '{live_name}'; the application opens the link")
        previous = self._link(live_name)
        self._switch(live_name, real)
        return {"engine": self.engine, "live_name": live_name, "collection": real,
                "previous": previous}

    def rollback(self, record: dict) -> None:
        """Point ``live_name`` back at the previous shard (or remove the link if there
        was none), atomically; a second rollback is a no-op."""
        live, previous, ours = record["live_name"], record.get("previous"), record["collection"]
        now = self._link(live)
        if now == previous:
            return  # already rolled back
        if now not in (ours, None):
            raise ConflictError(f"live name '{live}' now links to '{now}', not to '{ours}' as "
                                "the cutover left it", f"someone switched it since: link it "
                                f"back to '{previous}' by hand if that is still wanted")
        if previous is not None and not self._is_shard(previous):
            raise NotFoundError(f"the previous shard '{previous}' no longer exists",
                                f"restore '{previous}' in {self.store} before rolling back")
        if previous is None:
            if now is not None:
                os.unlink(self._path(live))
                fsync_dir(self.store)
        else:
            self._switch(live, previous)

    def _switch(self, live: str, shard: str) -> None:
        """Make the link ``live`` name ``shard``: a new link renamed over it (atomic)."""
        tmp = self._path(f".{live}.{os.getpid()}.{threading.get_ident()}.tmp")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(shard, tmp)  # relative: the store directory may be moved as a whole
        os.replace(tmp, self._path(live))
        fsync_dir(self.store)

    def close(self) -> None:
        # shards are shared by the process (close_shared_shards releases them)
        self._target = None


