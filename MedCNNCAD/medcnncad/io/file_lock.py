"""An exclusive lock on a file, between processes (and between open handles of one process), for read-modify-write
of a shared file such as a case library's index."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

__all__ = ["exclusive_lock"]


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (created when absent) for the block, waiting for any other
    holder; yields True. Where the file cannot be created or the file system cannot lock (a cluster file system
    mounted without locks) the block runs unlocked and the context yields False."""
    handle = None
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - closed below, after the lock is released
        _lock(handle.fileno(), True)
    except OSError:
        if handle is not None:
            handle.close()
        handle = None
    try:
        yield handle is not None
    finally:
        if handle is not None:
            with suppress(OSError):  # closing the file releases the lock anyway
                _lock(handle.fileno(), False)
            handle.close()


def _lock(fd: int, take: bool) -> None:
    """Take (blocking) or release an exclusive lock on an open file: ``fcntl.flock`` on POSIX, the first byte with
    ``msvcrt.locking`` on Windows (whose blocking mode gives up after 10 s with EDEADLOCK: then it is tried again;
    any other error is raised)."""
    if sys.platform == "win32":
        os.lseek(fd, 0, os.SEEK_SET)
        if not take:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            return
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError as error:
                if error.errno not in (errno.EDEADLOCK, errno.EACCES):
                    raise
    else:
        fcntl.flock(fd, fcntl.LOCK_EX if take else fcntl.LOCK_UN)
