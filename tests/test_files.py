"""The one atomic writer (embedmigrate/files.py): a crash at any step of a save
leaves the previous file whole, a full disk is one line naming the fix, and what
it writes is readable by others (0644) whatever mkstemp made."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedmigrate import files
from embedmigrate.errors import UsageError
from embedmigrate.plan import Plan
from embedmigrate.report import QualityReport
from embedmigrate.translators import make_translator
from security_helpers import one_line_error, run_cli

LIMIT = 16 * 1024  # bytes any one file may reach in a "full disk" child process
OLD = b"the previous content, whole\n" * 10


def listing(folder: Path) -> dict:
    """Every file in ``folder`` (hidden temporary files too) -> sha256."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_kill_between_write_and_rename_leaves_the_old_file_whole(tmp_path):
    """A hard crash (no cleanup, no finally) after the new content is written and
    fsynced but before the rename: the target still holds the old content."""
    target = tmp_path / "state.json"
    target.write_bytes(OLD)
    child = textwrap.dedent(f"""
        import os
        from embedmigrate import files
        def crash(*args):
            os._exit(9)  # like kill -9: nothing after this runs
        files.os.replace = crash
        files.atomic_write_bytes({str(target)!r}, b"new" * 100000)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert target.read_bytes() == OLD
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].startswith(".state.json.")  # hidden, never the target


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failure_at_each_step_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, step):
    target = tmp_path / "plan.toml"
    target.write_bytes(OLD)
    before = listing(tmp_path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if step == "write":
        def write(fh):
            fh.write(b"half of the new")
            fail()
        with pytest.raises(UsageError) as e:
            files.atomic_write_with(target, write)
    else:
        monkeypatch.setattr(files.os, step, fail)
        with pytest.raises(UsageError) as e:
            files.atomic_write_bytes(target, b"new")
    assert listing(tmp_path) == before
    assert "\n" not in str(e.value) and f"cannot write {target}" in str(e.value)
    assert "free disk space" in str(e.value)


def test_full_disk_is_one_line_and_keeps_the_previous_output(tmp_path):
    """``embedmigrate translate`` on a disk that fills up half way through the
    output: one line naming the fix, exit 2, the previous output whole, no temp."""
    rng = np.random.default_rng(0)
    old = rng.normal(size=(60, 12)).astype(np.float32)
    new = old @ rng.normal(size=(12, 8)).astype(np.float32)
    ckpt = make_translator("procrustes").fit(old, new, pairs=(old, new)).save(tmp_path / "ckpt")
    work = tmp_path / "work"
    work.mkdir()
    vectors = rng.normal(size=(2000, 12)).astype(np.float32)  # 64 kB out: past the limit
    np.save(work / "in.npy", vectors[:10])
    assert run_cli("translate", ckpt, work / "in.npy", "-o", work / "out.npy").returncode == 0
    np.save(work / "in.npy", vectors)
    before = listing(work)

    proc = run_cli("translate", ckpt, work / "in.npy", "-o", work / "out.npy", fsize=LIMIT)
    line = one_line_error(proc)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write" in line and "free disk space" in line and "another output path" in line
    assert listing(work) == before
    assert np.load(work / "out.npy").shape == (10, 8)


def test_written_files_are_0644_whatever_the_umask(tmp_path):
    """mkstemp makes 0600; what the writer leaves must be readable by the
    application and colleagues (the mode is set, not left to the umask)."""
    previous = os.umask(0o077)
    try:
        text = files.atomic_write_text(tmp_path / "a.txt", "x")
        raw = files.atomic_write_bytes(tmp_path / "b.bin", b"x", 0o600)
    finally:
        os.umask(previous)
    assert mode(text) == 0o644 and mode(raw) == 0o600


def test_callers_write_shareable_files(tmp_path):
    """The plan and the report set go through the writer: 0644, no temp left."""
    previous = os.umask(0o077)
    try:
        plan_path = Plan().write(tmp_path / "plan.toml")
        paths = QualityReport(verdict="PASS", checks=[], metrics={}).write(tmp_path / "report")
    finally:
        os.umask(previous)
    assert mode(plan_path) == 0o644
    assert {mode(Path(p)) for p in paths.values()} == {0o644}
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(Path(p).name for p in paths.values())


# --- every writer of the project goes through files.py ----------------------------------------

def _a_file_in_the_way(tmp_path: Path) -> Path:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    return blocker / "inside"


def test_the_encode_cache_write_is_one_line_naming_the_fix(tmp_path):
    from embedmigrate.encoders import Encoder, encode_cached

    class Lengths(Encoder):
        def _encode(self, texts, batch_size, show_progress, kind):
            return np.array([[len(t) + 1.0, 1.0] for t in texts], dtype=np.float32)

        def _identity(self):
            return {}

    with pytest.raises(UsageError) as e:
        encode_cached(Lengths("lengths"), ["a", "bb"], _a_file_in_the_way(tmp_path))
    assert "\n" not in str(e.value) and "EMBEDMIGRATE_ENCODE_CACHE" in e.value.fix


def test_vec2vec_training_state_is_written_by_the_atomic_writer(tmp_path, monkeypatch):
    """The resumable training state is fsynced and renamed like every other file (the
    write goes through files.stage), and an unwritable folder is one line naming the fix."""
    from embedmigrate.translators.vec2vec import Config, Vec2Vec
    rng = np.random.default_rng(0)
    old, new = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
    tiny = dict(width=16, adapter_depth=1, backbone_depth=1, disc_width=16, disc_depth=2, batch_size=32,
                warmup=2, eval_every=100, eval_points=64, progress=False, device="cpu", init="random",
                steps=4, checkpoint_every=2)
    staged = []
    real_stage = files.stage
    monkeypatch.setattr(files, "stage", lambda path, *a, **k: staged.append(path.name) or real_stage(path, *a, **k))
    Vec2Vec(Config(**tiny, checkpoint_dir=str(tmp_path / "train"))).fit(old, new)
    assert staged and all(name.startswith("restart-") and name.endswith(".pt") for name in staged)
    assert not [p for p in (tmp_path / "train").iterdir() if p.name.endswith(".tmp")]

    with pytest.raises(UsageError) as e:
        Vec2Vec(Config(**tiny, checkpoint_dir=str(_a_file_in_the_way(tmp_path)))).fit(old, new)
    assert "\n" not in str(e.value) and "checkpoint_dir" in e.value.fix
