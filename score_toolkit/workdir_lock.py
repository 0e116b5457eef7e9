"""One writer per workdir: an advisory `fcntl` lock on `<workdir>/.lock`, held for a run's lifetime.

The kernel releases the lock when its holder's process ends however it ends (`kill -9` included), so a
lock is never left stuck; the file itself stays and says who held it last. A second `train`, `eval`,
`sample` or `export` on the same workdir (or a second torchrun job's rank 0) finds the lock taken and
stops before it writes anything, naming the workdir and the holder's pid.
"""
from __future__ import annotations

import errno
import fcntl
import os
from typing import Optional

from score_toolkit.errors import UserError

LOCK_NAME = ".lock"


class WorkdirBusyError(UserError):
    """Another process holds the workdir's lock."""


class WorkdirLock:
    """An exclusive lock on a workdir, taken by `acquire` and given back by `release` or at exit."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self) -> "WorkdirLock":
        """Take the lock, or raise WorkdirBusyError naming the holder's pid (never waits)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise WorkdirBusyError(f"workdir {os.path.dirname(self.path)} is in use by another run "
                                   f"(pid {holder or 'unknown'}); wait for it to finish, or pass another --workdir") from None
        # Ours now: record the pid for the next one to find (the lock, not the text, is what excludes).
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
