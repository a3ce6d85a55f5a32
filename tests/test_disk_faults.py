"""A full disk or a folder the user may not write: one clear line that names the
fix, a non-zero exit, and never a half-written checkpoint or report.

The disk is "full" through RLIMIT_FSIZE in the child process (a write past the
limit fails with EFBIG, as on a full disk with ENOSPC); "permission denied" runs
the child as the unprivileged user nobody (root ignores file modes), or puts a
regular file where a folder should be. Crashes in the middle of a save are
injected in-process at each step of the write-then-rename sequence.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from embedmigrate import commands
from embedmigrate.errors import NotFoundError, UsageError
from embedmigrate.translators import Translator
from embedmigrate.translators import base as checkpoint_io
from security_helpers import (NOBODY, can_switch_user, finish, npy_corpus, one_line_error,
                              run_cli, start_cli)

LIMIT = 16 * 1024  # bytes any one file may reach in a "full disk" child process


def digest(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def job(postgres_tcp_harness):
    """A trained job with a report, in a folder others may read (the nobody cases).

    The source is a Postgres table read with ?password_file=, so every command,
    whoever runs it, finds the password without any environment."""
    from harness_postgres import TCP_PASSWORD
    root = Path(tempfile.mkdtemp(prefix="embedmigrate-disk-"))
    root.chmod(0o755)
    ids, old, payloads, spec = npy_corpus(root / "model", old_dim=128, new_dim=96)
    name = f"disk_src_{os.getpid()}"
    postgres_tcp_harness.populate(name, ids, old, payloads)
    (root / "pgpass").write_text(TCP_PASSWORD)
    uri = f"{postgres_tcp_harness.uri(name)}&password_file={root / 'pgpass'}"
    uri = uri.replace(f":{TCP_PASSWORD}@", "@")  # the password comes from the file only
    plan = commands.plan(uri, spec, text_field="text", pairs=200, method="procrustes",
                         checkpoint=str(root / "ckpt"), output=root / "plan.toml")["plan"]
    commands.train(plan, progress=False)
    commands.dry_run(plan, out_dir=root / "reports", progress=False)
    state = root / "plan.state"
    for path in [state, *state.rglob("*")]:  # nobody runs commands on this job too
        path.chmod(0o777 if path.is_dir() else 0o666)
    for path in root.rglob("*"):
        if path.is_file() and not path.is_relative_to(state):
            path.chmod(0o644)
    yield {"root": root, "plan": plan, "ckpt": root / "ckpt", "reports": root / "reports"}
    shutil.rmtree(root, ignore_errors=True)


def assert_untouched(job, checkpoint: dict, reports: dict) -> None:
    assert digest(job["ckpt"]) == checkpoint
    assert digest(job["reports"]) == reports  # no temp files left either
    assert Translator.load(job["ckpt"]).new_dim == 96
    leftovers = [p.name for p in job["root"].iterdir() if p.name.startswith(".ckpt")]
    assert not leftovers, leftovers


def test_full_disk_while_saving_a_checkpoint(job):
    before, reports = digest(job["ckpt"]), digest(job["reports"])
    assert (job["ckpt"] / "weights.safetensors").stat().st_size > LIMIT  # it cannot fit
    proc = run_cli("train", job["plan"], "--retrain", fsize=LIMIT)
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert f"cannot write {job['ckpt']}" in line and "free disk space" in line
    assert "[train] checkpoint" in line  # where to point it instead
    assert_untouched(job, before, reports)


def test_full_disk_while_writing_the_report(job):
    before, reports = digest(job["ckpt"]), digest(job["reports"])
    assert (job["reports"] / "report.html").stat().st_size > LIMIT
    proc = run_cli("apply", job["plan"], "--dry-run", "--report-dir", job["reports"], fsize=LIMIT)
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert "free disk space" in line and "--report-dir" in line
    assert_untouched(job, before, reports)  # the previous report set, whole


def nobody_cannot_run_the_cli() -> str | None:
    """Why user nobody cannot start ``embedmigrate`` with this interpreter, or None if
    it can. A virtualenv's python is often a link into a private home (pyenv under
    /root): nobody may not even execute it, which no file mode of the job can change."""
    try:
        proc = finish(start_cli("--version", as_user=NOBODY))
    except OSError as e:  # the exec itself was refused
        return f"{sys.executable} is out of reach of user nobody ({e.strerror})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"user nobody cannot run embedmigrate with {sys.executable}: {last}"
    return None


@pytest.mark.skipif(not can_switch_user(), reason="needs root to run a command as nobody")
def test_permission_denied(job, tmp_path):
    unreachable = nobody_cannot_run_the_cli()
    if unreachable:
        pytest.skip(unreachable)
    before, reports = digest(job["ckpt"]), digest(job["reports"])
    closed = Path(tempfile.mkdtemp(prefix="embedmigrate-root-only-"))  # 0700, owned by root
    home = Path(tempfile.mkdtemp(prefix="embedmigrate-nobody-home-"))
    home.chmod(0o777)
    env = {"HOME": str(home), "MPLCONFIGDIR": str(home)}
    try:
        # the checkpoint's folder belongs to root: nobody cannot create the new one beside it;
        # the report folder is inside a folder only root may enter (a dry run takes no lock,
        # so both run at once)
        train = start_cli("train", job["plan"], "--retrain", as_user=NOBODY, env=env)
        report = start_cli("apply", job["plan"], "--dry-run", "--report-dir", closed / "reports",
                           as_user=NOBODY, env=env)
        train, report = finish(train), finish(report)
        line = one_line_error(train)
        assert train.returncode == 2 and "Permission denied" in line
        assert "fix the permissions" in line and "[train] checkpoint" in line
        line = one_line_error(report)
        assert report.returncode == 2 and "Permission denied" in line and "--report-dir" in line
    finally:
        shutil.rmtree(closed, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    assert not (closed / "reports").exists()
    assert_untouched(job, before, reports)


def test_a_file_where_a_folder_should_be(job, tmp_path):
    """A checkpoint under a regular file cannot be saved, and afterwards there is clearly
    none (a report under a file: tests/test_report.py)."""
    before, reports = digest(job["ckpt"]), digest(job["reports"])
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    plan = tmp_path / "plan.toml"
    text = Path(job["plan"]).read_text().replace(str(job["ckpt"]), str(blocker / "ckpt"))
    plan.write_text(text)
    assert str(blocker / "ckpt") in plan.read_text()
    shutil.copytree(Path(job["plan"]).with_name("plan.state"), tmp_path / "plan.state")
    proc = run_cli("train", plan, "--retrain")
    assert proc.returncode == 2 and "a part of that path is a file" in one_line_error(proc)
    proc = run_cli("apply", plan, "--dry-run")
    assert proc.returncode == 4 and "no trained translator" in one_line_error(proc)
    assert_untouched(job, before, reports)


# --- crashes at each step of a save (injected in-process) -----------------------------------

@pytest.fixture
def saved(job, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(job["ckpt"], ckpt)
    return Translator.load(ckpt), ckpt


def _no_leftovers(ckpt: Path) -> None:
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith(".ckpt")) == []


def test_disk_full_on_the_second_file_keeps_the_previous_checkpoint(saved, monkeypatch):
    translator, ckpt = saved
    before = digest(ckpt)
    real = checkpoint_io.files.write_synced

    def fill_up(path, data):
        if path.name == checkpoint_io.META_FILE:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(checkpoint_io.files, "write_synced", fill_up)
    translator.meta["changed"] = True
    with pytest.raises(UsageError, match="No space left") as e:
        translator.save(ckpt)
    assert "free disk space" in e.value.fix
    assert digest(ckpt) == before and Translator.load(ckpt).new_dim == 96
    _no_leftovers(ckpt)


def test_a_failed_swap_puts_the_previous_checkpoint_back(saved, monkeypatch):
    translator, ckpt = saved
    before = digest(ckpt)
    real = Path.rename

    def refuse_the_new_one(self, target):
        if Path(target) == ckpt and self.name.startswith(".ckpt.") and self.name != ".ckpt.old":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return real(self, target)

    monkeypatch.setattr(Path, "rename", refuse_the_new_one)
    with pytest.raises(UsageError, match="Input/output error"):
        translator.save(ckpt)
    assert digest(ckpt) == before
    _no_leftovers(ckpt)


def test_a_crash_between_the_renames_leaves_no_checkpoint_not_a_partial_one(saved):
    translator, ckpt = saved
    # what a kill between "move the old one aside" and "move the new one in" leaves
    ckpt.rename(ckpt.with_name(".ckpt.old"))
    half = ckpt.with_name(".ckpt.x1y2z3")
    half.mkdir()
    (half / checkpoint_io.WEIGHTS_FILE).write_bytes(b"\0" * 10)  # a torn, unrenamed write
    with pytest.raises(NotFoundError, match="not a translator checkpoint"):
        Translator.load(ckpt)
    translator.save(ckpt)  # the next save works and clears what the crash left aside
    assert Translator.load(ckpt).new_dim == 96
    assert not ckpt.with_name(".ckpt.old").exists()
