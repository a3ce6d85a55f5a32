"""Job state and the run lock, kept in a small inspectable folder next to the plan.

    plan.state/
        state.json      stage, apply cursor, counts, checksums, cutover record
        lock            who is running (host, pid, start, heartbeat)
        cache/          samples and encoded texts (safe to delete)
        report/         the latest quality report

Every write is temp-file + fsync + rename: a crash leaves the previous state,
never a torn one. The lock is an O_EXCL file so it also works on a shared
volume (Kubernetes jobs on different nodes); a lock whose process is gone
(same host) or whose heartbeat is older than ``stale_after`` is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import files
from .errors import ConflictError, UsageError

STAGES = ("planned", "trained", "applying", "applied", "verified", "cut_over", "rolled_back")


# the state folder sits next to the plan, so the way out of a full or closed folder is there
STATE_ELSEWHERE = "keep the plan (its .state folder sits beside it) in a writable folder"


def atomic_write_text(path: Path, text: str) -> None:
    files.atomic_write_text(path, text, elsewhere=STATE_ELSEWHERE)


# Which stage may follow which (a stage may always be saved again). Everything else is a
# bug or a mistake that would lose track of what is live: e.g. retraining after the cutover
# would let `cleanup --drop-target` drop the collection the application queries.
TRANSITIONS = {
    "planned": {"trained"},
    "trained": {"applying", "applied"},
    "applying": {"applied", "trained"},  # trained: cleanup --drop-target
    "applied": {"applying", "verified", "cut_over", "rolled_back", "trained"},
    "verified": {"applying", "applied", "cut_over", "rolled_back", "trained"},
    "cut_over": {"rolled_back"},
    "rolled_back": {"cut_over", "trained"},
}


@dataclass
class JobRecord:
    """What state.json holds. Every field but ``stage`` is None until a step sets it;
    keys this version does not know (older or newer files) are kept in ``extra`` and
    written back unchanged."""

    stage: str = "planned"
    # train
    checkpoint: str | None = None
    train_metrics: dict | None = None
    method: str | None = None
    # apply: the parts of the partitioned copy and the job's totals
    apply_started: bool | None = None
    creating_target: bool | None = None
    parts: list | None = None
    cursor: Any = None  # a job started before parts existed: its one cursor
    written: int | None = None
    id_hash: int | None = None
    source_count_at_start: int | None = None
    missing_copied: dict | None = None  # catch-up's share of written / id_hash
    catch_up: dict | None = None  # a catch-up copy under way: ids file, parts, cursors
    # verify
    last_report: str | None = None
    last_verdict: str | None = None
    # cutover and rollback
    cutover: dict | None = None
    cutover_pending: dict | None = None
    cutover_forced: bool | None = None
    cutover_at: float | None = None
    rolled_back: dict | None = None
    rolled_back_at: float | None = None
    old_dropped: str | None = None
    updated_at: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "JobRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        """The fields that are set (None is left out, as a key never written was)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        return {**self.extra, **out}


class JobState:
    """state.json as a typed record (``record``) with atomic save; ``get``/``update``
    read and write it by key, and ``update`` refuses a stage that may not follow."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"
        self.record = JobRecord()
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                self.record = JobRecord.from_dict(data)
            except (ValueError, TypeError):
                raise UsageError(f"job state {self.path} is corrupt",
                                 f"inspect it; delete {self.dir} to start the job over") from None

    @property
    def data(self) -> dict:
        return self.record.to_dict()

    @property
    def stage(self) -> str:
        return self.record.stage or "planned"

    def reached(self, stage: str) -> bool:
        order = {s: i for i, s in enumerate(STAGES[:-1])}
        return self.stage in order and order[self.stage] >= order[stage]

    def update(self, **values) -> None:
        if "stage" in values:
            self._check_transition(values["stage"])
        for key, value in values.items():
            if key != "extra" and hasattr(self.record, key):
                setattr(self.record, key, value)
            else:
                self.record.extra[key] = value
        self.record.updated_at = time.time()
        atomic_write_text(self.path, json.dumps(self.record.to_dict(), indent=2, default=str))

    def get(self, key, default=None):
        value = getattr(self.record, key) if key != "extra" and hasattr(self.record, key) \
            else self.record.extra.get(key)
        return default if value is None else value

    def _check_transition(self, new: str) -> None:
        old = self.stage
        # stages this version does not know (a newer tool's) are not guarded
        if new == old or old not in TRANSITIONS or new not in TRANSITIONS:
            return
        if new not in TRANSITIONS[old]:
            fix = ("roll back first: embedmigrate rollback PLAN" if old == "cut_over"
                   else f"see embedmigrate status; from '{old}' the job goes on to "
                        + " or ".join(sorted(TRANSITIONS[old])))
            raise ConflictError(f"the job is at stage '{old}' and cannot go to '{new}'", fix)


class RunLock:
    """Exclusive lock for one job; ``with RunLock(dir):``."""

    def __init__(self, state_dir: Path, stale_after: float = 600.0):
        self.path = Path(state_dir) / "lock"
        self.stale_after = stale_after
        self.held = False
        self._beat = 0.0

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, owner: dict | None) -> bool:
        if owner is None:  # unreadable: half-written by a crash, or removed meanwhile
            try:
                return time.time() - self.path.stat().st_mtime > 5
            except OSError:
                return True
        if owner.get("host") == socket.gethostname():
            try:
                os.kill(int(owner["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, KeyError):
                pass
        return time.time() - float(owner.get("heartbeat", 0)) > self.stale_after

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if not self._is_stale(owner):
                    who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "another run"
                    raise ConflictError(f"this job is already running ({who})",
                                        f"wait for it to finish; if it is dead, delete {self.path}")
                # stale: take it over (rename is atomic; a concurrent taker loses the race)
                stale = self.path.with_name(f"lock.stale.{os.getpid()}")
                try:
                    os.replace(self.path, stale)
                    stale.unlink()
                except OSError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self._record()))
            self.held = True
            return self
        raise ConflictError("could not take the job lock", f"retry; if it persists delete {self.path}")

    def _record(self) -> dict:
        now = time.time()
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}

    def heartbeat(self, every: float = 5.0) -> None:
        """Refresh the lock's heartbeat (at most every ``every`` seconds: it is
        called once per batch and costs an fsync)."""
        now = time.time()
        if self.held and now - self._beat >= every:
            owner = self._owner() or self._record()
            owner["heartbeat"] = now
            atomic_write_text(self.path, json.dumps(owner))
            self._beat = now

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is None or owner.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except OSError:
                    pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
