"""LMDB environments of this process: the one place that opens them (read-write, or read-only
where this process may not write), maps and grows them, shares them between the Logs of one
process, abandons them in a fork() child, and translates py-lmdb's errors into tidelog errors.
Used by the positions store (positions, replayers' checkpoints and views) and by ephemeral
views (a temporary environment outside the log).

Address space. A map starts small (INITIAL_MAP) and doubles when a write transaction fills it
(MapFullError: the transaction is aborted, the map grown, the transaction run again), or when
another process grew the file beyond this process's map (MapResizedError). Growing replaces the
mapping, which invalidates every transaction of the environment in this process, so it waits
until none is open (tidelog begins every transaction here and counts them).

Read-only. Where this process may not write the store (a log in a read-only directory, files of
another user), the environment is opened read-only. Without write access to LMDB's lock file
too, a reader would have no reader slot to protect its snapshot from writers: a writer may reuse
the pages it walks, which gives torn reads and can even trip LMDB's assertions (abort()). So
such a reader never walks the live file: it copies it (a plain sequential read, retried until no
writer committed twice during the copy: only then could a copied page have been reused) into a
private temporary directory and reads the copy, taken again when a writer committed since and
no transaction of the copy is open. Its reads are consistent snapshots, at most as old as the
last transaction it began.

fork(). LMDB forbids using a parent's environment in a child, and py-lmdb refuses to open one
twice in a process; closing it in the child would abort the transactions the child inherited,
which clears the *parent's* reader slots (shared memory) and lets writers reuse pages the parent
is reading. So a child closes an inherited environment only when no transaction of it was open
at the fork (then closing touches nothing the parent uses: py-lmdb keeps no spare transactions,
max_spare_txns=0), and reopens it on next use; otherwise it drops the environment without
closing it, and using the store in that child raises TidelogError.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb

try:    # py-lmdb >= 3 imports this helper at an environment's first open; import it now, so a
    # fork() while another thread opens one cannot leave the child on the import lock, and a
    # process that later drops privileges (or empties sys.path) still opens environments
    import lmdb._envid  # noqa: F401
except ImportError:     # older py-lmdb: nothing imported late
    pass

from tidelog.errors import LogFullError, TidelogError

__all__ = ["LmdbEnv", "StoreFullError", "acquire", "temporary", "is_map_full"]

INITIAL_MAP = 1 << 20          # bytes of address space a new map starts with
MAX_MAP = 1 << 40              # a map grows (doubling) up to this
GROW_WAIT = 60.0               # seconds a grow waits for other threads' transactions to end
NOLOCK_RETRIES = 1000          # copies a lock-less reader makes at most for one snapshot

T = TypeVar("T")

_lock = threading.Lock()
_shared: dict[tuple[int, int, int], LmdbEnv] = {}                   # (pid, st_dev, st_ino) -> LmdbEnv shared by this process
_all: weakref.WeakSet[LmdbEnv] = weakref.WeakSet()       # every open LmdbEnv of this process (for the fork hook)
_abandoned: list[tuple[Any, Any]] = []                # environments a fork child inherited busy: kept, never closed
_busy_inherited: set[tuple[int, int]] = set()        # (st_dev, st_ino) of those: unusable in this process
_pid = os.getpid()             # this process (os.getpid() is a system call; fork updates this)


class StoreFullError(TidelogError):
    """An LMDB store cannot take more data (its map cannot grow further)."""


def is_map_full(exc: BaseException) -> bool:
    """True for py-lmdb's MapFullError (raised inside a machine's apply) and its translation."""
    return isinstance(exc, (lmdb.MapFullError, StoreFullError))


def _after_fork_in_child() -> None:
    global _lock, _pid
    _lock = threading.Lock()
    _pid = os.getpid()
    for env in list(_all):
        env._forked()
    _shared.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def fsync_dir(path: str) -> None:
    """Make a directory's entries durable (a store directory just created, and its parent)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pow2_at_least(n: int) -> int:
    size = INITIAL_MAP
    while size < n:
        size <<= 1
    return size


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def _disk_full(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


class LmdbEnv:
    """One LMDB environment of this process: `read(fn)` and `write(fn)` run fn(txn) in a
    transaction (growing the map and retrying as needed); `begin_write`/`end` hold a write
    transaction across calls (a view between checkpoints); `reader(db)` a read transaction for
    the caller to hold (a context manager). Every lmdb error leaves as a TidelogError."""

    def __init__(self, path: str, *, what: str, max_dbs: int, durable: bool = True,
                 create: bool = True, max_readers: int = 126) -> None:
        self.path = path
        self.what = what                     # "the positions store", for messages
        self._pid = _pid
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)    # a grow waits on it, and for it
        self._active: dict[int, int] = {}    # thread ident -> transactions open through us
        self._writer: int | None = None      # thread ident holding our write transaction
        self._write_txn: Any = None          # ... and that transaction
        self._growing = False
        self._refs = 0
        self._closed = False
        self._dbs: dict[str, Any] = {}       # name -> handle
        self._key: tuple[int, int, int] | None = None     # acquire()'s key in _shared
        self.raw: Any               # the lmdb.Environment (None while a copy is being made)
        if not os.access(path, os.R_OK | os.X_OK):
            raise TidelogError(f"{path}: cannot read {what}: permission denied")
        data = os.path.join(path, "data.mdb")
        lockf = os.path.join(path, "lock.mdb")
        exists = os.path.exists(data)
        if exists:
            self.writable = (_writable(data) and _writable(lockf) if os.path.exists(lockf)
                             else _writable(data) and _writable(path))
        else:
            self.writable = create and _writable(path)
            if not self.writable:
                raise TidelogError(f"{path}: {what} holds no data and cannot be created here "
                                   f"(no write permission)")
        self.locked = self.writable or _writable(lockf)
        self._max_dbs = max_dbs
        size = _pow2_at_least(2 * (os.path.getsize(data) if exists else 0))
        self._probe: Any = None         # lock-less: the live files, for their meta pages only
        try:
            if self.locked:
                self.raw = lmdb.open(path, map_size=size, max_dbs=max_dbs, subdir=True,
                                     max_readers=max_readers,
                                     readonly=not self.writable, lock=True,
                                     create=self.writable, sync=durable, metasync=durable,
                                     readahead=False, max_spare_txns=0)
            else:
                self.raw = None
                self._copy_dir = tempfile.mkdtemp(prefix="tidelog-ro-")
                self._remove = weakref.finalize(self, _remove_tree, _pid, self._copy_dir)
                self._probe = lmdb.open(path, map_size=size, max_dbs=max_dbs, subdir=True,
                                        readonly=True, lock=False, create=False,
                                        readahead=False, max_spare_txns=0)
                self._copy()
        except (lmdb.Error, OSError) as e:
            key = self._file_key()
            if key is not None and key in _busy_inherited:
                raise TidelogError(
                    f"{path}: {what} was in use (a transaction was open) when this process was "
                    f"forked from its parent; LMDB allows one environment per process, so this "
                    f"child cannot use it. Fork while no transaction is open, or use it in "
                    f"the parent") from e
            raise self.translate(e, "open") from e
        if self.locked and self.writable:
            try:
                self.raw.reader_check()          # free reader slots left by killed processes
            except lmdb.Error:
                pass
        _all.add(self)

    def _copy(self) -> None:
        """(Lock-less reader) copy the live data file, consistently, and open the copy."""
        src = os.path.join(self.path, "data.mdb")
        tmp = os.path.join(self._copy_dir, "data.mdb.new")
        for _ in range(NOLOCK_RETRIES):
            before = self._probe.info()["last_txnid"]
            with open(src, "rb") as f, open(tmp, "wb") as g:
                shutil.copyfileobj(f, g, 1 << 20)
            if self._probe.info()["last_txnid"] <= before + 1:
                break
        else:
            raise TidelogError(f"{self.path}: {self.what}: writers commit too fast to read it "
                               f"without a lock; retry, or read as a user that may write it")
        if self.raw is not None:
            self.raw.close()
            self.raw = None
        self._dbs = {}
        os.replace(tmp, os.path.join(self._copy_dir, "data.mdb"))
        self.raw = lmdb.open(self._copy_dir, map_size=_pow2_at_least(2 * os.path.getsize(src)),
                             max_dbs=self._max_dbs, subdir=True, readonly=True, lock=False,
                             create=False, readahead=False, max_spare_txns=0)
        self._copied = before
        # every named database now: a handle opened after a transaction began is unusable in it
        with self.raw.begin() as txn:
            names = [bytes(k) for k in txn.cursor().iternext(values=False)]
        for key in names:
            try:
                self._dbs[key.decode("utf-8")] = self.raw.open_db(key, create=False)
            except (lmdb.Error, UnicodeDecodeError):
                pass                    # a plain key, not a database

    def _refresh(self) -> None:
        """(Lock-less reader) copy the live file again if a writer committed since, unless a
        transaction of the copy is open."""
        with self._mu:
            if not self._active and self._probe.info()["last_txnid"] != self._copied:
                try:
                    self._copy()
                except (lmdb.Error, OSError) as e:
                    raise self.translate(e, "read") from e

    def _file_key(self) -> tuple[int, int] | None:
        try:
            st = os.stat(os.path.join(self.path, "data.mdb"))
        except OSError:
            return None
        return st.st_dev, st.st_ino

    # ------------------------------------------------------------------ errors

    def translate(self, e: BaseException, doing: str) -> BaseException:
        """A TidelogError (with what to do) for py-lmdb's exception `e`."""
        if isinstance(e, TidelogError):
            return e
        where = f"{self.path}: {self.what}"
        msg = str(e)
        if isinstance(e, lmdb.MapFullError):
            return StoreFullError(
                f"{where} is full at {self.map_size:,} bytes of map and cannot grow further "
                f"({msg}); delete subscribers or replayers it no longer needs")
        if isinstance(e, (lmdb.ReadonlyError,)) or "Permission denied" in msg or (
                "Read-only file system" in msg):
            return TidelogError(f"{where}: cannot {doing}: permission denied (this process may "
                                f"only read it; run as the log's owner to write)")
        if isinstance(e, lmdb.MemoryError) or "Cannot allocate memory" in msg:
            return TidelogError(f"{where}: cannot {doing}: out of memory or address space "
                                f"({msg}); raise `ulimit -v` or close other logs")
        if isinstance(e, lmdb.DbsFullError):
            return TidelogError(f"{where}: cannot {doing}: it holds the most named databases "
                                f"tidelog opens in one store ({self._max_dbs}: one per LmdbView "
                                f"replayer, plus tidelog's own); delete replayers it no longer "
                                f"needs (tidelog.replay.delete_replayer, or `tidelog positions "
                                f"PATH delete NAME`)")
        if isinstance(e, lmdb.ReadersFullError):
            return TidelogError(f"{where}: cannot {doing}: too many readers; close idle "
                                f"processes that read this log")
        if isinstance(e, lmdb.PanicError):
            return TidelogError(f"{where}: cannot {doing}: LMDB stopped after a failed write "
                                f"({msg}); restart the process")
        if "would deadlock" in msg.lower() or "deadlock" in msg.lower():
            return TidelogError(f"{where}: cannot {doing}: this thread already holds its write "
                                f"transaction (an LmdbView replayer between checkpoints?); "
                                f"write from outside apply(), or through the view's txn")
        if "No space left" in msg or (doing.startswith("commit") and _disk_full(self.path)):
            return LogFullError(f"{where}: cannot {doing}: no space left on the device ({msg}); "
                                f"free space and retry (nothing was committed)")
        if "Input/output error" in msg or isinstance(e, lmdb.DiskError):
            return TidelogError(f"{where}: cannot {doing}: I/O error ({msg}); check the disk "
                                f"(full? failing?) and retry (nothing was committed)")
        return TidelogError(f"{where}: cannot {doing}: {msg}")

    # ------------------------------------------------------------------ state

    @property
    def map_size(self) -> int:
        try:
            return int(self.raw.info()["map_size"])
        except lmdb.Error:
            return 0

    def _check(self) -> None:
        if self._pid != _pid:
            raise TidelogError(f"{self.path}: {self.what} was opened by the parent of this "
                               f"forked process; open the log again in this process")
        if self._closed:
            raise TidelogError(f"{self.path}: {self.what} is closed")

    def _enter(self, write: bool) -> None:
        """Count a transaction about to begin (waits while a grow is in progress)."""
        me = threading.get_ident()
        if write and self._writer == me:
            raise TidelogError(
                f"{self.path}: {self.what}: this thread already holds its write "
                f"transaction (an LmdbView replayer between checkpoints: is this a commit "
                f"from its apply()?); a second one would deadlock. Commit cursors from "
                f"outside apply(), or write through the view's txn")
        with self._mu:
            while self._growing and not self._active.get(me):   # (a grow waits for those)
                self._cond.wait()
            self._active[me] = self._active.get(me, 0) + 1
            if write:
                self._writer = me

    def _leave(self, write: bool) -> None:
        me = threading.get_ident()
        with self._mu:
            n = self._active.get(me, 0) - 1
            if n > 0:
                self._active[me] = n
            else:
                self._active.pop(me, None)
            if write and self._writer == me:
                self._writer = None
            if self._growing:
                self._cond.notify_all()

    def _begin(self, write: bool, db: str | None = None) -> Any:
        """A raw transaction, counted; grows the map when another process grew the file."""
        self._check()
        if write and not self.writable:
            raise TidelogError(f"{self.path}: {self.what}: cannot write: permission denied "
                               f"(this process may only read it; run as the log's owner)")
        if self._probe is not None:
            self._refresh()
        for _ in range(64):
            self._enter(write)
            try:
                handle = self.db(db) if isinstance(db, str) else db
                txn = self.raw.begin(write=write, db=handle)
            except lmdb.MapResizedError:
                self._leave(write)
                self.grow(0)
                continue
            except lmdb.Error as e:
                self._leave(write)
                raise self.translate(e, "begin a transaction") from e
            except BaseException:
                self._leave(write)
                raise
            if write:
                self._write_txn = txn
            return txn
        raise TidelogError(f"{self.path}: {self.what}: the map keeps being resized")

    def end(self, txn: Any, commit: bool = False) -> None:
        """Commit (or abort) a transaction from _begin/begin_write; always uncounts it. A child
        of fork() drops its parent's transactions without aborting them."""
        if self._pid != _pid:
            return
        write = txn is self._write_txn
        if write:
            self._write_txn = None
        try:
            if commit:
                try:
                    txn.commit()
                except lmdb.Error as e:
                    if isinstance(e, lmdb.MapFullError):
                        raise
                    raise self.translate(e, "commit") from e
            else:
                txn.abort()
        finally:
            if commit:
                try:
                    txn.abort()                 # a failed commit leaves it to abort; a no-op else
                except lmdb.Error:
                    pass
            self._leave(write)

    def grow(self, at_least: int | None = None) -> None:
        """Double the map (or adopt a size another process set, at_least=0) once no transaction
        of this environment is open in this process."""
        me = threading.get_ident()
        with self._cond:
            before = self.map_size
            while self._growing:
                self._cond.wait()
            if at_least is not None and at_least and self.map_size >= at_least:
                return
            if self.map_size > before:
                return                          # another thread grew it meanwhile
            self._growing = True
            try:
                if self._active.get(me):
                    raise TidelogError(
                        f"{self.path}: {self.what} must grow, but this thread holds one of its "
                        f"transactions open (a read_view() / Replayer.read() transaction?); "
                        f"end it first")
                if not self._cond.wait_for(lambda: not self._active, GROW_WAIT):
                    raise TidelogError(
                        f"{self.path}: {self.what} must grow, but other threads kept its "
                        f"transactions open for {GROW_WAIT:.0f} s; end long read transactions "
                        f"(read_view(), Replayer.read())")
                if at_least == 0:
                    size = _pow2_at_least(2 * os.path.getsize(os.path.join(self.path,
                                                                           "data.mdb")))
                    size = max(size, before)
                else:
                    size = max(before * 2, _pow2_at_least(at_least or 0))
                    if size > MAX_MAP:
                        raise StoreFullError(
                            f"{self.path}: {self.what} is full at {before:,} bytes of map (the "
                            f"most tidelog maps); delete subscribers or replayers it no longer "
                            f"needs")
                try:
                    self.raw.set_mapsize(size)
                except lmdb.Error as e:
                    raise self.translate(e, f"grow its map to {size:,} bytes") from e
            finally:
                self._growing = False
                self._cond.notify_all()

    def reserve(self, nbytes: int) -> None:
        """Grow the map now if fewer than `nbytes` of it are free: for a caller about to run, in
        a write transaction, code that cannot be run again after a full map (a `with` block)."""
        self._check()
        if not self.writable:
            return
        try:
            info = self.raw.info()
            used = (info["last_pgno"] + 1) * self.raw.stat()["psize"]
        except lmdb.Error as e:
            raise self.translate(e, "read its size") from e
        if info["map_size"] - used < nbytes:
            self.grow(used + nbytes)

    # ------------------------------------------------------------------ transactions

    def db(self, name: str, txn: Any = None) -> Any:
        """The handle of named database `name` (created on first use when writable)."""
        d = self._dbs.get(name)
        if d is None:
            self._check()
            key = name.encode("utf-8")
            if self._probe is not None:
                raise TidelogError(f"{self.path}: {self.what} has no database {name!r}")
            if txn is None and self._writer == threading.get_ident():
                txn = self._write_txn       # a transaction of its own would deadlock
            try:
                if txn is not None:
                    # valid once txn commits (an abort closes it): not cached
                    return self.raw.open_db(key, txn=txn, create=self.writable)
                elif self.writable:
                    d = self.write(lambda t: self.raw.open_db(key, txn=t, create=True))
                else:       # (py-lmdb keeps a handle opened in a read transaction only
                    self._enter(False)      # when it begins that transaction itself)
                    try:
                        d = self.raw.open_db(key, create=False)
                    finally:
                        self._leave(False)
            except lmdb.NotFoundError:
                raise TidelogError(f"{self.path}: {self.what} has no database {name!r}, and "
                                   f"this process may only read it (permission denied)") from None
            except lmdb.Error as e:
                raise self.translate(e, f"open database {name!r}") from e
            self._dbs[name] = d
        return d

    def forget_db(self, name: str) -> None:
        self._dbs.pop(name, None)

    def has_db(self, name: str) -> bool:
        """Whether named database `name` exists (reading creates nothing); if it does, its
        handle is open (call this before a transaction that uses it)."""
        if self._probe is not None:
            self._check()
            self._refresh()
            return name in self._dbs
        if name in self._dbs:
            return True
        key = name.encode("utf-8")
        if not self.read(lambda t: t.get(key) is not None):   # named databases: main db keys
            return False
        self.db(name)
        return True

    def read(self, fn: Callable[[Any], T], db: str | None = None) -> T:
        """fn(txn) in a read transaction; its result."""
        txn = self._begin(False, db)
        try:
            return fn(txn)
        except lmdb.Error as e:
            raise self.translate(e, "read") from e
        finally:
            self.end(txn)

    def write(self, fn: Callable[[Any], T]) -> T:
        """fn(txn) in a write transaction, committed (durable when `sync`); its result. A full
        map is grown and fn run again in a new transaction."""
        while True:
            txn = self._begin(True)
            try:
                result = fn(txn)
            except BaseException as e:
                self.end(txn)
                if isinstance(e, lmdb.MapFullError):
                    self.grow()
                    continue
                if isinstance(e, lmdb.Error):
                    raise self.translate(e, "write") from e
                raise
            try:
                self.end(txn, commit=True)
            except lmdb.MapFullError:
                self.grow()
                continue
            return result

    def begin_write(self, db: str | None = None) -> Any:
        """A write transaction the caller keeps across calls; end it with end()."""
        return self._begin(True, db)

    def reader(self, db: str | None = None) -> HeldReader:
        """A read transaction for the caller to hold: a context manager (and the transaction's
        methods), ended by __exit__ or abort(). `db`: the name of its default database."""
        return HeldReader(self, self._begin(False, db))

    # ------------------------------------------------------------------ lifetime

    def _forked(self) -> None:
        """In a fork child: close this inherited environment if no transaction was open,
        else drop it without closing (closing would abort the parent's transactions)."""
        if self._pid == _pid:
            return
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)
        if self._closed:
            return
        self._closed = True
        if self._active or self._writer is not None:
            _abandoned.append((self.raw, self._probe))
            key = self._file_key()
            if key is not None:
                _busy_inherited.add(key)
            return
        try:
            self.raw.close()
            if self._probe is not None:
                self._probe.close()
        except Exception:
            pass

    def close(self) -> None:
        if self._closed or self._pid != _pid:
            self._closed = True
            return
        self._closed = True
        _all.discard(self)
        self.raw.close()
        if self._probe is not None:
            self._probe.close()
            self._remove()


class HeldReader:
    """A read transaction handed to a caller: use it in a `with` block (it is what `as` gives)
    or call its methods and abort() it; ended at most once."""

    def __init__(self, env: LmdbEnv, txn: Any) -> None:
        self._env = env
        self._txn = txn

    def __getattr__(self, name: str) -> Any:
        txn = self.__dict__.get("_txn")
        if txn is None:
            raise TidelogError("the read transaction has ended")
        return getattr(txn, name)

    def __enter__(self) -> HeldReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def abort(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None:
            self._env.end(txn)

    commit = abort

    def __del__(self) -> None:
        try:
            self.abort()
        except Exception:
            pass


def acquire(path: str, *, what: str, max_dbs: int, create: bool = True,
            max_readers: int = 126) -> LmdbEnv:
    """The LmdbEnv of directory `path` shared by this process (reference-counted: release()).
    `max_readers`: read transactions open at once, over all processes (set by the first
    process that opens the environment)."""
    st = os.stat(path)
    key = (_pid, st.st_dev, st.st_ino)
    with _lock:
        env = _shared.get(key)
        if env is None or env._closed:
            env = _shared[key] = LmdbEnv(path, what=what, max_dbs=max_dbs, create=create,
                                         max_readers=max_readers)
            env._key = key
        env._refs += 1
        return env


def release(env: LmdbEnv) -> None:
    """Drop one reference from acquire(); the last one closes the environment."""
    if env._pid != _pid:
        return
    with _lock:
        env._refs -= 1
        if env._refs > 0:
            return
        if env._key is not None and _shared.get(env._key) is env:
            del _shared[env._key]
    env.close()


class TemporaryEnv(LmdbEnv):
    """An environment in a new temporary directory (no sync), deleted by close()."""

    def __init__(self, *, what: str, max_dbs: int) -> None:
        self._tmpdir = tempfile.mkdtemp(prefix="tidelog-view-")
        # deleted by close(), else when this object goes or the process exits (not by a fork
        # child: the directory is its parent's)
        self._remove = weakref.finalize(self, _remove_tree, os.getpid(), self._tmpdir)
        try:
            super().__init__(self._tmpdir, what=what, max_dbs=max_dbs, durable=False)
        except BaseException:
            self._remove()
            raise

    def close(self) -> None:
        super().close()
        self._remove()


def _remove_tree(pid: int, path: str) -> None:
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


def temporary(*, what: str, max_dbs: int = 4) -> TemporaryEnv:
    """A TemporaryEnv: scratch space that stores nothing anywhere it would be kept."""
    return TemporaryEnv(what=what, max_dbs=max_dbs)
