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
from pathlib import Path

from .errors import ConflictError, UsageError

STAGES = ("planned", "trained", "applying", "applied", "verified", "cut_over", "rolled_back")


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UsageError(f"cannot write {path}: {e.strerror or e}",
                         "free disk space or fix the permissions of that folder") from None


class JobState:
    """state.json as a dict with atomic save."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"
        self.data: dict = {"stage": "planned"}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError:
                raise UsageError(f"job state {self.path} is corrupt",
                                 f"inspect it; delete {self.dir} to start the job over") from None

    @property
    def stage(self) -> str:
        return self.data.get("stage", "planned")

    def reached(self, stage: str) -> bool:
        order = {s: i for i, s in enumerate(STAGES[:-1])}
        return self.stage in order and order[self.stage] >= order[stage]

    def update(self, **values) -> None:
        self.data.update(values)
        self.data["updated_at"] = time.time()
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def get(self, key, default=None):
        return self.data.get(key, default)


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
