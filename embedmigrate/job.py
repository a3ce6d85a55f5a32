"""One command's context: the plan, the job's state, its connectors, its lock and its
transform, built once per command and closed when the command ends.

    with Job("plan.toml", lock=True) as job:   # takes the job's run lock
        info = job.source.describe()            # the source, opened on first use
        job.target.write(job.transform(batch))  # the target; the plan's transform
    # every connector the job opened is closed here, after an error too

Each function in ``embedmigrate.commands`` builds one ``Job`` (or runs in the one its
caller passes), so a command opens the source and the target once however many
steps it runs: ``apply`` is rewrite (scan -> transform -> write) -> verify (ids,
counts, the quality gate) -> cutover, all on the same two connectors. The copy's
workers (``parallel``) open their own, in their own thread or process.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .connectors import Connector, open_collection
from .plan import Plan, load_plan
from .state import JobState, RunLock


class Job:
    """A migration job as one command sees it.

    ``lock``: True takes the job's ``RunLock`` on enter and releases it on exit; a
    ``RunLock`` the caller already holds is used as it is (and left held); None runs
    without one (``status``, a dry run). ``state`` is read on first use, after the
    lock is taken, and every step of the command saves through that one ``JobState``.
    """

    def __init__(self, plan: Plan | str, *, lock: RunLock | bool | None = None):
        self.plan = plan if isinstance(plan, Plan) else load_plan(plan)
        self._take_lock = lock is True
        self.lock: RunLock | None = lock if isinstance(lock, RunLock) else None
        self._state: JobState | None = None
        self._source: Connector | None = None
        self._target: Connector | None = None
        self._opened: list[Connector] = []
        self._transform = None
        self._transform_strategy: str | None = None

    # --- lifetime ----------------------------------------------------------------------
    def __enter__(self) -> "Job":
        if self._take_lock:
            self.lock = RunLock(self.plan.state_dir).acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(quiet=exc_type is not None)

    def close(self, *, quiet: bool = False) -> None:
        """Close every connector the job opened, then release the lock it took. A close
        that fails is raised after the rest are closed, unless ``quiet`` (the command
        already failed: its own error is the one to report)."""
        first_error = None
        try:
            while self._opened:
                try:
                    self._opened.pop().close()
                except Exception as e:  # noqa: BLE001 - the others must still be closed
                    first_error = first_error or e
        finally:
            self._source = self._target = None
            if self._take_lock and self.lock is not None:
                self.lock.release()
                self.lock = None
        if first_error is not None and not quiet:
            raise first_error

    # --- what the command works on -----------------------------------------------------
    @property
    def state(self) -> JobState:
        """state.json (``state.JobState``), read once; every update saves it at once."""
        if self._state is None:
            self._state = JobState(self.plan.state_dir)
        return self._state

    @property
    def source(self) -> Connector:
        """The plan's source collection, opened on first use."""
        if self._source is None:
            self._source = self.open(self.plan.source.uri)
        return self._source

    @property
    def target(self) -> Connector:
        """The plan's target collection, opened on first use."""
        if self._target is None:
            self._target = self.open(self.plan.target.uri)
        return self._target

    def open(self, uri) -> Connector:
        """A connector to another collection (e.g. the one a cutover retired), closed
        with the job."""
        connector = open_collection(uri)
        self._opened.append(connector)
        return connector

    @property
    def transform(self):
        """What turns a source batch into the batch written (``embedmigrate.transform``):
        the translator, or the new model for a re-embed, per the job's strategy
        (``commands.make_transform``). Models load once per command; an ``auto``
        strategy fixed by the rewrite's first run gets its own transform."""
        from .commands import make_transform, resolve_strategy
        strategy = resolve_strategy(self.plan)[0]
        if self._transform is None or strategy != self._transform_strategy:
            self._transform = make_transform(self.plan, self.source.describe(), strategy)
            self._transform_strategy = strategy
        return self._transform

    def heartbeat(self) -> None:
        """Refresh the lock's heartbeat, when the job holds one (long scans call it)."""
        if self.lock is not None:
            self.lock.heartbeat()


@contextmanager
def job_of(plan: Plan | str | Job, lock: RunLock | bool | None = None) -> Iterator[Job]:
    """The job a step runs in: the caller's, when it passes one (its owner closes it),
    else a new one for this call, closed when the call ends."""
    if isinstance(plan, Job):
        yield plan
        return
    with Job(plan, lock=lock) as job:
        yield job
