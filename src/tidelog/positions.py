"""Named subscriber positions (and replayers' checkpoints) in an LMDB environment inside the log
directory: `<log>/positions/`. py-lmdb with its safe defaults (sync and metasync on): a write
transaction is on stable storage when its commit returns. Any process may commit (LMDB locks).

Environments are opened, shared between the Logs of this process, grown, handled across fork()
and opened read-only where this process may not write by tidelog.lmdbenv, which also turns
py-lmdb's errors into tidelog errors.
"""

from __future__ import annotations

import os
import struct
import time
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

from tidelog import lmdbenv
from tidelog.errors import TidelogError

__all__ = ["PositionStore", "POSITIONS_DIR"]

POSITIONS_DIR = "positions"
MAX_DBS = 64                   # positions, checkpoints, digests, and one per replayer view
POSITION = struct.Struct("<qq")        # position, commit time (ns since the epoch)
MAX_NAME_BYTES = 400           # LMDB keys are at most 511 bytes; leave room for prefixes
WHAT = "the positions store"
T = TypeVar("T")


def check_name(name: object, what: str = "name", *, existing: bool = False) -> bytes:
    """The UTF-8 key of subscriber name `name`, or TypeError/ValueError naming `what`.

    A name holds no control characters (C0, DEL, C1: a tab or a newline would forge rows in
    listings). `existing=True` lets through a name that only looks up or deletes what is stored,
    so that one stored by an older tidelog can still be read and deleted (still no NUL)."""
    if not isinstance(name, str):
        raise TypeError(f"{what}: expected a str, not {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what}: must be valid Unicode; {name!r} holds a lone surrogate") \
            from None
    if not raw:
        raise ValueError(f"{what}: must not be empty")
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"{what}: at most {MAX_NAME_BYTES} bytes in UTF-8, not {len(raw)}")
    if "\0" in name:
        raise ValueError(f"{what}: must not contain NUL")
    if not existing:
        bad = sorted({ch for ch in name if unicodedata.category(ch) == "Cc"})
        if bad:
            shown = ", ".join(f"U+{ord(ch):04X} {ch!r}" for ch in bad)
            raise ValueError(f"{what}: must not contain control characters; {name!r} holds "
                             f"{shown}")
    return raw


class PositionStore:
    """The positions environment of one log, shared by every Log of this process on it."""

    def __init__(self, log_path: str, create: bool = True) -> None:
        self.path = os.path.join(log_path, POSITIONS_DIR)
        made = False
        if not os.path.isdir(self.path):
            if not create:
                raise FileNotFoundError(f"{self.path}: no positions stored for this log")
            try:
                os.makedirs(self.path, exist_ok=True)
            except OSError as e:
                raise TidelogError(f"{self.path}: cannot create the positions store: "
                                   f"{e.strerror}") from e
            made = True
        self._closed = False
        self._pid: int | None = None
        self._shared: lmdbenv.LmdbEnv
        self._acquire()
        if self._shared.writable:
            # the directory entries of a new store (and of LMDB's files in it) must be durable
            # before a commit counts: two directory fsyncs per open store
            lmdbenv.fsync_dir(self.path)
            if made:
                lmdbenv.fsync_dir(log_path)

    @staticmethod
    def exists(log_path: str) -> bool:
        """Whether the log at `log_path` has a positions store with data (reading creates
        nothing, and a store this process could not create counts as none)."""
        path = os.path.join(log_path, POSITIONS_DIR)
        return os.path.isdir(path) and (os.path.exists(os.path.join(path, "data.mdb"))
                                        or not os.access(path, os.R_OK | os.X_OK)
                                        or os.access(path, os.W_OK))

    def _acquire(self) -> None:
        self._shared = lmdbenv.acquire(self.path, what=WHAT, max_dbs=MAX_DBS)
        self._pid = os.getpid()
        if self._shared.writable:
            self._shared.db("positions")    # now, before any transaction that uses it

    @property
    def shared(self) -> lmdbenv.LmdbEnv:
        """The tidelog.lmdbenv.LmdbEnv (a forked child gets its own on first use)."""
        if self._pid != os.getpid():
            if self._closed:
                raise TidelogError(f"{self.path}: the positions store is closed")
            self._acquire()
        return self._shared

    @property
    def env(self) -> Any:
        """The py-lmdb Environment."""
        return self.shared.raw

    @property
    def writable(self) -> bool:
        return self.shared.writable

    @property
    def positions_db(self) -> Any:
        return self.db("positions")

    def db(self, name: str) -> Any:
        """The handle of a named LMDB database of this environment (created on first use where
        this process may write), valid in this process."""
        return self.shared.db(name)

    def has_db(self, name: str) -> bool:
        return self.shared.has_db(name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return
        lmdbenv.release(self._shared)

    # -- transactions: fn(txn) run in one (a write is retried in a new one when the map grew)

    def read(self, fn: Callable[[Any], T]) -> T:
        return self.shared.read(fn)

    def write(self, fn: Callable[[Any], T]) -> T:
        """fn(txn) in a write transaction, committed (on stable storage) when this returns."""
        return self.shared.write(fn)

    # -- positions (a transaction may be passed to share it, e.g. with a replayer's checkpoint)

    def get(self, name: str, txn: Any = None) -> tuple[int, int] | None:
        """(position, commit time ns) of subscriber `name`, or None."""
        key = check_name(name, existing=True)
        if txn is None:
            if not self.writable and not self.has_db("positions"):
                return None
            raw = self.read(lambda t: t.get(key, db=self.positions_db))
        else:
            raw = txn.get(key, db=self.positions_db)
        return None if raw is None else POSITION.unpack(raw)

    def put(self, name: str, position: int, txn: Any = None) -> None:
        """Store `position` for `name`: durable when this (or the given) transaction commits."""
        key = check_name(name)
        value = POSITION.pack(position, time.time_ns())
        db = self.positions_db
        if txn is not None:
            txn.put(key, value, db=db)
            return
        self.write(lambda t: t.put(key, value, db=db))

    def delete(self, name: str, txn: Any = None) -> bool:
        """Forget subscriber `name`; True if it had a position."""
        key = check_name(name, existing=True)
        if txn is not None:
            return bool(txn.delete(key, db=self.positions_db))
        db = self.positions_db
        return bool(self.write(lambda t: t.delete(key, db=db)))

    def all(self) -> dict[str, tuple[int, int]]:
        """{name: (position, commit time ns)} of every subscriber."""
        if not self.writable and not self.has_db("positions"):
            return {}
        # handles are looked up inside the transaction: a lock-less reader's copy may be new
        return self.read(lambda t: {k.decode("utf-8"): POSITION.unpack(v)
                                    for k, v in t.cursor(db=self.positions_db)})
