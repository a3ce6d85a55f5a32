"""The one way embedmigrate replaces a file: whole or not at all.

Every write goes to a temporary file in the same folder (a rename is atomic only
within one filesystem), is flushed and fsynced, renamed over the target with
``os.replace``, and then the folder is fsynced so the rename itself survives a
power cut. A crash at any step leaves the previous file whole; a failure removes
the temporary file and becomes one line that names the fix (errors.file_error).

Writers of several files that must change together (the report set) use the two
pieces: ``stage`` every file first, then ``commit`` them; a failure while staging
leaves every previous file in place.

A folder that must appear whole (a translator checkpoint) is written with
``atomic_write_folder``: its files are written and fsynced into a temporary
sibling folder (``write_synced``), which is fsynced and then swapped into place
(``swap_folder``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import file_error

DEFAULT_MODE = 0o644  # mkstemp makes 0600; plans, state and reports are meant to be read by others
ELSEWHERE = "choose another folder"


def atomic_write_bytes(path, data: bytes, mode: int = DEFAULT_MODE, *,
                       elsewhere: str = ELSEWHERE) -> Path:
    """Replace ``path`` with ``data``; returns the path."""
    return atomic_write_with(path, lambda fh: fh.write(data), mode, elsewhere=elsewhere)


def atomic_write_text(path, text: str, mode: int = DEFAULT_MODE, *,
                      elsewhere: str = ELSEWHERE) -> Path:
    """Replace ``path`` with ``text`` (UTF-8); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode, elsewhere=elsewhere)


def atomic_write_with(path, write: Callable[[BinaryIO], object], mode: int = DEFAULT_MODE, *,
                      elsewhere: str = ELSEWHERE) -> Path:
    """Replace ``path`` with whatever ``write(fh)`` writes into a binary file
    (e.g. ``lambda fh: np.save(fh, array)``), so large data is not built in memory."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = stage(path, write, mode)
        commit(tmp, path)
    except OSError as e:
        if tmp is not None:
            discard(tmp)
        raise file_error(e, path, elsewhere=elsewhere) from None
    return path


def stage(path: Path, write: Callable[[BinaryIO], object], mode: int = DEFAULT_MODE) -> Path:
    """A complete, fsynced temporary file next to ``path`` holding what ``write``
    wrote, with ``mode``; removed again if anything fails (the error propagates)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(_Stream(fh))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        discard(tmp)
        raise
    return Path(tmp)


class _Stream:
    """The temporary file as a plain stream. numpy writes arrays into a real file
    with ``tofile``, whose OSError has no errno (a full disk would read "check that
    folder" instead of "free disk space"); through ``write`` the errno survives."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data) -> int:
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def commit(tmp: Path, path: Path) -> None:
    """Rename a staged file over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def discard(tmp) -> None:
    """Remove a staged file; a second failure must not hide the first."""
    try:
        Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power cut. Not every platform
    or filesystem can open a folder (Windows, some network mounts): then the
    rename is as durable as that filesystem makes it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path, data: bytes, mode: int = DEFAULT_MODE) -> None:
    """Write a new file and fsync it: for files inside a folder that is itself staged
    (``atomic_write_folder``), where the folder's swap is what makes them appear."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, mode)


def atomic_write_folder(directory, fill: Callable[[Path], object], mode: int = 0o755, *,
                        elsewhere: str = ELSEWHERE) -> Path:
    """Replace the folder ``directory`` with what ``fill(tmp)`` writes into a temporary
    sibling folder (with ``write_synced``): a failed or interrupted write leaves the
    previous folder (or none), never a partial one. Returns the path."""
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        tmp.chmod(mode)  # mkdtemp makes 0700; a checkpoint is read by other services too
    except OSError as e:
        raise file_error(e, directory, elsewhere=elsewhere) from None
    try:
        fill(tmp)
        fsync_dir(tmp)
        swap_folder(tmp, directory)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise file_error(e, directory, elsewhere=elsewhere) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def swap_folder(tmp: Path, directory: Path) -> None:
    """Rename the finished folder ``tmp`` to ``directory``, replacing an older one.

    A folder cannot be renamed over a non-empty one, so the old one is moved
    aside first; if the second rename fails the old one is put back. (A crash
    between the two renames leaves no folder, which readers report as such,
    and the old one under ``.NAME.old``, which the next swap clears.)"""
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if not directory.exists():
        tmp.rename(directory)
    else:
        directory.rename(old)
        try:
            tmp.rename(directory)
        except OSError:
            old.rename(directory)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(directory.parent)


__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_with", "stage", "commit",
           "discard", "fsync_dir", "write_synced", "atomic_write_folder", "swap_folder"]
