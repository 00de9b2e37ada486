"""One atomic writer for every file lk_ablate publishes (checkpoints, results, re-param files, caches, .beton).

A file is written under a temporary name beside its destination (same file system), flushed and fsync'ed,
given the permissions a plain ``open()`` would give it (0666 minus the umask: ``mkstemp`` makes 0600, which
hides results and checkpoints from the rest of a shared cluster), renamed over the destination with
``os.replace`` (atomic on POSIX) and the folder is fsync'ed so the rename itself is durable. A reader thus sees
the complete old file or the complete new one, never part of either.

Temporary names carry the writer's host and pid (``.<name>.tmp-<host>-<pid>-<random>``), so a later writer
removes only temporaries whose writer is gone: never the in-flight file of another live process.

A write that the environment refuses (full disk, quota, read-only file system, no permission, a folder in the way)
raises ``WriteError``, one line naming the file and the fix, with nothing left behind. Long jobs call
``check_writable`` first, so they learn that before the work, not after it. ``locked`` serialises the
read-modify-write of one file between processes without following a planted symbolic link.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError, LkAblateError, WriteError, WRITE_ONLY_ERRNOS, os_error_in, write_error_line

__all__ = ["append_text", "atomic_path", "atomic_torch_save", "atomic_write", "atomic_write_text", "check_free_space",
           "check_writable", "file_mode", "fsync_dir", "locked", "publish", "read_yaml", "remove_stale_temps",
           "temp_prefix", "write_failure"]

# A temporary file of another host cannot be checked for a live writer; it is stale only after this long.
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600.0


def temp_prefix(path: str | os.PathLike) -> str:
    """Name prefix of the temporary files written for ``path`` (hidden, so no glob for ``*.ckpt`` matches them)."""
    return f".{os.path.basename(os.fspath(path))}.tmp-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _umask() -> int:
    # /proc avoids os.umask's set-and-restore, which briefly changes the mask for every thread of the process.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to open or fsync a directory; nothing to do then
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove temporaries of ``path`` left by killed writers; returns the removed paths.

    A temporary is stale when its writer (host, pid in its name) is this host and that pid is gone, or when it
    was written on another host more than ``FOREIGN_TEMP_MAX_AGE_S`` ago. Temporaries of live writers stay.
    """
    path = os.path.abspath(os.fspath(path))
    prefix = temp_prefix(path)
    pattern = re.compile(re.escape(prefix) + r"(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
    host, removed = _host(), []
    for tmp in glob.glob(os.path.join(glob.escape(os.path.dirname(path)), glob.escape(prefix) + "*")):
        m = pattern.match(os.path.basename(tmp))
        if m is None:
            continue  # not one of ours (or an old-style name): leave it
        if m["host"] == host:
            stale = int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"]))
        else:
            with contextlib.suppress(FileNotFoundError):
                stale = time.time() - os.path.getmtime(tmp) > FOREIGN_TEMP_MAX_AGE_S
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
                removed.append(tmp)
    return removed


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync ``tmp``, give it the umask's permissions and rename it over ``path``; fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(os.fspath(path))))


def write_failure(path: str | os.PathLike, e: BaseException, temps: tuple[str, ...] = ()) -> WriteError | None:
    """``e`` as the WriteError of writing ``path`` when the environment refused the write (an OSError of
    ``errors.WRITE_FIXES`` in its chain: ``torch.save`` reports a full disk as a RuntimeError whose context is the
    OSError); None when ``e`` is something else. An OSError about another file (``temps``: the temporaries written
    for ``path``, which count as ``path``) is that file's business unless only writing causes it (ENOSPC, EROFS)."""
    if isinstance(e, LkAblateError):
        return None
    os_error = os_error_in(e)
    if os_error is None:
        return None
    names = {os.path.abspath(os.fspath(p)) for p in (path, *temps)}
    named = os_error.filename is not None and os.path.abspath(os.fsdecode(os_error.filename)) in names
    if not (named or os_error.filename is None or os_error.errno in WRITE_ONLY_ERRNOS):
        return None
    err = WriteError(write_error_line(path, os_error))  # one argument: str(err) is the line itself
    err.errno = os_error.errno
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path`` for a writer that needs a file name (np.save, FFCV's writer);
    on a clean exit the file is published at ``path``, on an error it is removed. ``suffix`` ends the temporary
    name (``np.save`` appends ``.npy`` unless the name ends with it). A write the environment refuses raises
    WriteError (one line naming ``path`` and the fix)."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    tmp = ""
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix(path)}{_host()}-{os.getpid()}-", suffix=suffix, dir=folder)
        os.close(fd)
    except OSError as e:
        raise (write_failure(path, e) or e) from e
    try:
        yield tmp
        publish(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        failure = write_failure(path, e, temps=(tmp,))
        if failure is not None:
            raise failure from e
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` atomically once ``write`` returns."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically; ``torch.save`` streams into the file (no second in-memory copy)."""
    import torch  # lazy: the bottom layer's text/JSON writers do not import torch

    atomic_write(path, lambda f: torch.save(obj, f))



# --- checks before long work ---------------------------------------------------------------------------------------
def _refuse(path: str | os.PathLike, what: str, reason: str, hint: str) -> WriteError:
    return WriteError(f"cannot write {what} {path}: {reason}" + (f"; {hint}" if hint else ""))


def check_writable(path: str | os.PathLike, what: str = "output file", hint: str = "",
                   need_bytes: int = 0, lock: bool = False) -> Path:
    """Before long work: ``path`` can be written as a file (returns it absolute), else one WriteError line naming
    it, the reason and the fix (``hint``: e.g. which option chooses another path).

    Checked: ``path`` is not a folder (nor a symbolic link to one); its folder exists (created here otherwise, as the
    writer would) and a file can be created in it (a probe file, removed at once: this catches read-only file
    systems, permissions and ACLs that mode bits do not show); with ``need_bytes``, that much space is free there;
    with ``lock`` (a file updated under ``locked``), its lock file is not a planted symbolic link or other non-file.
    """
    path = Path(os.path.abspath(os.fspath(path)))
    if path.is_dir():
        raise _refuse(path, what, "it is a folder", f"give a file path{'; ' + hint if hint else ''}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise _refuse(path, what, "a part of its folder path is a file, not a folder",
                      f"fix the path{'; ' + hint if hint else ''}") from None
    except OSError as e:
        raise _refuse(path, what, f"its folder {folder} cannot be created: {e.strerror}", hint) from e
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{temp_prefix(path)}{_host()}-{os.getpid()}-", dir=folder)
        try:
            os.write(fd, b"\0")  # a full tmpfs creates the empty file and refuses the first byte
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)
    except OSError as e:
        raise _refuse(path, what, f"{e.strerror} in {folder} (errno {errno.errorcode.get(e.errno, e.errno)})",
                      hint or "choose a writable location") from e
    if need_bytes:
        check_free_space(folder, need_bytes, f"{what} {path}", hint)
    lock_file = path.with_name(path.name + ".lock")
    if lock and os.path.lexists(lock_file) and not stat.S_ISREG(os.lstat(lock_file).st_mode):
        raise _refuse(path, what, f"its lock file {lock_file} is a "
                      f"{'symbolic link' if lock_file.is_symlink() else 'folder or special file'}, not one lk_ablate "
                      "made", "remove it (lk_ablate creates its lock files itself and removes them after each update)")
    return path


def check_free_space(folder: str | os.PathLike, need_bytes: int, what: str, hint: str = "") -> int:
    """Raise WriteError unless ``need_bytes`` are free (for this user) on ``folder``'s file system; returns the free
    bytes. ``what`` names what needs the space (e.g. "a checkpoint of 1.2 GB in runs/k31/checkpoints")."""
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise WriteError(f"not enough space for {what}: it needs about {_size(need_bytes)} and {folder} has "
                         f"{_size(free)} free; free space there or write to another file system"
                         + (f"; {hint}" if hint else ""))
    return free


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# --- one writer at a time --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of ``path`` (between processes, on this host's view of the
    file system): ``<path>.lock``, an empty file created beside it and removed on release.

    The lock file is opened with ``O_NOFOLLOW`` and must be a regular file: a symbolic link planted under that name
    in a shared folder (``m.robustness.json.lock -> /any/path``) is refused with one line instead of creating or
    opening its target with the runner's rights. Removing the file on release is safe for the next holder: a
    process that opened the old file before it was removed sees, once it holds the lock, that the name now points
    elsewhere (or nowhere) and locks the current file instead.
    """
    import fcntl  # lazy: POSIX only, needed by read-modify-write updates alone

    lock = Path(os.fspath(path))
    lock = lock.with_name(lock.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (write_failure(lock, e) or e) from e
    for _attempt in range(1000):  # each retry means another process removed the file we waited on
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise WriteError(f"refusing to use the lock file {lock}: it is a symbolic link (to "
                                 f"{os.readlink(lock)}), not a lock file of lk_ablate; remove it (lk_ablate creates "
                                 "its lock files itself and removes them after each update)") from None
            raise (write_failure(lock, e) or e) from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise WriteError(f"refusing to use the lock file {lock}: it is not a regular file; remove it")
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.lstat(lock)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed the file we waited on: lock the current one
    else:
        raise WriteError(f"cannot lock {lock}: the file changed under each of 1000 attempts; remove it if no other "
                         "lk_ablate process is updating the results")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still holding it: a waiter re-checks the name once it gets the lock
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (created with the umask's mode), never through a symbolic link planted under that
    name (``O_NOFOLLOW``: ELOOP, reported as WriteError) and in one ``write`` call (lines of concurrent writers do
    not interleave)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, file_mode())
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as e:
        raise (write_failure(path, e) or e) from e


# --- reading ---------------------------------------------------------------------------------------------------------
def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """A YAML file's content (safe loader); a missing file, a syntax error or an unknown tag (``!!python/...``) is one
    ConfigError line naming the file and the place."""
    import yaml  # lazy: the writers above do not need it

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"YAML error in {path}{where}: {problem}") from None
