"""Opening the files a run writes (journal, its lock, logs, events) as files of our own.

These files often live in shared folders (a team's ops directory, ``/tmp``), where another
user can plant a symbolic link named like our file, pointing at something of theirs or of
root's, or a FIFO that makes every ``open`` hang, or a journal of their own that would then
receive our plan and every request. So each of these files is opened:

- without following a symbolic link at its name (``O_NOFOLLOW``): a link is refused;
- without blocking (``O_NONBLOCK``, cleared once open), so a FIFO cannot hang us; and then
- checked on the open descriptor (``fstat``, no race with the name): a regular file, owned by
  the user we run as, with one link (a hard link to someone else's file is refused too).

Only then is anything truncated, written or ``chmod``-ed, through that descriptor. The
refusal is ``UnsafeFile`` (exit 2), saying what was found and what to do.

Limits: only the last component of the path is not followed (a folder on the way may be a
link, as ``/tmp`` often is), and files that another program opens by name after our check
(SQLite opening the journal) are checked again afterwards, not atomically; a folder that
other users may write, without the sticky bit, is still unsafe. Blocking: every function
here touches the file system; callers run them off the event loop.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from fleet_reimage.errors import RefusedError


class UnsafeFile(RefusedError):
    """A file we were to open is not a regular file of our own (exit 2); says what it is."""


_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_own(info: os.stat_result, path: str | Path, what: str, *, owned: bool = True) -> None:
    """Refuse (``UnsafeFile``) unless ``info`` is a regular file with one link and, with
    ``owned``, belongs to the user we run as."""
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(
            f"{what} {path} is {_kind(info.st_mode)}, not a regular file: refused. "
            "Name a regular file (or a path where none exists yet)"
        )
    if owned and info.st_uid != os.geteuid():
        raise UnsafeFile(
            f"{what} {path} belongs to another user (uid {info.st_uid}), so it may have been "
            "put there for us to write into: refused. Use a file of your own, in a folder "
            "only you can write"
        )
    if info.st_nlink != 1:
        raise UnsafeFile(
            f"{what} {path} has {info.st_nlink} hard links, so writing it would write "
            "another file too: refused. Use a file of your own with a single link"
        )


def open_own(
    path: str | Path, flags: int, what: str, *, mode: int = 0o600, owned: bool = True
) -> int:
    """``os.open(path, flags, mode)`` of a regular file of ours (see the module docstring).

    ``owned=False`` (reading only) accepts another user's file. Returns a blocking
    descriptor. Raises ``UnsafeFile`` for anything else, ``OSError`` for the usual reasons
    (missing, permission)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(
                f"{what} {path} is a symbolic link: refused (it could point at any file). "
                "Name the file itself"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise UnsafeFile(
                f"{what} {path} is a FIFO (named pipe), not a regular file: refused"
            ) from None
        raise
    try:
        check_own(os.fstat(fd), path, what, owned=owned)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_path(path: str | Path, what: str, *, owned: bool = True) -> os.stat_result | None:
    """``check_own`` of whatever is at ``path`` now (not following a link); None if nothing."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    check_own(info, path, what, owned=owned)
    return info
