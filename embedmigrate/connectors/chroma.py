"""Chroma: an embedded store folder or a Chroma server.

    chroma:///path/to/persist/collection            chromadb.PersistentClient(path)
    chroma+http://host:8000/collection              chromadb.HttpClient
    chroma+https://host/collection?tenant=t&database=d&token_env=CHROMA_TOKEN&timeout=10

Server options: ``tenant``, ``database``, ``token_env`` (the name of an
environment variable holding a token, sent as ``Authorization: Bearer``, or
under ``token_header`` e.g. ``X-Chroma-Token``) or ``token_file`` (a file holding
it), ``sslrootcert`` (CA bundle for chroma+https) or ``verify=false``, ``timeout`` (seconds per
request, default 10), ``retries`` and ``retry_delay`` (default 3 retries after 0.5, 1,
2 s; or the EMBEDMIGRATE_RETRIES / EMBEDMIGRATE_RETRY_DELAY environment variables).
Every call is retried on its own (reads, and idempotent upserts), so a server that
restarts within that window costs a pause, not the run. A
``user:password@`` in the URI is sent as HTTP basic auth.

How Chroma's model maps onto ``Batch``:

- ids are always strings in Chroma. We read them back as ``str`` and report
  ``id_type="str"``; ids written from another engine are stored as ``str(id)``.
- payloads are the record metadata (Chroma's ``None`` metadata is ``{}``).
  A record's URI, when it has one, travels in the payload under ``"#uri"``:
  Chroma reserves keys starting with ``#``, so it can never clash with a real
  metadata key, and ``write`` moves it back into ``uris``.
- documents travel in ``Batch.documents`` (``None`` when a batch has none).
- vectors come back as float64 and are cast to float32 (exact: Chroma stores
  float32).

Scan order: ``collection.get(limit, offset)`` returns records in the order
of Chroma's internal sequence number: insertion order. Updates and upserts of
an existing id keep its place; new records go to the end; a deleted record
disappears, shifting every later offset by one. Ids are not ordered and
Chroma offers no id range filter, so keyset pagination is impossible. The
cursor is therefore ``{"offset": n, "last_id": id}``: every page re-reads the
record before it and checks it is still ``last_id``; if records before the
cursor were deleted, the cursor is moved back to where ``last_id`` now is,
so a delete never makes the scan skip records (a deleted anchor is a
ConflictError: restart the scan, writes are idempotent).

Cutover: Chroma has no aliases, so cutover renames. It is not atomic, and it
is ordered so that no collection is ever lost: first the live collection is
renamed to ``<live>__pre_<UTC time>``, then this collection takes the live
name. The record holds both collections' ids, so ``rollback`` finds them
whatever they are called now and is idempotent; it also recovers a cutover
that died between the two renames (see ``rollback``).
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
import uuid
from typing import Iterator

import chromadb  # the registry checks it is installed before importing this module
import chromadb.errors as chroma_errors
import httpx  # chromadb's own HTTP library
import numpy as np

from ..errors import (ConflictError, DataError, EmbedMigrateError, NotFoundError, UnavailableError,
                      UsageError)
from .base import (Batch, CollectionInfo, Connector, Cursor, Part, as_float32, check_batch,
                   quantile_positions, retry_delays, retry_settings)
from .credentials import TLS_OPTIONS, http_tls, secret, tls_failure
from .uri import CollectionURI

# Chroma's hnsw "space" <-> our metric names
SPACE_TO_METRIC = {"l2": "l2", "cosine": "cosine", "ip": "dot"}
METRIC_TO_SPACE = {v: k for k, v in SPACE_TO_METRIC.items()}
URI_KEY = "#uri"  # payload key carrying a record's Chroma URI (see module docstring)
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
MAX_NAME = 512
FIELD_SAMPLE = 1000  # records read by describe() to list metadata fields
ID_PAGE = 10_000  # ids per request in the ids-only pass of sample()
ALL_FIELDS = ["embeddings", "metadatas", "documents", "uris"]
FLOATS_PER_REQUEST = 65_536  # vector numbers per get request to a server (see _rows_per_request)
MIN_ROWS_PER_REQUEST = 64

_clients: dict = {}  # one client per store per process (PersistentClient must be shared)
_clients_lock = threading.Lock()


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise UsageError(f"'{name}' is not a valid Chroma collection name",
                         "use 3-512 characters from a-z A-Z 0-9 . _ -, starting and ending "
                         "with a letter or digit")
    return name


class ChromaConnector(Connector):
    engine = "chroma"
    embedded_schemes = ("chroma",)  # a PersistentClient's folder

    @classmethod
    def cutover_description(cls, live: str, target: str) -> str:
        return f"rename: '{live}' -> '{live}__pre_<time>', then '{target}' -> '{live}'"

    @classmethod
    def rollback_outcome(cls, record: dict) -> str:
        live, new, retired = record["live_name"], record["new_name"], record.get("retired_name")
        if retired:
            return f"'{live}' is the old collection again; the migrated one is '{new}' again"
        return (f"the migrated collection is '{new}' again; no collection was called '{live}' "
                "before the cutover, so none is now")

    @classmethod
    def retired_collection(cls, record: dict) -> str | None:
        return record.get("retired_name")  # the live collection's name after the rename

    def __init__(self, uri: CollectionURI):
        super().__init__(uri)
        opts = uri.options
        self.is_server = uri.scheme != "chroma"
        self.tenant = opts.get("tenant") or chromadb.DEFAULT_TENANT
        self.database = opts.get("database") or chromadb.DEFAULT_DATABASE
        try:
            self.timeout = float(opts.get("timeout", 10))
        except ValueError:
            raise UsageError(f"bad timeout option in {uri.redacted()}",
                             "use ?timeout=SECONDS with a number") from None
        self.retries, self.retry_delay = retry_settings(opts)
        self._dim: int | None = None  # the dimension create_like was asked for

    # --- connecting --------------------------------------------------------------
    @property
    def where(self) -> str:
        """The store, safe to print."""
        if self.is_server:
            extra = "".join(f" {k} '{v}'" for k, v, default in
                            (("tenant", self.tenant, chromadb.DEFAULT_TENANT),
                             ("database", self.database, chromadb.DEFAULT_DATABASE)) if v != default)
            return f"{self.uri.scheme}://{self.uri.host}:{self._port()}{extra}"
        return f"chroma:///{self.uri.path.lstrip('/')}"

    def _port(self) -> int:
        return self.uri.port or (443 if self.uri.scheme == "chroma+https" else 8000)

    def client(self, create: bool = False):
        if self.is_server:
            key = ("http", self.uri.scheme, self.uri.host, self._port(), self.tenant,
                   self.database, tuple(sorted(self._headers().items())),
                   tuple(self.uri.options.get(k) for k in TLS_OPTIONS))
            make = self._http_client
        else:
            path = os.path.realpath(self.uri.path)
            if not create and not os.path.isdir(path):
                raise NotFoundError(f"no Chroma store at {self.where}",
                                    "check the folder in the URI (chroma:///path/to/persist/"
                                    "collection)")
            key = ("path", path, self.tenant, self.database)
            make = lambda: chromadb.PersistentClient(path, tenant=self.tenant,  # noqa: E731
                                                     database=self.database)
        with _clients_lock:
            if key not in _clients:
                _clients[key] = make()
            return _clients[key]

    def _headers(self) -> dict:
        headers = {}
        if self.uri.username:
            pair = f"{self.uri.username}:{self.uri.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        token = secret(self.uri, "token", what="Chroma token")
        if token:
            header = self.uri.options.get("token_header", "Authorization")
            headers[header] = f"Bearer {token}" if header.lower() == "authorization" else token
        return headers

    def _http_client(self):
        # chromadb's HTTP session has no timeout and its constructor already talks
        # to the server: check the heartbeat ourselves first, bounded.
        scheme = "https" if self.uri.scheme == "chroma+https" else "http"
        url = f"{scheme}://{self.uri.host}:{self._port()}/api/v2/heartbeat"
        headers = self._headers()
        verify = http_tls(self.uri, scheme == "https", client_cert=False)

        def heartbeat():
            try:
                httpx.get(url, headers=headers, timeout=self._timeouts(),
                          verify=True if verify is None else verify).raise_for_status()
            except httpx.ConnectError as e:
                tls = tls_failure(e)
                if tls:  # a certificate problem: retrying cannot help
                    raise UsageError(f"TLS connection to Chroma server {self.where} failed: {tls}",
                                     "check ?sslrootcert= (the CA that signed the server's "
                                     "certificate) and the host name in the URI") from None
                raise

        self._retrying("heartbeat", heartbeat)
        # chromadb's settings take a CA bundle path (or False), not an SSL context
        settings = None if verify is None else chromadb.Settings(
            chroma_server_ssl_verify=False if verify is False else self.uri.options["sslrootcert"])
        try:
            client = self._retrying("connect", lambda: chromadb.HttpClient(
                host=self.uri.host, port=self._port(), ssl=scheme == "https", headers=dict(headers),
                tenant=self.tenant, database=self.database, settings=settings))
        except (chroma_errors.ChromaAuthError, chroma_errors.AuthorizationError):
            raise UsageError(f"Chroma server {self.where} refused the credentials",
                             "put a valid token in the variable named by ?token_env=") from None
        except (ValueError, chroma_errors.NotFoundError) as e:
            # chromadb wraps connection and tenant failures in ValueError
            if "connect to a Chroma server" in str(e):
                raise self._unavailable("connect", e) from None
            raise NotFoundError(f"tenant '{self.tenant}' or database '{self.database}' does "
                                f"not exist on {self.where}",
                                "fix ?tenant= / ?database= in the URI, or create them") from None
        session = getattr(getattr(client, "_server", None), "_session", None)
        if session is not None:  # bound every later request too
            session.timeout = self._timeouts()
        return client

    def _timeouts(self):
        return httpx.Timeout(self.timeout, connect=min(self.timeout, 3.0))

    def _unavailable(self, what: str, err: Exception) -> UnavailableError:
        return UnavailableError(
            f"Chroma server {self.where} is unreachable ({what}: {type(err).__name__}) after "
            f"{self.retries + 1} attempts",
            "start the server or fix host/port in the URI, then re-run (an interrupted apply "
            "resumes where it stopped); for a slow server raise ?timeout=SECONDS or ?retries=N")

    def _retrying(self, what: str, fn):
        """Run fn, retrying network failures with backoff (servers only: every call we
        retry is a read or an idempotent upsert)."""
        def once():
            try:
                return fn()
            except httpx.HTTPStatusError as e:
                if e.response.status_code < 500:
                    raise self._http_refused(e) from None
                raise
        return self.retrying(once, what)

    def is_transient(self, error: Exception) -> bool:
        return isinstance(error, (httpx.TransportError, httpx.HTTPStatusError))

    def backoff(self) -> list[float]:
        return retry_delays(self.retries, base=self.retry_delay) if self.is_server else []

    def unavailable(self, error: Exception, attempts: int, what: str) -> Exception:
        return self._unavailable(what, error)

    def _http_refused(self, e) -> EmbedMigrateError:
        code = e.response.status_code
        if code in (401, 403):
            return UsageError(f"Chroma server {self.where} refused the credentials (HTTP {code})",
                              "put a valid token in the variable named by ?token_env=")
        return UnavailableError(f"Chroma server {self.where} answered HTTP {code} to a heartbeat",
                                "check the URI points at a Chroma server")

    def _call(self, what: str, fn, *args, **kwargs):
        """One Chroma call with our errors: retries, NotFound, auth."""
        try:
            return self._retrying(what, lambda: fn(*args, **kwargs))
        except chroma_errors.NotFoundError:
            raise self._not_found(listing=False) from None
        except (chroma_errors.ChromaAuthError, chroma_errors.AuthorizationError):
            raise UsageError(f"Chroma server {self.where} refused the credentials",
                             "put a valid token in the variable named by ?token_env=") from None

    def _not_found(self, name: str | None = None, listing: bool = True) -> NotFoundError:
        name = name or self.name
        names = []
        try:
            if listing:
                names = sorted(c.name for c in self.client().list_collections(limit=6))
        except Exception:  # the listing is only a hint
            pass
        hint = f" (existing: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
        return NotFoundError(f"Chroma collection '{name}' does not exist in {self.where}{hint}",
                             "check the collection name at the end of the URI")

    def _collection(self, name: str | None = None):
        name = name or self.name
        try:
            return self._call("get collection", self.client().get_collection, name,
                              embedding_function=None)
        except NotFoundError:
            raise self._not_found(name) from None

    def _by_id(self, collection_id: str | None):
        """The collection with this id, whatever it is called now (None if gone)."""
        if not collection_id:
            return None
        try:
            return self._call("get collection", self.client().get_collection_by_id,
                              uuid.UUID(collection_id), embedding_function=None)
        except NotFoundError:
            return None

    def _exists(self, name: str) -> bool:
        try:
            self._call("get collection", self.client().get_collection, name,
                       embedding_function=None)
            return True
        except NotFoundError:
            return False

    # --- reading -------------------------------------------------------------------
    def exists(self) -> bool:
        if not self.is_server and not os.path.isdir(self.uri.path):
            return False
        return self._exists(self.name)

    def describe(self) -> CollectionInfo:
        col = self._collection()
        count = self._call("count", col.count)
        first = self._call("get", col.get, limit=FIELD_SAMPLE,
                           include=["metadatas", "documents", "uris"])
        payload_fields, string_fields = _fields_seen(first["metadatas"] or [])
        schema_keys = [k for k in ((col.get_model().serialized_schema or {}).get("keys") or {})
                       if not k.startswith("#")]
        payload_fields = sorted(set(payload_fields) | set(schema_keys))
        if any(u is not None for u in first.get("uris") or []):
            payload_fields.append(URI_KEY)
        has_docs = any(d is not None for d in first["documents"] or [])
        text_fields = (["document"] if has_docs else []) + sorted(string_fields)
        config = _clean_config(col.configuration_json)
        return CollectionInfo(
            engine="chroma", name=col.name, count=count, dim=self._dimension(col) or 0,
            metric=_metric(config, col.metadata), id_type="str", vector_name=None,
            payload_fields=payload_fields, text_fields=text_fields,
            settings={"configuration": config, "metadata": dict(col.metadata or {}),
                      "id": str(col.id)})

    def _dimension(self, col) -> int | None:
        """Chroma fixes the dimension with the first record (None while empty)."""
        dim = col.get_model().dimension
        if dim:
            return int(dim)
        peek = self._call("get", col.get, limit=1, include=["embeddings"])
        if peek["ids"]:
            return len(peek["embeddings"][0])
        return None

    def scan(self, batch_size: int, after: Cursor = None,
             part: Part = None) -> Iterator[tuple[Batch, Cursor]]:
        """Offset pages in Chroma's storage order. A part is ``{"start": n, "stop": m}``:
        positions [start, stop), stop None for "to the end"."""
        if batch_size < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}", "pass --batch-size >= 1")
        col = self._collection()
        start, stop = _part_bounds(part)
        offset, last_id = _parse_cursor(after) if after is not None else (start, None)
        per_request = min(batch_size, self._rows_per_request(col))
        pending: list[Batch] = []
        while stop is None or offset < stop:
            limit = min(per_request, batch_size - sum(map(len, pending)))
            if stop is not None:
                limit = min(limit, stop - offset)
            if last_id is None:
                page = self._call("scan", col.get, limit=limit, offset=offset, include=ALL_FIELDS)
            else:
                # re-read the record before the cursor: proves nothing before it was deleted
                page = self._call("scan", col.get, limit=limit + 1, offset=offset - 1,
                                  include=ALL_FIELDS)
                if not page["ids"] or page["ids"][0] != last_id:
                    offset = self._relocate(col, last_id, offset)
                    continue
                page = {k: (page[k][1:] if page.get(k) is not None else None) for k in
                        ("ids", "embeddings", "metadatas", "documents", "uris")}
            if not page["ids"]:
                break
            pending.append(_to_batch(page))
            offset += len(pending[-1])
            last_id = pending[-1].ids[-1]
            if sum(map(len, pending)) >= batch_size:
                yield _concat(pending), {"offset": offset, "last_id": last_id}
                pending = []
        if pending:
            yield _concat(pending), {"offset": offset, "last_id": last_id}

    def _rows_per_request(self, col) -> int:
        """Rows per get request of a scan or fetch. A server's reply is JSON that the client turns
        into Python floats all at once, about 180 bytes per number (24 MB for 1,024 x
        128-d): capping the numbers per request keeps that, and so apply's peak memory,
        small at any dimension. The embedded client hands back arrays: no cap."""
        dim = self._dimension(col) if self.is_server else None
        return max(MIN_ROWS_PER_REQUEST, FLOATS_PER_REQUEST // dim) if dim else 1 << 30

    def scan_ids(self, page_size: int = ID_PAGE) -> Iterator[list]:
        col = self._collection()
        offset = 0
        while True:
            ids = self._call("scan", col.get, limit=page_size, offset=offset, include=[])["ids"]
            if not ids:
                return
            yield list(ids)
            offset += len(ids)

    def partitions(self, n: int) -> list[Part]:
        """Position ranges of near-equal size; the last is open-ended, so records
        added during the migration (appended at the end) fall in it."""
        count = self._call("count", self._collection().count)
        if n <= 1 or count < 2:
            return [None]
        starts = quantile_positions(count, n)
        return [{"start": a, "stop": b} for a, b in zip(starts, [*starts[1:], None])]

    def _relocate(self, col, last_id: str, offset: int) -> int:
        """Records before the cursor were deleted: find where last_id is now."""
        window = 10_000
        start = max(0, offset - 1 - window)
        ids = self._call("scan", col.get, limit=offset - start, offset=start, include=[])["ids"]
        if last_id in ids:
            return start + ids.index(last_id) + 1
        raise ConflictError(f"the scan cursor's record '{last_id}' was deleted from '{self.name}' "
                            "or moved too far", "restart the scan from the beginning (writes are "
                            "idempotent upserts, so already copied records are simply rewritten)")

    def sample(self, n: int, seed: int = 0) -> Batch:
        col = self._collection()
        count = self._call("count", col.count)
        if count == 0:
            raise DataError(f"Chroma collection '{self.name}' is empty: nothing to sample",
                            "migrate a collection that holds vectors, or populate it first")
        rng = np.random.default_rng(seed)
        positions = np.sort(rng.choice(count, size=min(n, count), replace=False))
        ids = self._ids_at(col, positions)
        ids = [ids[i] for i in rng.permutation(len(ids))]  # random order for training
        return self._fetch(col, ids)

    def _ids_at(self, col, positions: np.ndarray) -> list[str]:
        """The ids at sorted offsets, reading ids only and only the pages that hold one."""
        ids: list[str] = []
        pages = np.unique(positions // ID_PAGE)
        for page in pages:
            got = self._call("sample", col.get, limit=ID_PAGE, offset=int(page) * ID_PAGE,
                             include=[])["ids"]
            inside = positions[(positions // ID_PAGE) == page] - int(page) * ID_PAGE
            ids += [got[i] for i in inside if i < len(got)]  # the collection may have shrunk
        return ids

    def _fetch(self, col, ids: list[str]) -> Batch:
        """Full records for ids, in the order given (get(ids=) answers in storage order)."""
        parts = []
        step = min(self.max_batch(), self._rows_per_request(col))
        for start in range(0, len(ids), step):
            got = self._call("sample", col.get, ids=ids[start:start + step], include=ALL_FIELDS)
            parts.append(_to_batch(got))
        merged = _concat(parts)
        where = {i: k for k, i in enumerate(merged.ids)}
        order = [where[i] for i in ids if i in where]
        return Batch([merged.ids[k] for k in order], merged.vectors[order],
                     [merged.payloads[k] for k in order],
                     [merged.documents[k] for k in order] if merged.documents is not None else None)

    def fetch(self, ids: list) -> Batch:
        return self._fetch(self._collection(), [str(i) for i in ids])

    def max_batch(self) -> int:
        if not hasattr(self, "_max_batch"):
            self._max_batch = int(self._call("max batch size", self.client().get_max_batch_size))
        return self._max_batch

    # --- writing the target -----------------------------------------------------------
    def create_like(self, source: CollectionInfo, dim: int, *, if_exists: str = "error") -> None:
        if if_exists not in ("error", "resume", "replace"):
            raise UsageError(f"if_exists must be error, resume or replace, not '{if_exists}'",
                             "pass if_exists='resume' or 'replace'")
        check_name(self.name)
        if self.exists():
            if if_exists == "error":
                raise ConflictError(f"target collection '{self.name}' already exists in {self.where}",
                                    "choose another target name, or resume into it "
                                    "(if_exists='resume') or drop and recreate it ('replace')")
            if if_exists == "resume":
                have = self._dimension(self._collection())
                if have is not None and have != dim:
                    raise DataError(f"target collection '{self.name}' holds vectors of dimension "
                                    f"{have}, not {dim}", "resume with the same target model, or "
                                    "replace the target (if_exists='replace')")
                self._dim = dim
                return
            self.drop()
        configuration, metadata = _target_settings(source)
        self._call("create collection", self.client(create=True).create_collection, self.name,
                   configuration=configuration, metadata=metadata or None,
                   embedding_function=None)
        self._dim = dim

    def write(self, batch: Batch) -> None:
        col = self._collection()
        # the dimension the server recorded with the first record, not a read of the
        # collection: a get on a target whose index another worker is creating can fail
        # on the server ("Error creating hnsw segment reader"); the server refuses a batch
        # of another dimension itself
        dim = self._dim or col.get_model().dimension
        batch = check_batch(batch, dim) if dim else check_batch(batch, as_float32(batch.vectors).shape[1])
        if not len(batch):
            return  # Chroma refuses an empty upsert
        ids = [str(i) for i in batch.ids]
        metadatas, uris = _split_payloads(batch.payloads)
        documents = list(batch.documents) if batch.documents is not None else None
        if documents is not None and len(documents) != len(ids):
            raise DataError(f"batch has {len(ids)} ids but {len(documents)} documents",
                            "pass one document (or None) per point")
        _check_texts(ids, documents, uris)
        step = self.max_batch()
        for s in range(0, len(ids), step):
            e = s + step
            part_meta = metadatas[s:e]
            part_docs = documents[s:e] if documents is not None else None
            part_uris = uris[s:e] if uris is not None else None
            stale = self._replace_stale(col, ids[s:e], part_meta, part_docs, part_uris)
            try:
                self._call("upsert", col.upsert, ids=ids[s:e], embeddings=batch.vectors[s:e],
                           metadatas=part_meta, documents=part_docs, uris=part_uris)
            except (ValueError, TypeError, chroma_errors.InvalidArgumentError) as err:
                raise DataError(f"Chroma refused the batch: {_first_line(err)}",
                                "fix or drop the ids, documents or metadata it names") from None
            if stale:  # an old document or URI that upsert cannot clear: write those again
                self._call("delete", col.delete, ids=stale)
                keep = [k for k, i in enumerate(ids[s:e]) if i in set(stale)]
                self._call("upsert", col.upsert, ids=[ids[s + k] for k in keep],
                           embeddings=batch.vectors[s:e][keep],
                           metadatas=[part_meta[k] for k in keep],
                           documents=[part_docs[k] for k in keep] if part_docs else None,
                           uris=[part_uris[k] for k in keep] if part_uris else None)
        if self._dim is None and dim is None:
            self._dim = batch.vectors.shape[1]

    def _replace_stale(self, col, ids, metadatas, documents, uris) -> list[str]:
        """Make an upsert over existing records leave exactly the new record.

        Chroma's upsert *merges* into an existing record: metadata keys the new
        record lacks, and its document and URI when the new ones are None, would
        stay. Keys that must go are set to None in ``metadatas`` (which upsert
        deletes); the ids whose document or URI must go are returned, to be
        deleted and written again after the upsert has been accepted."""
        old = self._call("upsert", col.get, ids=ids, include=["metadatas", "documents", "uris"])
        if not old["ids"]:
            return []  # the common case: a fresh target
        where = {i: k for k, i in enumerate(ids)}
        stale = []
        for i, meta, doc, uri in zip(old["ids"], old["metadatas"] or [None] * len(old["ids"]),
                                     old["documents"] or [None] * len(old["ids"]),
                                     old["uris"] or [None] * len(old["ids"])):
            k = where[i]
            gone = set(meta or {}) - set(metadatas[k] or {})
            if gone:
                metadatas[k] = {**{key: None for key in gone}, **(metadatas[k] or {})}
            if (doc is not None and (documents is None or documents[k] is None)) or \
                    (uri is not None and (uris is None or uris[k] is None)):
                stale.append(i)
        return stale

    def drop(self) -> None:
        try:
            self._call("delete collection", self.client().delete_collection, self.name)
        except NotFoundError:
            pass  # already gone: dropping is idempotent

    # --- cutover ------------------------------------------------------------------------
    def plan_cutover(self, live_name: str) -> dict:
        """The record ``cutover`` will act on, computed without changing anything, so a
        caller can persist it *before* the renames (then a crash in between is recoverable)."""
        check_name(live_name)
        new = self._collection()
        if new.name == live_name:
            raise ConflictError(f"'{live_name}' is already this collection", "nothing to cut over")
        old = self._collection(live_name) if self._exists(live_name) else None
        retired = None
        if old is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            retired = _free_name(self, live_name, f"__pre_{stamp}")
        return {"engine": "chroma", "store": self.where, "live_name": live_name,
                "new_name": new.name, "new_id": str(new.id),
                "retired_name": retired, "old_id": str(old.id) if old is not None else None,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def cutover(self, live_name: str, record: dict | None = None) -> dict:
        """Rename the live collection to ``record['retired_name']``, then this one to
        ``live_name``. Between the two renames ``live_name`` does not exist (Chroma has
        no aliases); if the second rename fails, the first is undone."""
        record = record or self.plan_cutover(live_name)
        old = self._by_id(record["old_id"])
        new = self._by_id(record["new_id"])
        if new is None:
            raise NotFoundError(f"the collection to serve ('{record['new_name']}') no longer exists",
                                "re-run the migration to rebuild the target")
        if old is not None and old.name == live_name:
            self._call("rename", old.modify, name=record["retired_name"])
        try:
            if new.name != live_name:
                self._call("rename", new.modify, name=live_name)
        except Exception:
            self.rollback(record)  # put the old collection back under the live name
            raise
        self.name = live_name
        self.uri = self.uri.with_collection(live_name)
        return record

    def rollback(self, record: dict) -> None:
        """Serve the old collection under ``live_name`` again; the new one gets its
        name back. Idempotent, and it finishes a half-done cutover whichever rename
        ran. A record that lost its ids (only ``live_name`` and ``new_name``) still
        works: the retired collection is then found by its ``<live>__pre_<time>`` name."""
        live, new_name = record["live_name"], record["new_name"]
        if record.get("new_id"):
            new = self._by_id(record["new_id"])
        else:  # without ids: whoever holds the live name is new once new_name is free
            new = self._named(live) if not self._exists(new_name) else None
        if new is not None and new.name == live:
            target = new_name if not self._exists(new_name) else _free_name(self, new_name, "__rolled_back")
            self._call("rename", new.modify, name=target)
        old = self._by_id(record.get("old_id")) if record.get("old_id") else None
        if self._exists(live):  # nothing was renamed yet, or the rollback already ran
            if old is not None and old.name != live:
                raise ConflictError(f"'{live}' is now served by another collection, not the one "
                                    f"the cutover replaced ('{old.name}')",
                                    f"rename '{live}' away, then run the rollback again")
            return
        if old is None and not record.get("old_id"):
            old = self._named(record["retired_name"]) if record.get("retired_name") else None
            old = old or self._latest_retired(live)
        if old is not None:
            self._call("rename", old.modify, name=live)
        if self.name == live:
            self.name = new_name
            self.uri = self.uri.with_collection(new_name)

    def _named(self, name: str):
        return self._collection(name) if self._exists(name) else None

    def _latest_retired(self, live: str):
        pattern = re.compile(re.escape(live[:MAX_NAME]) + r"__pre_\d{8}T\d{6}(_\d+)?$")
        names = sorted(c.name for c in self._call("list", self.client().list_collections)
                       if pattern.match(c.name))
        return self._collection(names[-1]) if names else None


# --- helpers -------------------------------------------------------------------------------

def _free_name(conn: ChromaConnector, base: str, suffix: str) -> str:
    """base + suffix, shortened to Chroma's 512 characters, unused in the store."""
    for k in range(100):
        tail = suffix + (f"_{k}" if k else "")
        name = base[: MAX_NAME - len(tail)].rstrip("._-") + tail
        if not conn._exists(name):
            return name
    raise ConflictError(f"no free name like '{base}{suffix}'", "delete old retired collections")


def _part_bounds(part) -> tuple[int, int | None]:
    if part is None:
        return 0, None
    if (isinstance(part, dict) and set(part) == {"start", "stop"} and isinstance(part["start"], int)
            and (part["stop"] is None or isinstance(part["stop"], int))):
        return part["start"], part["stop"]
    raise UsageError(f"{part!r} is not a Chroma scan part",
                     "pass a part that partitions() returned ({'start': n, 'stop': m})")


def _parse_cursor(after) -> tuple[int, str | None]:
    if after is None:
        return 0, None
    if isinstance(after, dict) and isinstance(after.get("offset"), int) and after["offset"] >= 0:
        last = after.get("last_id")
        return after["offset"], (str(last) if last is not None and after["offset"] > 0 else None)
    raise UsageError(f"'{after}' is not a Chroma scan cursor",
                     "pass back a cursor that scan() yielded ({'offset': n, 'last_id': id})")


def _to_batch(page: dict) -> Batch:
    ids = list(page["ids"])
    emb = page.get("embeddings")
    vectors = (np.asarray(emb, dtype=np.float32) if emb is not None and len(emb)
               else np.zeros((0, 0), np.float32))
    metadatas = page.get("metadatas") or [None] * len(ids)
    uris = page.get("uris") or [None] * len(ids)
    payloads = []
    for meta, uri in zip(metadatas, uris):
        payload = dict(meta) if meta else {}
        if uri is not None:
            payload[URI_KEY] = uri
        payloads.append(payload)
    docs = page.get("documents")
    documents = list(docs) if docs is not None and any(d is not None for d in docs) else None
    return Batch(ids, vectors, payloads, documents)


def _concat(parts: list[Batch]) -> Batch:
    if not parts:
        return Batch([], np.zeros((0, 0), np.float32), [], None)
    has_docs = any(p.documents is not None for p in parts)
    return Batch([i for p in parts for i in p.ids], np.concatenate([p.vectors for p in parts]),
                 [m for p in parts for m in p.payloads],
                 [d for p in parts for d in (p.documents or [None] * len(p))] if has_docs else None)


INT64 = (-2**63, 2**63 - 1)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _is_text(value) -> bool:
    """A str Chroma can store: UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check_texts(ids: list[str], documents: list | None, uris: list | None) -> None:
    """What Chroma's client would refuse only half-way (or in its Rust core)."""
    for k, i in enumerate(ids):
        if not i or not _is_text(i):
            raise DataError(f"id #{k} {i!a} is empty or not UTF-8", "Chroma ids are non-empty text")
    for what, values in (("document", documents), ("URI", uris)):
        for k, value in enumerate(values or []):
            if value is not None and not _is_text(value):
                raise DataError(f"the {what} of point #{k} is not UTF-8 text ({_short(value)})",
                                f"pass each {what} as a str or None")


def _short(value) -> str:
    text = ascii(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _metadata_problem(meta: dict) -> str | None:
    """Why Chroma would refuse or silently change this metadata (None if it keeps it)."""
    for key, value in meta.items():
        if not key or not _is_text(key):
            return f"key {_short(key)} is empty or not UTF-8"
        for v in (value if isinstance(value, list) else [value]):
            if isinstance(v, str) and not _is_text(v):
                return f"'{key}' holds text that is not UTF-8"
            if isinstance(v, int) and not isinstance(v, bool) and not INT64[0] <= v <= INT64[1]:
                return f"'{key}' = {v} does not fit in 64 bits (Chroma would store it as a float)"
            if isinstance(v, float) and not np.isfinite(v):
                return f"'{key}' = {v} is not a finite number (Chroma would drop the key)"
    return None


def _split_payloads(payloads: list[dict]) -> tuple[list, list | None]:
    """Payloads -> Chroma metadatas (+ uris), validated before anything is written."""
    from chromadb.api.types import validate_metadata
    metadatas, uris = [], []
    for k, payload in enumerate(payloads):
        meta = dict(payload or {})
        uris.append(meta.pop(URI_KEY, None))
        meta = meta or None  # Chroma refuses an empty dict
        try:
            validate_metadata(meta)
        except (ValueError, TypeError) as e:
            raise DataError(f"payload {k} cannot be stored as Chroma metadata: {e}",
                            "Chroma metadata values must be str, int, float, bool or non-empty "
                            "lists of one of those: convert or drop that field first") from None
        if meta and any(key.startswith("#") for key in meta):
            raise DataError(f"payload {k} has a key starting with '#', which Chroma reserves",
                            "rename that payload field")
        problem = _metadata_problem(meta or {})
        if problem:
            raise DataError(f"payload {k} cannot be stored as Chroma metadata: {problem}",
                            "convert or drop that field first")
        metadatas.append(meta)
    return metadatas, (uris if any(u is not None for u in uris) else None)


def _fields_seen(metadatas: list) -> tuple[list[str], list[str]]:
    fields, strings = set(), set()
    for meta in metadatas:
        for key, value in (meta or {}).items():
            fields.add(key)
            if isinstance(value, str):
                strings.add(key)
    return sorted(fields), sorted(strings)


def _clean_config(config: dict | None) -> dict:
    """The index part of a collection configuration (no embedding function)."""
    config = dict(config or {})
    out = {}
    for key in ("hnsw", "spann"):
        if config.get(key):
            out[key] = {k: v for k, v in config[key].items() if v is not None}
    return out


def _metric(config: dict, metadata: dict | None) -> str:
    space = ((config.get("hnsw") or {}).get("space") or (config.get("spann") or {}).get("space")
             or (metadata or {}).get("hnsw:space") or "l2")
    return SPACE_TO_METRIC.get(space, "l2")


def _target_settings(source: CollectionInfo) -> tuple[dict, dict]:
    """Configuration and metadata for a target like ``source``: Chroma's own index
    settings when the source is Chroma, else just its metric."""
    space = METRIC_TO_SPACE[source.metric]
    if source.engine == "chroma":
        config = _clean_config(source.settings.get("configuration"))
        metadata = dict(source.settings.get("metadata") or {})
    else:
        config, metadata = {}, {}
    index = "spann" if "spann" in config and "hnsw" not in config else "hnsw"
    config.setdefault(index, {})["space"] = space
    if "hnsw:space" in metadata:
        metadata["hnsw:space"] = space
    return config, metadata
