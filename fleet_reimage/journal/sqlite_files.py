"""The SQLite journal's files as files of our own: the database and its ``-wal``/``-shm``.

A journal often sits in a shared folder (the default is ``./fleet-reimage.db``), so before
SQLite opens anything (see ``safefiles`` for the threats):

- the journal must be a regular file with one link, not a symbolic link or a FIFO; to write
  it, it must also be ours: a journal someone else created would receive our plan and every
  request, and they could read it;
- ``-wal`` and ``-shm``, where they exist, likewise (SQLite would follow a link there);
- the file's identity (device, inode) is noted, and checked again once SQLite has opened it,
  so a name swapped between our check and SQLite's open is caught;
- modes are narrowed to 0600 through a descriptor of our own, never by name.

Closing any ordinary descriptor of a file drops every POSIX lock this process holds on it,
SQLite's included (a reader of the same journal in this process, say). So the journal is
opened (to read its header) only before this process's writer opens it, the sidecars are
checked by name (``lstat``) without opening them, and modes are changed through ``O_PATH``
descriptors, whose close drops no lock. Blocking: callers run these off the event loop.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fleet_reimage.journal import sqlite_schema as schema
from fleet_reimage.journal.model import JournalError
from fleet_reimage.safefiles import UnsafeFile, check_own, check_path, open_own

SIDECARS = ("-wal", "-shm")

Identity = tuple[int, int]  # (st_dev, st_ino)
_PATH_ONLY = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC


def check_journal(path: Path, location: str, *, writing: bool) -> Identity | None:
    """Check the journal file (if any) and its header; its identity, or None if missing.

    Refused (``JournalError``): a link, a FIFO or other non-regular file, a hard-linked file,
    for writing someone else's file; junk that cannot be a SQLite database."""
    try:
        fd = open_own(path, os.O_RDONLY, "the journal", owned=writing)
    except FileNotFoundError:
        return None
    except UnsafeFile as exc:
        raise JournalError(str(exc)) from None
    except OSError as exc:
        raise JournalError(f"cannot read the journal {location}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        header = os.pread(fd, schema.HEADER_SIZE, 0)
    finally:
        os.close(fd)
    schema.check_header(header, location)
    return info.st_dev, info.st_ino


def check_sidecars(path: Path, *, writing: bool) -> None:
    """Refuse a ``-wal``/``-shm`` that is a link, not a regular file, hard-linked or, for
    writing, not ours (checked by name, without opening: see the module docstring)."""
    for suffix in SIDECARS:
        try:
            check_path(path.with_name(path.name + suffix), "the journal's file", owned=writing)
        except UnsafeFile as exc:
            raise JournalError(str(exc)) from None


def narrow_modes(path: Path) -> None:
    """The journal and its sidecars to 0600, if ours and wider (a journal created by something
    else, a sidecar left by a reader under another umask; SQLite gives new ones the
    journal's mode). Through an ``O_PATH`` descriptor: it follows no link, and closing it
    leaves SQLite's locks alone."""
    for suffix in ("", *SIDECARS):
        with contextlib.suppress(OSError, UnsafeFile):
            fd = os.open(path.with_name(path.name + suffix), _PATH_ONLY)
            try:
                info = os.fstat(fd)
                check_own(info, path, "the journal")
                if info.st_mode & 0o777 != 0o600:
                    os.chmod(f"/proc/self/fd/{fd}", 0o600)  # fchmod refuses O_PATH descriptors
            finally:
                os.close(fd)


def check_same_file(path: Path, identity: Identity | None, location: str) -> None:
    """After SQLite opened ``path``: it is still the file we checked (not swapped meanwhile)."""
    try:
        info = os.lstat(path)
        check_own(info, path, "the journal", owned=False)
    except (OSError, UnsafeFile) as exc:
        raise JournalError(f"the journal {location} changed while it was opened: {exc}") from exc
    if identity is not None and (info.st_dev, info.st_ino) != identity:
        raise JournalError(
            f"the journal {location} was replaced by another file while it was opened: "
            "refused. Is someone else writing in this folder?"
        )
