"""One writer per output directory: an exclusive ``fcntl.flock`` on ``DIR/.lock``, held until the process
exits or the lock is released (the OS drops it when the holder dies, SIGKILL included), the holder's pid
written in the file so that a second writer is refused by name."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from valleysim.errors import UserInputError

__all__ = ["DirectoryLock"]


class DirectoryLock:
    """``DirectoryLock(path, what).acquire()`` or ``with DirectoryLock(...):``; a read-only directory is not
    locked (nothing can be written there, so there is nothing to protect)."""

    def __init__(self, path: str | Path, what: str = "this directory"):
        self.path, self.what, self._fh = Path(path), what, None

    def acquire(self) -> "DirectoryLock":
        if self._fh is not None:
            return self
        lock = self.path / ".lock"
        try:
            fh = open(lock, "a+")
        except PermissionError:
            return self
        except OSError as err:
            if err.errno == errno.EROFS:
                return self
            raise
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise UserInputError(
                f"{self.path} is in use by another {self.what} (pid {holder}); wait for it to finish or use "
                "another output directory"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
