"""One Job per command: each command opens the source and the target once, and closes
every connector it opened when it ends, after an error too (embedmigrate/job.py).

Counted on Chroma embedded: every ChromaConnector made during a command is recorded
with the thread that made it. The copy's workers (threads ``embedmigrate-part-N``)
open their own connectors by design; every other connector belongs to the command.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from embedmigrate import commands
from embedmigrate.connectors.chroma import ChromaConnector
from embedmigrate.errors import ConflictError, UsageError
from embedmigrate.job import Job
from embedmigrate.plan import load_plan
from fault_helpers import make_job

WORKER_THREADS = "embedmigrate-part-"


class Opened:
    """The ChromaConnectors made while it is installed: which collection, by which
    thread, and whether they were closed."""

    def __init__(self, monkeypatch):
        self.made: list[tuple[str, str, ChromaConnector]] = []
        self.closed: set[int] = set()
        init, close = ChromaConnector.__init__, ChromaConnector.close

        def counting_init(conn, uri):
            init(conn, uri)
            self.made.append((threading.current_thread().name, uri.collection, conn))

        def counting_close(conn):
            self.closed.add(id(conn))
            close(conn)
        monkeypatch.setattr(ChromaConnector, "__init__", counting_init)
        monkeypatch.setattr(ChromaConnector, "close", counting_close)

    def reset(self) -> None:
        self.made.clear()
        self.closed.clear()

    def by_command(self) -> Counter:
        """Collection -> connectors the command itself opened (not the copy's workers)."""
        return Counter(name for thread, name, _ in self.made if not thread.startswith(WORKER_THREADS))

    def left_open(self) -> list[str]:
        return [f"{name} (thread {thread})" for thread, name, conn in self.made
                if id(conn) not in self.closed]


@pytest.fixture
def opened(monkeypatch):
    return Opened(monkeypatch)


@pytest.fixture
def chroma_job(chroma_embedded_harness, tmp_path, fresh_name):
    """A trained job on Chroma embedded whose cutover renames the target to a new live name."""
    source = fresh_name("job")
    job = make_job(tmp_path, chroma_embedded_harness, source, n=300, batch_size=50)
    plan = load_plan(job.plan)
    plan.target.live_name = fresh_name("job_live")
    plan.write(job.plan)
    return job, source


def test_apply_opens_source_and_target_once_and_closes_them(chroma_job, opened):
    job, source = chroma_job
    result = commands.apply(job.plan, force=True, progress=False)
    assert result["stage"] == "applied" and result["cutover"] == "done", result
    assert result["written"] == 300 and result["ids_match"], result
    # rewrite, verify (ids, the gate's sample, the written check) and the cutover:
    # one source and one target connector for all of it
    assert opened.by_command() == {source: 1, source + "_new": 1}, opened.made
    assert not opened.left_open()
    assert not (job.plan.with_name("plan.state") / "lock").exists()


def test_runs_verify_step_with_its_catch_up_opens_each_once(chroma_job, opened):
    job, source = chroma_job
    assert commands.run(job.plan)["step"] == "apply"
    opened.reset()
    # stage "applied": catch up (rewrite's parts, then the id comparison), then verify
    result = commands.run(job.plan)
    assert result["step"] == "verify" and result["caught_up"] == 0 and result["ids_match"], result
    assert opened.by_command() == {source: 1, source + "_new": 1}, opened.made
    assert not opened.left_open()


def test_a_failing_command_closes_what_it_opened_and_releases_the_lock(
        chroma_job, chroma_embedded_harness, opened):
    job, source = chroma_job
    # the target's name is taken by a collection that is not the job's: apply refuses it
    # after opening both
    chroma_embedded_harness.populate(source + "_new", [1, 2], np.eye(2, dtype=np.float32),
                                     [{"n": 1}, {"n": 2}])
    with pytest.raises(ConflictError):
        commands.apply(job.plan, progress=False)
    assert opened.by_command() == {source: 1, source + "_new": 1}, opened.made
    assert not opened.left_open()
    assert not (job.plan.with_name("plan.state") / "lock").exists()


def test_job_closes_what_it_opened_on_an_exception(chroma_job, opened):
    job, source = chroma_job
    with pytest.raises(RuntimeError, match="inside"):
        with Job(job.plan, lock=True) as j:
            assert j.source is j.source and j.target is j.target  # opened once, then reused
            j.source.describe()
            assert (job.plan.with_name("plan.state") / "lock").exists()
            raise RuntimeError("inside the command")
    assert opened.by_command() == {source: 1, source + "_new": 1}
    assert not opened.left_open()
    assert not (job.plan.with_name("plan.state") / "lock").exists()


def test_plan_closes_the_source_it_inspected(chroma_job, tmp_path, opened):
    _, source = chroma_job
    uri = load_plan(chroma_job[0].plan).source.uri
    out = commands.plan(uri, "minilm", output=tmp_path / "p2.toml")
    assert out["plan"] and opened.by_command() == {source: 1}, opened.made
    assert not opened.left_open()
    opened.reset()
    with pytest.raises(UsageError, match="no texts for the new model"):  # refused after inspecting
        commands.plan(uri, "minilm", output=tmp_path / "p3.toml", text_field="")
    assert opened.by_command() == {source: 1} and not opened.left_open(), opened.made
