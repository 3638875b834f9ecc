"""The single-writer lock: an exclusive ``flock`` on a sidecar file beside the journal.

The sidecar (``<journal>.lock``, mode 0600) holds the owner's "host pid run" so that a second
writer can say who is in the way. ``flock`` belongs to the open file description, so it also
excludes a second opener inside the same process, and the kernel drops it when the holder
dies, so a crashed run never leaves a stale lock behind (the text it leaves is overwritten by
the next holder).

The sidecar is never deleted: unlinking a lock file while another process has it open lets two
processes each lock a different inode and both believe they are the only writer.

Blocking calls: every function here touches the file system; callers run them off the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from fleet_reimage.journal.model import JournalBusy, JournalError
from fleet_reimage.safefiles import UnsafeFile, open_own

_OWNER_READ_TRIES = 20  # the holder writes its name just after locking; give it a moment


class WriterLock:
    """An acquired lock; :meth:`release` (idempotent) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, owner: str, journal: str) -> WriterLock:
        """Lock ``path`` (created 0600) or raise ``JournalBusy`` naming the current holder."""
        try:
            # No O_TRUNC: the holder's name must survive a contender opening the file. Ours
            # only: not a link, a FIFO, a hard link or another user's file (see safefiles),
            # since it is truncated, written and chmod-ed below.
            fd = open_own(path, os.O_RDWR | os.O_CREAT, "the journal's lock file")
        except UnsafeFile as exc:
            raise JournalError(str(exc)) from None
        except OSError as exc:
            raise JournalError(f"cannot create the lock file {path}: {exc.strerror}") from exc
        _fix_mode(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = _read_owner(fd)
            os.close(fd)
            raise JournalBusy(
                f"journal {journal} is in use by {holder or 'another process'} (lock {path}); "
                "wait for that run to end, or stop it, then try again"
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot lock {path}: {exc.strerror}") from exc
        lock = cls(path, fd)
        try:
            lock.set_owner(owner)
        except BaseException:
            lock.release()
            raise
        return lock

    def set_owner(self, owner: str) -> None:
        """Record who holds the lock, for the message a contender shows."""
        if self._fd is None:
            raise JournalError(f"the lock {self.path} is no longer held")
        data = (owner.replace("\n", " ") + "\n").encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError as exc:
            raise JournalError(f"cannot write the lock file {self.path}: {exc.strerror}") from exc

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def _fix_mode(fd: int) -> None:
    # A lock file left by an older tool or created under another umask may be wider than 0600
    # (it is ours: open_own checked).
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)


def _read_owner(fd: int) -> str | None:
    for _ in range(_OWNER_READ_TRIES):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.005)  # the holder is between flock() and writing its name
    return None
