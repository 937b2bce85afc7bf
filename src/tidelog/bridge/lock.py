"""The log-side lock of a named bridge: one mirror (or ingester) per name and log at a time.

Owns the files `bridges/<kind>-<name>.lock` in the log's directory and the flock on them (the
kernel releases it when the holder dies, so a kill -9 never leaves a stale lock). A second
bridge with the same kind and name on the same log gets BridgeLockedError at start, at once.
A mirror also takes `mirror-to-<digest of its target>`: two mirrors of one log to one target
under different names would both ship every record (mirror.py).
"""

from __future__ import annotations

import fcntl
import os
import re
from typing import Optional

from tidelog.errors import TidelogError

__all__ = ["BridgeLock", "BridgeLockedError", "check_bridge_name", "LOCK_DIR"]

LOCK_DIR = "bridges"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


class BridgeLockedError(TidelogError):
    """Another bridge of the same kind and name holds this log's bridge lock."""


def check_bridge_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"name {name!r}: use 1-200 of [A-Za-z0-9._-]")
    return name


class BridgeLock:
    """flock on `<log>/bridges/<kind>-<name>.lock`, taken at construction."""

    def __init__(self, log_path: str, kind: str, name: str,
                 busy: Optional[str] = None) -> None:
        """`busy`: the error's text when the lock is held (default: another KIND named NAME)."""
        check_bridge_name(name)
        d = os.path.join(log_path, LOCK_DIR)
        os.makedirs(d, exist_ok=True)
        self.path = os.path.join(d, f"{kind}-{name}.lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise BridgeLockedError(busy or f"another {kind} named {name!r} is running on "
                                    f"{log_path!r} (it holds {self.path!r}); stop it, or "
                                    f"choose another --name") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BridgeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
