"""Errors that the CLI reports as one clear message, without a traceback."""
from __future__ import annotations

import errno


class LkAblateError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(LkAblateError, ValueError):
    """An invalid option (kernel size, batch size, ...) caught when the model or config is built."""


class DataError(LkAblateError, FileNotFoundError):
    """A dataset, benchmark or file is missing or has the wrong layout."""


class WriteError(LkAblateError, OSError):
    """A file cannot be written where it should go (full disk, read-only file system, no permission, a folder in
    the way). An OSError, so code that tolerates failed writes (``suppress(OSError)``) still does."""


# The errors of writing that the user's environment causes, and what to do about each (one line each).
WRITE_FIXES: dict[int, str] = {
    errno.ENOSPC: "free space on that file system or write to another one",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere",
    errno.EFBIG: "the file system refuses a file this large: write to another one",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "no permission: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write to, or fix its permissions",
    errno.EISDIR: "a folder has that name: give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EEXIST: "a file is in the way where a folder is needed: fix the path or move the file",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "a symbolic link is in the way, and lk_ablate does not follow it there: remove the link",
}
# Errors that only writing causes: whatever file the OSError names, the destination is what failed.
WRITE_ONLY_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def os_error_in(e: BaseException | None) -> OSError | None:
    """The first OSError with an errno of WRITE_FIXES in ``e``'s chain (``torch.save`` wraps ENOSPC in a RuntimeError
    whose context is the OSError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in WRITE_FIXES:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def write_error_line(path: object, e: OSError, verb: str = "cannot write ") -> str:
    """``cannot write PATH: <the system's reason> (errno NAME); <the fix>``."""
    return f"{verb}{path}: {e.strerror or e} (errno {errno.errorcode.get(e.errno, e.errno)}); " \
           f"{WRITE_FIXES.get(e.errno, 'choose another location')}"


def environment_error_line(e: BaseException) -> str | None:
    """One line for an error the environment caused where no lk_ablate code could name it first: an OSError of
    WRITE_FIXES (naming its file) or a Lightning misconfiguration; None for anything else (a bug: traceback)."""
    os_error = os_error_in(e)
    if os_error is not None and (os_error.filename is not None or os_error.errno in WRITE_ONLY_ERRNOS):
        if os_error.filename is None:
            return write_error_line("a file", os_error)
        # Reading or writing, the system does not say which: the file and the reason.
        return write_error_line(os_error.filename, os_error, verb="")
    cur, seen = e, set()
    while cur is not None and id(cur) not in seen:
        if type(cur).__name__ == "MisconfigurationException" or (
                isinstance(cur, ValueError) and _raised_in_lightning(cur)):
            # Lightning checking the trainer's options (val_check_interval, limits, max_epochs, ...): its message
            # names the option and the fix
            return one_line(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _raised_in_lightning(e: BaseException) -> bool:
    """Whether ``e`` was raised by Lightning's trainer, loops or callbacks themselves (its innermost frame)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
    return any(f"/lightning/pytorch/{part}/" in path for part in ("trainer", "loops", "callbacks"))


def one_line(e: BaseException) -> str:
    """A multi-line error (jsonargparse's) as one line: its first distinct lines and the value it was given."""
    lines = [ln.strip().rstrip(":") for ln in str(e).splitlines() if ln.strip()]
    head = [ln for ln in lines[:3] if ln != "Errors"]
    given = [ln for ln in lines[3:] if ln.startswith("Given value:")]
    return ": ".join(dict.fromkeys(head + given))
