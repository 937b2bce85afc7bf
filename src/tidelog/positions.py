"""Named subscriber positions (and replayers' checkpoints) in an LMDB environment inside the log
directory: `<log>/positions/`. py-lmdb with its safe defaults (sync and metasync on): a write
transaction is on stable storage when its commit returns. Any process may commit (LMDB locks).

LMDB must not be opened twice by one process at once (its locks are per process), so every Log of
this process on the same directory shares one environment, reference-counted here; a child made by
fork() opens its own.
"""

import os
import struct
import threading
import time
import unicodedata

import lmdb

from tidelog.errors import TidelogError

__all__ = ["PositionStore", "POSITIONS_DIR"]

POSITIONS_DIR = "positions"
MAP_SIZE = 1 << 36             # address space only: on Linux the file grows with the data
MAX_DBS = 64                   # positions, checkpoints, digests, and one per replayer view
POSITION = struct.Struct("<qq")        # position, commit time (ns since the epoch)
MAX_NAME_BYTES = 400           # LMDB keys are at most 511 bytes; leave room for prefixes

_lock = threading.Lock()
_envs = {}                     # (pid, st_dev, st_ino) -> [lmdb.Environment, refcount]


def _after_fork_in_child():
    """A forked child must not use its parent's environments (LMDB's rule): close them (that
    clears only reader slots of this pid) and let each store open a fresh one on next use."""
    global _lock
    _lock = threading.Lock()
    for env, _ in list(_envs.values()):
        try:
            env.close()
        except Exception:
            pass
    _envs.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(name, what="name", *, existing=False):
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

    def __init__(self, log_path, create=True):
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
        self._pid = None
        self._acquire()
        # the directory entries of a new store (and of LMDB's files in it) must be durable
        # before a commit counts: two directory fsyncs per open store
        _fsync_dir(self.path)
        if made:
            _fsync_dir(log_path)

    def _acquire(self):
        st = os.stat(self.path)
        key = (os.getpid(), st.st_dev, st.st_ino)
        with _lock:
            entry = _envs.get(key)
            if entry is None:
                try:
                    env = lmdb.open(self.path, map_size=MAP_SIZE, max_dbs=MAX_DBS, subdir=True,
                                    sync=True, metasync=True, lock=True, create=True,
                                    readahead=False)
                except lmdb.Error as e:
                    raise TidelogError(f"{self.path}: cannot open the positions store: {e}") from e
                try:
                    env.reader_check()        # free reader slots left by killed processes
                except lmdb.Error:
                    pass
                entry = _envs[key] = [env, 0]
            entry[1] += 1
        self._key = key
        self._pid = key[0]
        self._env = entry[0]
        self._dbs = {}
        self.positions_db = self.db("positions")

    @property
    def env(self):
        """The LMDB environment (a forked child gets its own on first use)."""
        if self._pid != os.getpid():
            if self._closed:
                raise TidelogError(f"{self.path}: the positions store is closed")
            self._acquire()
        return self._env

    def db(self, name):
        """A named LMDB database of this environment (created on first use)."""
        env = self.env
        d = self._dbs.get(name)
        if d is None:
            d = self._dbs[name] = env.open_db(name.encode("utf-8"), create=True)
        return d

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return
        with _lock:
            entry = _envs.get(self._key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _envs[self._key]
                entry[0].close()

    # -- positions (a transaction may be passed to share it, e.g. with a replayer's checkpoint)

    def get(self, name, txn=None):
        """(position, commit time ns) of subscriber `name`, or None."""
        key = check_name(name, existing=True)
        if txn is None:
            with self.env.begin(db=self.positions_db) as t:
                raw = t.get(key, db=self.positions_db)
        else:
            raw = txn.get(key, db=self.positions_db)
        return None if raw is None else POSITION.unpack(raw)

    def put(self, name, position, txn=None):
        """Store `position` for `name`: durable when this (or the given) transaction commits."""
        key = check_name(name)
        value = POSITION.pack(position, time.time_ns())
        if txn is not None:
            txn.put(key, value, db=self.positions_db)
            return
        with self.env.begin(write=True) as t:
            t.put(key, value, db=self.positions_db)

    def delete(self, name, txn=None):
        """Forget subscriber `name`; True if it had a position."""
        key = check_name(name, existing=True)
        if txn is not None:
            return txn.delete(key, db=self.positions_db)
        with self.env.begin(write=True) as t:
            return t.delete(key, db=self.positions_db)

    def all(self):
        """{name: (position, commit time ns)} of every subscriber."""
        with self.env.begin(db=self.positions_db) as t:
            return {k.decode("utf-8"): POSITION.unpack(v) for k, v in t.cursor()}

    def write(self):
        """A write transaction (a context manager): commit on success, abort on error."""
        return self.env.begin(write=True)
