"""Named subscriber positions (LMDB in <log>/positions): commits survive kill -9 of the committing
process, any process may commit (readers included) while the writer appends, offsets and names are
checked, named cursors read durable records only, a stored position beyond the end is reported, and
two Logs of one process share the LMDB environment.

Crash cycles per test: TIDELOG_POSITION_CRASH_CYCLES (default 100)."""
import os
import random
import signal
import sys
import threading
import time

import pytest

import tidelog
from tidelog.positions import PositionStore

from conftest import read_pipe_lines, spawn_python

CYCLES = int(os.environ.get("TIDELOG_POSITION_CRASH_CYCLES", "100"))
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def value(off):
    return b"v%08d" % off


def fill(log, n):
    first = log.end_offset
    log.append_batch([value(o) for o in range(first, first + n)])
    return first + n


# ------------------------------------------------------------------------------ kill -9

def read_lines(rfd):
    """Complete lines the killed child wrote (the kill may cut the last one)."""
    lines = read_pipe_lines(rfd)
    errors = [line for line in lines if line.startswith(b"error")]
    assert not errors, errors[0].decode()
    return [line.split() for line in lines]


def last_committed(lines, name):
    """The last offset the child printed for `name` (printed only after commit() returned)."""
    offs = [int(off) for tag, off in lines if tag == name.encode()]
    return offs[-1] if offs else None


def fork_child(body, *args):
    """Fork; the child runs body(wfd, *args), reporting through the pipe, and never returns."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                       # pragma: no cover - the child
        os.close(r)
        try:
            body(w, *args)
        except BaseException as e:
            os.write(w, b"error %r\n" % e)
        finally:
            os._exit(1)
    os.close(w)
    return pid, r


def kill_soon(pid, rfd, rng):
    import select
    if rng.random() < 0.8:             # most kills hit the commit loop, some the open
        select.select([rfd], [], [], 10.0)
    time.sleep(rng.uniform(0.0, 0.03))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def writer_committer(wfd, path, mode, seed):
    """Child: the writer; appends, and commits two subscribers as fast as it can: "a" follows
    what its named cursor read, "b" commits offsets it picks (never going back)."""
    rng = random.Random(seed)
    log = tidelog.open(path, segment_bytes=1 << 14, durability=mode, sync_interval=0.001)
    a = log.cursor(name="a")
    b = log.cursor(name="b")
    last_b = b.position
    os.write(wfd, b"start %d\n" % log.end_offset)
    while True:
        fill(log, rng.randint(1, 20))
        if mode == "none" and rng.random() < 0.5:
            log.sync()
        while len(a.read_batch(rng.randint(1, 50))):
            pass
        a.commit()
        os.write(wfd, b"a %d\n" % a.position)
        last_b = rng.randint(last_b, log.durable_offset)
        b.commit(last_b)
        os.write(wfd, b"b %d\n" % last_b)


@needs_fork
def test_commits_survive_kill9_of_the_writer(tmp_path):
    seed = int(os.environ.get("TIDELOG_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    path = str(tmp_path / "log")
    last = {"a": 0, "b": 0}
    kills_before_start = 0
    for cycle in range(CYCLES):
        mode = rng.choice(["none", "batch", "always"])
        pid, rfd = fork_child(writer_committer, path, mode, rng.randrange(1 << 30))
        kill_soon(pid, rfd, rng)
        lines = read_lines(rfd)
        kills_before_start += not any(tag == b"start" for tag, _ in lines)
        readonly = cycle % 2 == 1      # odd: the crashed log as it is; even: a writer recovers it
        with tidelog.open(path, readonly=readonly, durability="none") as log:
            stored = log.positions()
            durable = log.durable_offset
            for name in "ab":
                printed = last_committed(lines, name)
                if printed is not None:
                    last[name] = printed
                got = stored.get(name, 0)
                assert last[name] <= got <= durable, (
                    f"seed {seed} cycle {cycle} ({mode}): {name} stored {got}, last printed "
                    f"{last[name]}, durable {durable}")
                last[name] = got
                if got:
                    assert log.cursor(name=name).position == got
            if not readonly:
                assert durable == log.end_offset
    assert last["a"] > 0 and last["b"] > 0, (seed, last)
    assert kills_before_start < CYCLES


WRITER = """
import sys, time, tidelog
path = sys.argv[1]
log = tidelog.open(path, segment_bytes=1 << 14, durability="batch", sync_interval=0.001)
print("ready", flush=True)
i = 0
while True:
    log.append_batch([b"v%08d" % o for o in range(log.end_offset, log.end_offset + 5)])
    i += 1
    if i % 20 == 0:                     # this process commits too: LMDB stays open here
        log.sync()
        log.set_position("w", log.durable_offset)
    time.sleep(0.0005)
"""


def reader_committer(wfd, path, seed):
    """Child: a read-only process following the live writer, committing each batch it reads."""
    rng = random.Random(seed)
    log = tidelog.open(path, readonly=True)
    cur = log.cursor(name="r")
    os.write(wfd, b"start %d\n" % cur.position)
    while True:
        batch = cur.read_batch(rng.randint(1, 30))
        if len(batch):
            assert bytes(batch.values[0]) == value(int(batch.offsets[0]))
        cur.commit()
        os.write(wfd, b"r %d\n" % cur.position)


@needs_fork
def test_commits_survive_kill9_of_a_reader_while_the_writer_appends(tmp_path):
    seed = int(os.environ.get("TIDELOG_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    path = str(tmp_path / "log")
    writer = spawn_python(WRITER, path)
    try:
        assert writer.stdout.readline() == "ready\n", writer.stderr.read()
        last = 0
        for cycle in range(CYCLES):
            pid, rfd = fork_child(reader_committer, path, rng.randrange(1 << 30))
            kill_soon(pid, rfd, rng)
            lines = read_lines(rfd)
            printed = last_committed(lines, "r")
            if printed is not None:
                last = printed
            with tidelog.open(path, readonly=True) as log:
                got = log.positions().get("r", 0)
                durable = log.durable_offset
                assert last <= got <= durable, (f"seed {seed} cycle {cycle}: stored {got}, last "
                                                f"printed {last}, durable {durable}")
                last = got
                assert log.cursor(name="r").position == got
        assert writer.poll() is None, writer.stderr.read()     # never stuck on LMDB's lock
        with tidelog.open(path, readonly=True) as log:
            positions = log.positions()
        assert set(positions) == {"r", "w"} and positions["r"] > 0
    finally:
        writer.kill()
        writer.communicate()


# ------------------------------------------------------------------------------ processes

READER = """
import sys, tidelog
path, target = sys.argv[1], int(sys.argv[2])
with tidelog.open(path, readonly=True) as log:
    cur = log.cursor(name="reader")
    seen = cur.position
    while cur.position < target:
        if not cur.wait(30):
            sys.exit("no progress")
        batch = cur.read_batch(1000)
        for off, v in zip(batch.offsets.tolist(), batch.values):
            assert off == seen and bytes(v) == b"v%08d" % off, (off, seen)
            seen += 1
        assert seen <= log.durable_offset          # a named cursor reads durable records only
        cur.commit()
    print(cur.position, flush=True)
"""


def test_readonly_process_commits_while_the_writer_appends(log_path):
    target = 20_000
    with tidelog.open(log_path, segment_bytes=1 << 16, sync_interval=0.002) as log:
        fill(log, 100)
        reader = spawn_python(READER, log_path, target)
        w = log.cursor(name="writer")
        while log.end_offset < target:
            fill(log, min(250, target - log.end_offset))
            while len(w.read_batch(100)):
                pass
            w.commit()                              # both processes commit concurrently
            time.sleep(0.001)
        log.sync()
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        assert int(out) == target
        assert log.positions()["reader"] == target
        while len(w.read_batch()):
            pass
        w.commit()
        assert log.positions() == {"reader": target, "writer": target}
        assert log.lag() == {"reader": 0, "writer": 0}


@needs_fork
def test_forked_child_commits_while_the_parent_has_positions_open(log_path):
    with tidelog.open(log_path, durability="none") as log:
        fill(log, 10)
        log.sync()
        log.set_position("parent", 5)

        def child(wfd):
            with tidelog.open(log_path, readonly=True) as r:
                r.cursor(name="child").commit(7)
            os.write(wfd, b"ok 0\n")
        pid, rfd = fork_child(child)
        os.waitpid(pid, 0)
        assert [b"ok", b"0"] in read_lines(rfd)
        assert log.positions() == {"child": 7, "parent": 5}


# ------------------------------------------------------------------------------ behaviour

def test_two_subscribers_and_their_lag(log):
    fill(log, 100)
    log.sync()
    a, b = log.cursor(name="a"), log.cursor(name="b")
    assert [r.offset for r in (next(a) for _ in range(30))] == list(range(30))
    a.commit()
    assert len(b.read_batch(70)) == 70
    b.commit()
    assert log.positions() == {"a": 30, "b": 70}
    assert log.lag() == {"a": 70, "b": 30}
    fill(log, 50)                                   # lag counts to end_offset, durable or not
    assert log.lag() == {"a": 120, "b": 80}
    info = log.position_info()
    assert {k: v[0] for k, v in info.items()} == {"a": 30, "b": 70}
    assert all(abs(t - time.time_ns()) < 60e9 for _, t in info.values())
    # a new cursor under a name resumes where it committed, not where its old cursor is
    assert next(a).offset == 30
    assert log.cursor(name="a").position == 30
    assert log.cursor(name="b", start="latest").position == 70   # start: only without a position
    a.commit(0)                                     # rewinding is allowed
    assert log.positions()["a"] == 0


def test_named_cursor_reads_durable_records_only(log):
    fill(log, 10)
    assert log.durable_offset == 0
    assert len(list(log.cursor())) == 10            # anonymous: everything appended
    named = log.cursor(name="n")
    assert list(named) == []
    assert len(named.read_batch()) == 0
    assert named.wait(0.05) is False
    assert len(list(log.cursor(name="n2", durable_only=False))) == 10
    assert len(list(log.cursor(durable_only=True))) == 0
    log.sync()
    assert [r.offset for r in named] == list(range(10))
    named.commit()
    fill(log, 5)
    assert list(named) == []                        # 10..14 are not durable yet
    log.sync()
    assert [r.offset for r in log.cursor(name="n")] == list(range(10, 15))


def test_named_cursor_at_latest_starts_at_the_durable_end(log):
    fill(log, 10)
    log.sync()
    fill(log, 5)
    cur = log.cursor(name="new", start="latest")
    assert cur.position == log.durable_offset == 10
    cur.commit()


def test_commit_offset_validation(log):
    fill(log, 10)
    log.sync()
    fill(log, 5)                                    # durable 10, end 15
    cur = log.cursor(name="c")
    for bad in (11, 15, 16, -1):
        with pytest.raises(ValueError, match="offset"):
            cur.commit(bad)
        with pytest.raises(ValueError, match="offset"):
            log.set_position("c", bad)
    with pytest.raises(ValueError, match="durable"):
        cur.commit(11)
    for bad in ("3", 3.0, True, [3], b"3"):
        with pytest.raises(TypeError, match="offset"):
            cur.commit(bad)
        with pytest.raises(TypeError, match="offset"):
            log.set_position("c", bad)
    assert log.positions() == {}                    # nothing stored by a refused commit
    cur.seek(15)                                    # a named cursor seeks anywhere ...
    with pytest.raises(ValueError, match="durable"):
        cur.commit()                                # ... but commits durable positions only
    assert cur.commit(10) == 10
    assert log.cursor(name="c").position == 10
    log.set_position("c", 0)
    assert log.positions() == {"c": 0}


def test_commit_below_start_offset(log):
    log._multi_form = False                         # (format v2) single-form frames
    for _ in range(10):
        fill(log, 200)                              # many 64 KiB segments
    log.sync()
    log.truncate_before(1500)
    start = log.start_offset
    assert 0 < start <= 1500
    with pytest.raises(ValueError, match="offset"):
        log.cursor(name="x").commit(start - 1)
    log.cursor(name="x").commit(start)
    assert log.positions() == {"x": start}


def test_anonymous_cursor_cannot_commit(log):
    fill(log, 3)
    log.sync()
    cur = log.cursor()
    next(cur)
    with pytest.raises(TypeError, match="anonymous"):
        cur.commit()
    with pytest.raises(TypeError):
        cur.commit(1)
    assert log.positions() == {}


def test_position_beyond_the_end_after_a_repair(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(100):
            log.append(b"v%04d" % i)                # 40-byte frames: record i at 64 + 40 i
        log.sync()
        log.set_position("ahead", 100)
        log.set_position("behind", 30)
    with open(os.path.join(log_path, "%020d.seg" % 0), "r+b") as f:
        f.seek(64 + 40 * 60 + 33)                   # a value byte of record 60
        f.write(b"\xff")
    with tidelog.open(log_path, durability="none", repair="truncate") as log:
        assert log.end_offset == 60
        assert log.positions() == {"ahead": 100, "behind": 30}   # reported, not rewritten
        assert log.lag() == {"ahead": -40, "behind": 30}
        with pytest.raises(tidelog.OffsetOutOfRangeError, match="set_position") as exc:
            log.cursor(name="ahead")
        assert "100" in str(exc.value) and "60" in str(exc.value)
        assert isinstance(exc.value, IndexError)
        assert log.cursor(name="behind").position == 30
        log.set_position("ahead", 60)               # an operator rewinds it
        cur = log.cursor(name="ahead")
        assert cur.position == 60 and list(cur) == []
        log.append(b"new")
        log.sync()
        assert [bytes(r) for r in cur] == [b"new"]


def test_position_beyond_the_end_written_directly(log):
    fill(log, 5)
    log.sync()
    PositionStore(log.path).put("far", 1_000)       # shares this process's environment
    with pytest.raises(tidelog.OffsetOutOfRangeError):
        log.cursor(name="far")
    log.delete_position("far")
    assert log.cursor(name="far").position == 0


def test_delete_position(log):
    fill(log, 10)
    log.sync()
    log.cursor(name="a").commit(4)
    log.cursor(name="b").commit(6)
    log.delete_position("a")
    assert log.positions() == {"b": 6}
    with pytest.raises(KeyError, match="a"):
        log.delete_position("a")
    with pytest.raises(KeyError):
        log.delete_position("never")
    assert log.cursor(name="a").position == 0         # starts afresh, from `start`
    assert log.cursor(name="a", start="latest").position == 10
    log.delete_position("b")
    assert log.positions() == {} and log.lag() == {}


@pytest.mark.parametrize("bad, error", [
    ("", ValueError), ("x" * 401, ValueError), ("é" * 201, ValueError), ("a\0b", ValueError),
    (5, TypeError), (b"name", TypeError), (1.5, TypeError), (["a"], TypeError)])
def test_names_are_checked(log, bad, error):
    fill(log, 1)
    log.sync()
    with pytest.raises(error, match="name"):
        log.cursor(name=bad)
    with pytest.raises(error, match="name"):
        log.set_position(bad, 0)
    with pytest.raises(error, match="name"):
        log.delete_position(bad)
    assert log.positions() == {}


def test_names_at_the_limits(log):
    fill(log, 3)
    log.sync()
    names = ["x" * 400, "é" * 200, "日本語 subscriber", "a/b:c [d]", " "]
    for i, name in enumerate(names):
        log.cursor(name=name).commit(i % 4)
    assert log.positions() == {name: i % 4 for i, name in enumerate(names)}
    assert log.cursor(name="é" * 200).position == 1


def test_two_logs_of_one_process_share_the_positions(log_path):
    w = tidelog.open(log_path, durability="none")
    fill(w, 100)
    w.sync()
    r = tidelog.open(log_path, readonly=True)
    r2 = tidelog.open(log_path, readonly=True)
    try:
        assert r._positions().env is w._positions().env is r2._positions().env   # LMDB opened once
        w.cursor(name="w").commit(10)
        r.cursor(name="r").commit(20)
        assert w.positions() == r.positions() == r2.positions() == {"r": 20, "w": 10}

        def commits(log, name, n):
            cur = log.cursor(name=name)
            for i in range(n):
                cur.commit(i % 100)
        threads = [threading.Thread(target=commits, args=(lg, f"t{i}", 200))
                   for i, lg in enumerate((w, r, r2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {k: w.positions()[k] for k in ("t0", "t1", "t2")} == {"t0": 99, "t1": 99, "t2": 99}

        r.close()                                   # the others keep the environment
        assert r2.positions()["r"] == 20
        w.cursor(name="w").commit(30)
        assert r2.positions()["w"] == 30
        with pytest.raises(tidelog.LogClosedError):
            r.positions()
        w.close()
        r2.cursor(name="r2").commit(50)             # a reader commits after the writer left
        r3 = tidelog.open(log_path, readonly=True)
        assert r3.positions()["r2"] == 50
        r3.close()
    finally:
        for lg in (w, r, r2):
            lg.close()
    with tidelog.open(log_path) as again:           # all closed: a fresh environment opens
        assert again.positions()["r2"] == 50
        assert again.lag()["w"] == 70


def test_positions_store_is_made_on_first_use(log):
    assert not os.path.exists(os.path.join(log.path, "positions"))
    fill(log, 1)
    log.sync()
    log.cursor(name="a").commit()
    assert os.path.isdir(os.path.join(log.path, "positions"))


def test_closed_log_refuses_position_calls(log):
    fill(log, 2)
    log.sync()
    cur = log.cursor(name="a")
    log.close()
    for call in (log.positions, log.lag, log.position_info, lambda: log.delete_position("a"),
                 lambda: log.cursor(name="a"), lambda: log.set_position("a", 0), cur.commit):
        with pytest.raises(tidelog.LogClosedError):
            call()


def test_reading_positions_never_creates_the_store(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"x")
        assert log.positions() == {} and log.lag() == {} and log.position_info() == {}
        with pytest.raises(KeyError):
            log.delete_position("nobody")
        cur = log.cursor(name="nobody")          # a name without a position: no store either
        assert cur.position == 0
    with tidelog.open(log_path, readonly=True) as r:
        assert r.positions() == {}
    assert not os.path.exists(os.path.join(log_path, "positions"))
