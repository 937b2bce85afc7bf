"""Attacks on tidelog.eventsourcing's become-the-writer-at-the-first-write (issue 16): a fork()
child that lives on, close() racing become_writer(), a store this user may not write."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from uuid import uuid4

import pytest

pytest.importorskip("eventsourcing")

from eventsourcing.persistence import PersistenceError, StoredEvent  # noqa: E402

import tidelog  # noqa: E402
from tidelog.eventsourcing import TidelogApplicationRecorder, TidelogStore  # noqa: E402


def ev(state=b"x"):
    return StoredEvent(originator_id=uuid4(), originator_version=1, topic="t", state=state)


def run_py(code, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


FORK_CHILD = '''
import os, sys
from uuid import uuid4
from eventsourcing.persistence import StoredEvent
import tidelog
from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
path = sys.argv[1]
r = TidelogApplicationRecorder(TidelogStore.acquire(path))
r.insert_events([StoredEvent(uuid4(), 1, "t", b"x")])     # this process is the writer
rd, wr = os.pipe()
rd2, wr2 = os.pipe()
pid = os.fork()
if pid == 0:                    # a child that never touches the store, and lives on
    os.close(wr)
    os.write(wr2, b"r")         # up and running (its fork hooks have run)
    os.read(rd, 1)
    os._exit(0)
os.close(rd)
assert os.read(rd2, 1) == b"r"
r.close()                       # the parent is done with the store
try:
    tidelog.open(os.path.join(path, "log")).close()
    print("free")
except tidelog.LogLockedError:
    print("held")
os.close(wr)
os.waitpid(pid, 0)
'''


def test_fork_child_does_not_keep_the_parents_writer_lock(tmp_path):
    """The writer's lock is a flock, whose descriptor a fork() child shares: a child that lives on
    kept the parent's writer lock after the parent had closed the store, and no other process
    could write until the child exited."""
    proc = run_py(FORK_CHILD, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["free"]


def test_close_racing_become_writer(tmp_path):
    """close() of a read-only store while another thread's first insert was catching the index
    up: the new writer log was closed under it, and the insert failed with a raw
    tidelog.LogClosedError (not an eventsourcing error). Now close() waits for the insert."""
    path = str(tmp_path / "s")
    store = TidelogStore.acquire(path)
    rec = TidelogApplicationRecorder(store)
    entered = threading.Event()
    recover = store.recover

    def slow_recover():         # widen the window: become_writer() holds the new writer here
        entered.set()
        time.sleep(0.2)
        return recover()

    store.recover = slow_recover
    out = []

    def insert():
        try:
            out.append(rec.insert_events([ev()]))
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=insert)
    t.start()
    assert entered.wait(30)
    store.close()
    t.join()
    res = out[0]
    assert not isinstance(res, Exception) or isinstance(res, PersistenceError), repr(res)
    log = tidelog.open(os.path.join(path, "log"))        # the writer lock was let go
    try:
        if not isinstance(res, Exception):
            assert res == [1] and log.end_offset == 1
    finally:
        log.close()


@pytest.fixture
def world_dir():
    """A world-traversable directory (tmp_path under /tmp/pytest-of-root is 0700)."""
    d = tempfile.mkdtemp(dir="/tmp", prefix="tidelog-es-ro-")
    os.chmod(d, 0o755)
    yield d
    for root, dirs, _ in os.walk(d):
        for x in dirs:
            os.chmod(os.path.join(root, x), 0o755)
    shutil.rmtree(d)


READONLY_USER = '''
import os, sys
from uuid import uuid4
from eventsourcing.persistence import StoredEvent, OperationalError
from tidelog.eventsourcing import TidelogStore, TidelogApplicationRecorder
path = sys.argv[1]
if os.geteuid() == 0:           # drop to nobody (root ignores permissions)
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
if os.access(os.path.join(path, "log"), os.W_OK):
    sys.exit("this user may write the log: the test would prove nothing")
r = TidelogApplicationRecorder(TidelogStore.acquire(path))
print([n.id for n in r.select_notifications(1, 10)])
try:
    r.insert_events([StoredEvent(uuid4(), 1, "t", b"x")])
    print("written")
except OperationalError as exc:
    print("refused")
print([n.id for n in r.select_notifications(1, 10)])
'''


def test_insert_into_a_store_this_user_may_not_write(world_dir):
    """A store whose log this user may not write: reads work, and an insert raised a raw
    PermissionError (not an eventsourcing error) from become_writer()."""
    path = os.path.join(world_dir, "s")
    rec = TidelogApplicationRecorder(TidelogStore.acquire(path))
    rec.insert_events([ev(), ev()])
    rec.close()
    for root, dirs, files in os.walk(path):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        os.chmod(root, 0o555)
    os.chmod(os.path.join(path, "index"), 0o777)           # LMDB's lock file: readers may use it
    os.chmod(os.path.join(path, "index", "lock.mdb"), 0o666)
    proc = run_py(READONLY_USER, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[1,", "2]", "refused", "[1,", "2]"]


def test_acquire_after_close_opens_the_store_again(tmp_path):
    """store.close() (not release()) left the closed store in the per-process registry, and
    every later acquire() of the path returned it: the path was unusable in this process."""
    path = str(tmp_path / "s")
    store = TidelogStore.acquire(path)
    first = TidelogApplicationRecorder(store)          # holds a reference of its own
    first.insert_events([ev()])
    store.close()
    again = TidelogStore.acquire(path)
    try:
        assert again is not store and not again.closed
        rec = TidelogApplicationRecorder(again)
        assert rec.insert_events([ev()]) == [2]
        assert [n.id for n in rec.select_notifications(1, 10)] == [1, 2]
        rec.close()
    finally:
        again.close()
    first.close()               # the closed store's references: let go without touching `again`
    store.release()
    third = TidelogStore.acquire(path)
    assert third is not again and not third.closed
    third.release()


SLOW_CATCH_UP = '''
import sys, time
from tidelog.eventsourcing import TidelogStore
recover = TidelogStore.recover
def slow(self):
    print("recovering", flush=True)
    time.sleep(1.0)
    return recover(self)
TidelogStore.recover = slow
s = TidelogStore.acquire(sys.argv[1])
print("open", s.readonly, flush=True)
sys.stdin.readline()
'''


@pytest.mark.parametrize("damage", ["deleted", "dir"])
def test_lock_file_removed_while_a_reader_catches_up(tmp_path, damage):
    """The turn lock was a file, `writer.lock`: deleted (a "stale lock" cleaned up) or replaced
    while a process that was opening the store held it to catch the index up, the first insert
    of an application made a new one, took it, found the log's writer lock held, and failed
    with OperationalError although no process was writing. Now it waits for the reader."""
    path = str(tmp_path / "s")
    app = TidelogApplicationRecorder(TidelogStore.acquire(path))
    app.insert_events([ev()])   # something for the reader to catch up
    app.close()
    app = TidelogApplicationRecorder(TidelogStore.acquire(path))
    reader = subprocess.Popen([sys.executable, "-c", SLOW_CATCH_UP, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "recovering"   # holds the writer lock now
        lock = os.path.join(path, "writer.lock")
        if os.path.exists(lock):
            os.unlink(lock)
        if damage == "dir":
            os.mkdir(lock)
        assert app.insert_events([ev()]) == [2]
        assert reader.stdout.readline().split() == ["open", "True"]
        reader.stdin.close()
        assert reader.wait(60) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        app.close()
