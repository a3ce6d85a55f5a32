"""Partitioned, pipelined copy: the engine of ``apply``.

The source is split into parts (``Connector.partitions``). A part is copied by
``copy_part``: scan (a reader thread) -> translate (the worker) -> write (a
writer thread), so reading, translating and writing overlap. Parts run on N
local threads (``LocalExecutor``) or as Ray tasks on a cluster (``RayExecutor``).

Workers only *report* progress, one event per written batch: (cursor, points,
id checksum). The driver alone persists state.json, after the batch is in the
target, so a worker that dies loses only batches the state never counted; the
next attempt resumes the part from its last saved cursor and rewrites them
(writes are idempotent upserts). Parts are fixed at the first apply, so the
number of workers can change from one run to the next.
"""

from __future__ import annotations

import hashlib
import queue
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .connectors import open_collection
from .errors import EmbedMigrateError, MissingDependencyError, UnavailableError, UsageError
from .transform import Counts, as_transform

# (cursor, points written, id checksum of those points, {"native", "translated", "tokens"})
Event = tuple


@dataclass
class PartJob:
    index: int
    part: Any  # the connector's JSON range; None is the whole collection
    cursor: Any  # resume after this; None is the start of the part
    attempts: int = 0


def id_hash(ids) -> int:
    """Order-independent checksum of a set of ids (sum of 64-bit hashes, mod 2**64)."""
    total = 0
    for i in ids:
        total += int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
    return total % (1 << 64)


def copy_part(source_uri: str, target_uri: str, transform, part, cursor,
              batch_size: int, select=None) -> Iterator[Event]:
    """Copy one part (from ``cursor``), yielding an event after each batch is written.

    ``transform`` (``embedmigrate.transform``; a bare translator means translate)
    turns each read batch into the batch written. ``select`` (optional) picks the
    points of a read batch to transform and write (indexes); the event still
    moves the cursor past the whole batch and counts the points written."""
    transform = as_transform(transform)
    src, dst = open_collection(source_uri), open_collection(target_uri)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="embedmigrate-write") as writer:
            pending = None
            for batch, cursor in prefetch(src.scan(batch_size, after=cursor, part=part)):
                if select is not None:
                    batch = _subset(batch, select(batch))
                out, counts = transform.apply(batch) if len(batch) else (batch, Counts())
                if pending is not None:
                    yield pending.result()
                pending = writer.submit(_write, dst, out, cursor, counts)
            if pending is not None:
                yield pending.result()
    finally:
        src.close()
        dst.close()


def _subset(batch, keep: list[int]):
    from .connectors import Batch
    if len(keep) == len(batch):
        return batch
    docs = [batch.documents[i] for i in keep] if batch.documents is not None else None
    return Batch([batch.ids[i] for i in keep], batch.vectors[keep], [batch.payloads[i] for i in keep],
                 docs)


def _write(dst, batch, cursor, counts=None) -> Event:
    if len(batch):
        dst.write(batch)
    return cursor, len(batch), id_hash(batch.ids), (counts or Counts()).to_dict()


def prefetch(iterator, depth: int = 2):
    """Read the next batches on a thread while the current one is processed."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def reader():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # re-raised in the consumer
            q.put(e)
        q.put(done)

    threading.Thread(target=reader, daemon=True, name="embedmigrate-read").start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early: let the reader end instead of blocking


# --- executors ----------------------------------------------------------------------

DONE = "done"


class LocalExecutor:
    """Parts on ``workers`` threads of this process (every engine, embedded ones too)."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))

    def start(self, source_uri: str, target_uri: str, transform, checkpoint: Path,
              batch_size: int, select=None) -> Callable[[PartJob], Iterator[Event]]:
        transform = as_transform(transform)  # one for every thread (models load once)
        return lambda job: copy_part(source_uri, target_uri, transform, job.part, job.cursor,
                                     batch_size, select)

    def retryable(self, err: BaseException) -> bool:
        return False  # connectors already retry what can be retried

    def close(self) -> None:
        pass


def run_parts(jobs: list[PartJob], executor, copier: Callable[[PartJob], Iterator[Event]],
              max_attempts: int = 3) -> Iterator[tuple[int, Any]]:
    """Run the jobs ``executor.workers`` at a time; yield ``(index, event)`` as events
    arrive and ``(index, DONE)`` when a part is finished. A part whose worker died is
    re-queued from its last reported cursor (at most ``max_attempts`` times)."""
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                for event in copier(job):
                    job.cursor = event[0]
                    events.put((job.index, event))
                    if stop.is_set():
                        return
                events.put((job.index, DONE))
            except BaseException as err:  # noqa: BLE001 - handed to the driver
                job.attempts += 1
                if executor.retryable(err) and job.attempts < max_attempts:
                    todo.put(job)  # a dead worker: the part goes on from its cursor
                    continue
                events.put((job.index, err))
                return

    threads = [threading.Thread(target=worker, daemon=True, name=f"embedmigrate-part-{k}")
               for k in range(min(executor.workers, len(jobs)))]
    for t in threads:
        t.start()
    remaining = len(jobs)
    try:
        while remaining:
            try:
                index, event = events.get(timeout=0.5)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and events.empty():
                    break  # every worker ended (all parts failed over to errors, reported)
                continue
            if isinstance(event, BaseException):
                raise event
            if event == DONE:
                remaining -= 1
            yield index, event
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


# --- Ray ----------------------------------------------------------------------------

class RayExecutor:
    """Parts as Ray tasks: ``workers`` tasks in flight, on whatever nodes Ray picks.

    Each task reads the checkpoint's files from Ray's object store (no shared
    disk needed) and opens the source and target itself, so the stores must be
    reachable from every node (servers, not embedded stores). Credentials come
    from each node's environment (PGPASSWORD, ...), as they do for the CLI.
    """

    WORKER_DEATHS = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
                     "ActorDiedError", "LocalRayletDiedError", "TaskUnschedulableError",
                     "ObjectReconstructionFailedError", "RaySystemError")

    def __init__(self, workers: int | None, address: str = ""):
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("executor \"ray\" needs Ray, which is not installed",
                                         "pip install 'embedmigrate[ray]' (or: pip install ray)") from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UnavailableError(f"cannot start or join Ray at '{address or 'local'}': {first}",
                                       "check ray_address (\"\" local, \"auto\", ray://head:10001) "
                                       "and that the cluster is up") from None
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, int(workers or cpus))

    def start(self, source_uri: str, target_uri: str, transform, checkpoint: Path,
              batch_size: int, select=None) -> Callable[[PartJob], Iterator[Event]]:
        ray = self.ray
        spec = as_transform(transform).spec()  # rebuilt in each worker process
        ckpt = Path(checkpoint)
        files = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()} if ckpt.is_dir() else {}
        ckpt_ref = ray.put(files)
        task = ray.remote(num_returns="streaming", max_retries=0)(_ray_copy_part)

        def run(job: PartJob) -> Iterator[Event]:
            stream = task.options(name=f"embedmigrate-part-{job.index}").remote(
                source_uri, target_uri, ckpt_ref, job.part, job.cursor, batch_size, spec, select)
            for ref in stream:
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, EmbedMigrateError):
                        raise cause from None
                    raise
        return run

    def retryable(self, err: BaseException) -> bool:
        return type(err).__name__ in self.WORKER_DEATHS or any(
            c.__name__ in self.WORKER_DEATHS for c in type(err).__mro__)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


_translators: dict = {}
_transforms: dict = {}


def _ray_copy_part(source_uri, target_uri, checkpoint_files: dict, part, cursor, batch_size,
                   spec: dict | None = None, select=None):
    """A Ray task: rebuild the transform (once per worker process: models load once),
    copy one part."""
    import json

    from .transform import from_spec
    spec = spec or {"kind": "translate"}
    key = hashlib.sha256(b"".join(checkpoint_files[k] for k in sorted(checkpoint_files))).hexdigest()

    def load_translator():
        from .translators import Translator
        if key not in _translators:
            with tempfile.TemporaryDirectory(prefix="embedmigrate-ckpt-") as tmp:
                for name, data in checkpoint_files.items():
                    (Path(tmp) / name).write_bytes(data)
                _translators[key] = Translator.load(tmp)
        return _translators[key]

    spec_key = (key, json.dumps(spec, sort_keys=True))
    if spec_key not in _transforms:
        _transforms[spec_key] = from_spec(spec, load_translator)
    yield from copy_part(source_uri, target_uri, _transforms[spec_key], part, cursor, batch_size, select)


def make_executor(kind: str, workers: int, address: str = ""):
    if kind == "ray":
        return RayExecutor(workers, address)
    if kind != "local":
        raise UsageError(f"unknown executor '{kind}'", "use local or ray")
    return LocalExecutor(workers)


def check_ray_reachable(*uris) -> None:
    """Embedded stores live in this process's files: Ray workers cannot open them."""
    from .connectors import connector_class, parse_uri
    for uri in uris:
        u = parse_uri(uri)
        if not connector_class(u.engine).reachable_from_other_processes(u):
            raise UsageError(f"'{u.redacted()}' is an embedded store that Ray workers cannot open",
                             "use executor \"local\" with workers = N (threads), or a Qdrant, "
                             "Chroma or PostgreSQL server")
