"""Familiar shapes (issue 17, item 5): Record and RecordBatch picklable and comparable; cursors
as context managers with close(), poll(), committed(); log.read_batch(); log.stats(); a
ResourceWarning for a writer collected unclosed. Each test also attacks its shape with bad
arguments and races (close from another thread, retention, closed logs)."""
import copy
import gc
import math
import multiprocessing
import os
import pickle
import random
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import tidelog
from tidelog import _core

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def fill(log, n=10, **kw):
    """n records: every third with a key (b"" for one of them), values of varied lengths."""
    for i in range(n):
        key = None if i % 3 else (b"" if i == 3 else b"key-%d" % i)
        log.append(b"v%d-" % i + b"x" * (i * 7 % 23), key=key, **kw)


def same_record(a, b):
    return (a.offset, a.timestamp, a.key, bytes(a.value)) == (b.offset, b.timestamp, b.key,
                                                              bytes(b.value))


def same_batch(a, b):
    return (len(a) == len(b) and list(a.offsets) == list(b.offsets)
            and list(a.timestamps) == list(b.timestamps) and a.keys == b.keys
            and [bytes(v) for v in a.values] == [bytes(v) for v in b.values]
            and a.nbytes == b.nbytes)


# ----------------------------------------------------------------------------- pickling

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_record_pickles_with_its_bytes_and_equals_the_original(log, protocol):
    fill(log, 10)
    log.append(b"", key=b"only-a-key")
    log.append(b"")
    for off in range(log.end_offset):
        rec = log.read(off)
        back = pickle.loads(pickle.dumps(rec, protocol))
        assert type(back) is tidelog.Record
        assert same_record(back, rec)
        assert back == rec and not back != rec and hash(back) == hash(rec)
        assert isinstance(back.value, memoryview) and back.value.readonly
        assert len(back) == len(rec) and bytes(back) == bytes(rec)
        assert repr(back) == repr(rec)
        assert copy.copy(rec) == rec and copy.deepcopy(rec) == rec


def test_a_pickled_record_holds_a_copy_not_the_mapping(log_path):
    # a record whose log was closed (and whose files are gone) still pickles, and its copy does
    # not depend on the log in any way
    with tidelog.open(log_path, durability="none", segment_bytes=1 << 16) as log:
        fill(log, 5)
        recs = [log.read(i) for i in range(5)]
        batch = log.read_batch(0)
        log.truncate_before(0)
    for name in os.listdir(log_path):
        p = os.path.join(log_path, name)
        if os.path.isfile(p):
            os.unlink(p)
    blobs = [pickle.dumps(r) for r in recs]
    bblob = pickle.dumps(batch)
    del recs, batch
    gc.collect()
    back = [pickle.loads(b) for b in blobs]
    assert [bytes(r.value) for r in back] == [b"v%d-" % i + b"x" * (i * 7 % 23) for i in range(5)]
    assert [r.key for r in back] == [b"key-0", None, None, b"", None]
    assert [bytes(v) for v in pickle.loads(bblob).values] == [bytes(r.value) for r in back]
    # the copy is small: it holds the record's bytes, not the segment
    assert len(blobs[1]) < 200


def test_record_equality_is_by_offset_timestamp_key_and_value(tmp_path):
    with tidelog.open(tmp_path / "a", durability="none") as a, \
            tidelog.open(tmp_path / "b", durability="none") as b:
        a.append(b"same", key=b"k", timestamp=5)
        b.append(b"same", key=b"k", timestamp=5)          # another log, same content
        a.append(b"same", key=b"k", timestamp=6)          # timestamp differs
        b.append(b"same", key=b"K", timestamp=5)          # key differs (offset 1)
        a.append(b"same", key=None, timestamp=5)          # no key ...
        b.append(b"same", key=b"", timestamp=5)           # ... is not an empty key
        a.append(b"Same", key=b"k", timestamp=5)
        b.append(b"Same", key=b"k", timestamp=5)
        a.append(b"same!", key=b"k", timestamp=5)
        b.append(b"same", key=b"k", timestamp=5)          # value shorter
        ra = [a.read(i) for i in range(5)]
        rb = [b.read(i) for i in range(5)]
        assert ra[0] == rb[0] and hash(ra[0]) == hash(rb[0])
        assert ra[0] == a.read(0) and ra[0] is not a.read(0)
        assert ra[1] != rb[1] and not ra[1] == rb[1]
        assert ra[2] != rb[2]                 # None vs b""
        assert ra[3] == rb[3]
        assert ra[4] != rb[4]
        assert ra[0] != ra[1]                 # offset differs
        # from a batch, from a cursor, unpickled: all the same record
        assert a.read_batch(0)[0] == ra[0] == next(a.cursor()) == pickle.loads(pickle.dumps(ra[0]))
        # hashable, consistently with ==: usable in sets and as keys
        assert len({*ra, *rb, a.read(0), pickle.loads(pickle.dumps(rb[0]))}) == 8
        assert {ra[0]: 1}[rb[0]] == 1
        # other types are not records: comparisons fall back, no error
        assert ra[0] != (0, 5, b"k", b"same") and ra[0] != b"same" and ra[0] != None  # noqa: E711
        assert ra[0].__eq__(b"same") is NotImplemented
        with pytest.raises(TypeError):
            ra[0] < rb[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_pickles_with_its_bytes(log, protocol):
    fill(log, 30)
    cur = log.cursor()
    n = 0
    while True:
        batch = cur.read_batch(7)
        back = pickle.loads(pickle.dumps(batch, protocol))
        assert type(back) is tidelog.RecordBatch
        assert same_batch(back, batch)
        assert [r for r in back] == [r for r in batch]
        assert repr(back) == repr(batch)
        if not len(batch):
            break
        assert back[-1] == batch[-1] and back[0] == batch[0]
        n += len(batch)
    assert n == 30
    # an unpickled batch pickles again
    b = log.read_batch(0, 10)
    assert same_batch(pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(b)))), b)


def test_a_pickled_batch_keeps_values_array(log):
    log.append_batch(np.arange(100, dtype=np.int64))       # uniform: a constant stride
    log.append_batch([b"12345678"] * 3, keys=[b"a", b"bb", b"ccc"])   # keys vary: copied
    log.append(b"1234")                                      # another size
    b = log.read_batch(0, 100)
    back = pickle.loads(pickle.dumps(b))
    arr = back.values_array(np.int64)
    assert (arr == np.arange(100)).all() and not arr.flags.writeable
    assert not arr.flags.owndata          # still a view (of the pickle's own bytes)
    b2 = log.read_batch(100, 3)
    assert (pickle.loads(pickle.dumps(b2)).values_array("S8") == b2.values_array("S8")).all()
    b3 = log.read_batch(100, 10)
    with pytest.raises(ValueError, match="every value must be 8 bytes"):
        pickle.loads(pickle.dumps(b3)).values_array(np.int64)
    one = pickle.loads(pickle.dumps(log.read_batch(103)))
    assert one.values_array("S4")[0] == b"1234"
    empty = pickle.loads(pickle.dumps(log.read_batch(log.end_offset)))
    assert len(empty) == 0 and len(empty.values_array(np.int64)) == 0 and empty.keys == []


def test_a_batch_from_a_segment_that_retention_removed(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=4096) as log:
        for i in range(200):
            log.append(b"%04d" % i + b"." * 60)
        first = log.read_batch(0)
        rec = first[3]
        assert len(log.segments()) > 3
        log.truncate_before(log.end_offset - 1)          # every sealed segment goes
        assert log.start_offset > len(first)
        assert not os.path.exists(os.path.join(log_path, "%020d.seg" % 0))
        # the views stay valid; pickling copies them
        assert [bytes(v)[:4] for v in first.values] == [b"%04d" % i for i in range(len(first))]
        back = pickle.loads(pickle.dumps(first))
        assert same_batch(back, first) and pickle.loads(pickle.dumps(rec)) == rec
        with pytest.raises(tidelog.OffsetOutOfRangeError):
            log.read_batch(0)


def _sum_int64s(batch):
    return int(batch.values_array(np.int64).sum()), list(batch.offsets)


def _describe(rec):
    return rec.offset, rec.key, bytes(rec.value), rec == copy.copy(rec)


def test_records_and_batches_go_to_a_spawned_pool_worker(log):
    log.append_batch(np.arange(1000, dtype=np.int64))
    log.append(b"last", key=b"k")
    recs = [log.read(0), log.read(999), log.read(1000)]
    batch = log.read_batch(0, 1000)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        # stdlib functions: the records go there and come back
        assert pool.map(copy.copy, recs) == recs
        assert pool.map(bytes, recs) == [bytes(r) for r in recs]
        assert pool.apply(_sum_int64s, (batch,)) == (sum(range(1000)), list(range(1000)))
        assert pool.map(_describe, recs)[2] == (1000, b"k", b"last", True)
        back = pool.apply(copy.copy, (batch,))
    assert same_batch(back, batch)


def test_logs_and_cursors_refuse_pickling_clearly(log):
    log.append(b"x")
    for obj, what in [(log, "send its path"), (log.cursor(), "open a cursor in the other"),
                      (log.cursor(name="n"), "open a cursor in the other")]:
        for protocol in PROTOCOLS:
            with pytest.raises(TypeError, match=what):
                pickle.dumps(obj, protocol)
        with pytest.raises(TypeError, match=what):
            copy.copy(obj)
    assert bytes(pickle.loads(pickle.dumps(log.read_batch(0).values))[0]) == b"x"


def test_a_tampered_pickle_gets_an_error_never_a_crash():
    mk, mkb = _core._record_from_pickle, _core._batch_from_pickle
    assert mk(1, 2, 3, b"keyvalue") == mk(1, 2, 3, b"keyvalue")
    assert mk(1, 2, 3, b"keyvalue").key == b"key" and bytes(mk(1, 2, -1, b"v")) == b"v"
    for args, exc in [((1, 2, 9, b"keyvalue"), ValueError), ((1, 2, -2, b"x"), ValueError),
                      ((1, 2, 2**40, b"x"), ValueError), ((1, 2, 0, "str"), TypeError),
                      ((1, 2, 0, bytearray(b"x")), TypeError), ((2**63, 2, 0, b""), ValueError),
                      ((1.5, 2, 0, b""), TypeError), ((1, 2, None, b""), TypeError)]:
        with pytest.raises(exc):
            mk(*args)
    ts = np.zeros(2, np.int64)
    good = mkb(0, ts, np.array([-1, -1], np.int32), np.array([1, 1], np.uint32), b"\0" * 16)
    assert len(good) == 2
    for args, exc in [
            ((0, ts, [-1, -1], [1, 1], b"\0" * 15), ValueError),          # too short
            ((0, ts, [-1, -1], [1, 1], b"\0" * 24), ValueError),          # too long
            ((0, ts, [-1], [1, 1], b"\0" * 16), ValueError),              # lengths disagree
            ((0, ts, [-2, -1], [1, 1], b"\0" * 16), ValueError),
            ((0, ts, [-1, -1], [1, 2**40], b"\0" * 16), (ValueError, OverflowError)),
            ((2**63 - 1, ts, [-1, -1], [1, 1], b"\0" * 16), ValueError),
            ((-5, ts, [-1, -1], [1, 1], b"\0" * 16), ValueError),
            ((0, ts, [-1, -1], [1, 1], "x" * 16), TypeError),
            ((0, [[1, 2]], [-1, -1], [1, 1], b"\0" * 16), ValueError)]:
        with pytest.raises(exc):
            mkb(*args)


# ----------------------------------------------------------------------------- cursors

def test_a_cursor_is_a_context_manager_and_a_closed_one_refuses_every_use(log):
    fill(log, 5)
    log.sync()
    with log.cursor() as cur:
        assert next(cur).offset == 0
    assert cur.closed
    assert cur.position == 1                # still readable, as a closed file's name is
    cur.close()                             # idempotent
    named = log.cursor(name="sub")
    named.commit(2)
    named.close()
    for c in (cur, named):
        for use in (lambda: next(c), lambda: list(c), lambda: c.read_batch(),
                    lambda: c.poll(0), lambda: c.poll(), lambda: c.seek(0),
                    lambda: c.seek("earliest"), lambda: c.seek_time(0), lambda: c.wait(0),
                    lambda: c.follow(0), lambda: c.follow_batches(0),
                    lambda: c.follow_async(0), lambda: c.__enter__()):
            with pytest.raises(tidelog.LogClosedError, match="cursor.* is closed"):
                use()
    with pytest.raises(tidelog.LogClosedError, match="cursor 'sub' .*is closed"):
        named.commit()
    with pytest.raises(tidelog.LogClosedError, match="is closed"):
        named.committed()
    assert isinstance(tidelog.LogClosedError("x"), ValueError)   # as closed files
    # the log itself is untouched and other cursors work
    assert [r.offset for r in log.cursor()] == [0, 1, 2, 3, 4]


def test_closing_a_named_cursor_keeps_its_committed_position(log):
    fill(log, 10)
    log.sync()
    with log.cursor(name="indexer") as cur:
        assert cur.committed() is None
        assert len(cur.poll(0, 4)) == 4
        cur.commit()
        assert cur.committed() == 4
        assert len(cur.poll(0, 3)) == 3     # read on without committing
        assert cur.committed() == 4 and cur.position == 7
    assert log.positions() == {"indexer": 4}
    with log.cursor(name="indexer") as again:
        assert again.position == 4 and again.committed() == 4
        other = log.cursor(name="indexer")
        other.commit(9)
        assert again.committed() == 9       # the stored position, whoever committed it
        assert again.position == 4
    with pytest.raises(TypeError, match="anonymous cursor"):
        log.cursor().committed()


def test_poll_returns_what_is_there_or_waits_for_the_first_record(log):
    cur = log.cursor()
    empty = cur.poll(0)
    assert type(empty) is tidelog.RecordBatch and len(empty) == 0
    assert len(cur.poll(0.05)) == 0 and cur.position == 0
    fill(log, 10)
    b = cur.poll(max_records=4)
    assert list(b.offsets) == [0, 1, 2, 3] and cur.position == 4
    b = cur.poll(None, 100)
    assert list(b.offsets) == list(range(4, 10)) and cur.position == 10
    assert len(cur.poll(0.01, 2**63 - 1)) == 0       # a huge max_records is fine

    def later():
        time.sleep(0.1)
        log.append(b"late")
    t = threading.Thread(target=later)
    t.start()
    b = cur.poll()                          # no timeout: until the record comes
    t.join()
    assert [bytes(v) for v in b.values] == [b"late"] and cur.position == 11
    t = threading.Thread(target=later)
    t.start()
    b = cur.poll(30.0)
    t.join()
    assert list(b.offsets) == [11]
    # max_bytes: at least one record, then about that many bytes of values
    log.append_batch([b"x" * 10] * 10)
    assert len(cur.poll(0, max_bytes=25)) == 2
    assert len(cur.poll(0, max_bytes=1)) == 1


def test_poll_of_a_named_cursor_sees_durable_records_only(log):
    log.append(b"a")
    cur = log.cursor(name="n")
    assert len(cur.poll(0.02)) == 0        # appended, not durable ("none" mode)

    def sync_later():
        time.sleep(0.05)
        log.sync()
    t = threading.Thread(target=sync_later)
    t.start()
    b = cur.poll(30.0)
    t.join()
    assert list(b.offsets) == [0]


def test_poll_follows_a_writer_in_another_process_and_across_rolls(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none"):
        pass
    reader = tidelog.open(log_path, readonly=True)
    cur = reader.cursor()
    code = f"""
        import time, tidelog
        with tidelog.open({log_path!r}, segment_bytes=4096, durability="batch") as log:
            for i in range(300):
                log.append(b"%05d" % i + b"." * 50)
                if i % 50 == 0:
                    time.sleep(0.01)
    """
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])
    got = []
    try:
        while len(got) < 300:
            b = cur.poll(30.0, 64)
            assert len(b), "poll timed out with records missing"
            got += [bytes(v)[:5] for v in b.values]
    finally:
        assert p.wait(60) == 0
    assert got == [b"%05d" % i for i in range(300)]
    assert len(reader.segments()) > 3
    reader.close()


@pytest.mark.parametrize("timeout, exc", [
    (-1, ValueError), (-0.001, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    (1e300, ValueError), (2**80, ValueError), ("1", TypeError), (True, TypeError),
    (b"1", TypeError), ([], TypeError)])
def test_poll_refuses_bad_timeouts(log, timeout, exc):
    with pytest.raises(exc, match="timeout"):
        log.cursor().poll(timeout)


@pytest.mark.parametrize("max_records, exc", [
    (0, ValueError), (-1, ValueError), (-2**70, ValueError), (2**63, ValueError),
    (1.5, TypeError), (math.nan, TypeError), (True, TypeError), (None, TypeError),
    ("10", TypeError)])
def test_poll_refuses_bad_max_records(log, max_records, exc):
    log.append(b"x")
    cur = log.cursor()
    with pytest.raises(exc, match="max_records"):
        cur.poll(0, max_records)
    if max_records is not None:
        with pytest.raises(exc, match="max_bytes"):
            cur.poll(0, max_bytes=max_records)
    assert cur.position == 0
    assert len(cur.poll(0, np.int64(5), max_bytes=np.uint8(1))) == 1     # numpy ints are ints


@pytest.mark.parametrize("mode", ["writer", "reader"])
@pytest.mark.parametrize("call", ["poll", "wait", "follow", "follow_batches"])
def test_close_from_another_thread_ends_a_waiting_poll(log_path, mode, call):
    writer = tidelog.open(log_path, durability="none")
    log = writer if mode == "writer" else tidelog.open(log_path, readonly=True)
    for _ in range(3):
        cur = log.cursor(log.end_offset)
        outcome = []

        def poll():
            try:
                if call == "poll":
                    outcome.append(cur.poll())
                elif call == "wait":
                    outcome.append(cur.wait())
                else:
                    outcome.append(next(getattr(cur, call)()))
            except BaseException as e:          # noqa: BLE001 -- reported below
                outcome.append(e)
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        time.sleep(0.05)
        cur.close()
        t.join(30)
        assert not t.is_alive(), "poll(None) kept waiting after close()"
        assert isinstance(outcome[0], tidelog.LogClosedError), outcome
    if log is not writer:
        log.close()
    writer.close()


def test_log_close_from_another_thread_ends_a_waiting_poll(log_path):
    log = tidelog.open(log_path, durability="none")
    cur = log.cursor()
    outcome = []

    def poll():
        try:
            outcome.append(cur.poll())
        except BaseException as e:              # noqa: BLE001
            outcome.append(e)
    t = threading.Thread(target=poll, daemon=True)
    t.start()
    time.sleep(0.05)
    log.close()
    t.join(30)
    assert not t.is_alive()
    assert isinstance(outcome[0], tidelog.LogClosedError), outcome


def test_poll_racing_close_and_appends_never_crashes(log_path):
    """Pollers, an appender and close() of cursors (and at last of the log) at random moments:
    every poll returns a batch of the right records or raises LogClosedError, nothing else."""
    log = tidelog.open(log_path, durability="none", segment_bytes=8192)
    stop = threading.Event()
    errors, seen = [], []
    cursors = []
    lock = threading.Lock()

    def poller(seed):
        rnd = random.Random(seed)
        while not stop.is_set():
            try:
                cur = log.cursor()
            except tidelog.LogClosedError:
                return
            with lock:
                cursors.append(cur)
            try:
                while True:
                    b = cur.poll(rnd.choice([None, 0, 0.001, 0.01]), rnd.randint(1, 50))
                    offs = list(b.offsets)
                    if offs and offs != list(range(offs[0], offs[0] + len(offs))):
                        errors.append(("offsets", offs))
                    for o, v in zip(offs, b.values):
                        if bytes(v) != b"%08d" % o:
                            errors.append(("value", o, bytes(v)))
                    seen.append(len(offs))
            except tidelog.LogClosedError:
                pass
            except BaseException as e:          # noqa: BLE001
                errors.append(e)
                return

    def appender():
        i = 0
        while not stop.is_set():
            try:
                log.append(b"%08d" % i)
            except tidelog.LogClosedError:
                return
            i += 1
            if i % 100 == 0:
                time.sleep(0.001)
    threads = [threading.Thread(target=poller, args=(s,), daemon=True) for s in range(3)]
    threads.append(threading.Thread(target=appender, daemon=True))
    for t in threads:
        t.start()
    rnd = random.Random(7)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        time.sleep(rnd.random() * 0.005)
        with lock:
            victims = list(cursors)
            cursors.clear()
        for c in victims:
            c.close()
    log.close()                             # the pollers still waiting end with it
    stop.set()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert not errors, errors[:5]
    assert sum(seen) > 0


def test_poll_over_records_that_retention_removed_says_so(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=4096) as log:
        for i in range(200):
            log.append(b"." * 60)
        cur = log.cursor()
        log.truncate_before(150)
        with pytest.raises(tidelog.OffsetOutOfRangeError, match="retention"):
            cur.poll(0)


# ----------------------------------------------------------------------------- log.read_batch

def test_log_read_batch(log):
    fill(log, 20)
    b = log.read_batch(5, 3)
    assert list(b.offsets) == [5, 6, 7] and b[0] == log.read(5)
    assert same_batch(log.read_batch(0), log.cursor().read_batch())
    assert len(log.read_batch(log.end_offset)) == 0
    assert len(log.read_batch(0, max_bytes=1)) == 1
    assert list(log.read_batch(np.int64(19)).offsets) == [19]
    for off in (-1, 21, 2**63 - 1, -2**63):
        with pytest.raises(tidelog.OffsetOutOfRangeError):
            log.read_batch(off)
    for off, exc in [(True, TypeError), ("0", TypeError), (0.0, TypeError), (None, TypeError),
                     (2**63, ValueError), (-2**64, ValueError)]:
        with pytest.raises(exc, match="offset"):
            log.read_batch(off)
    for n, exc in [(0, ValueError), (-1, ValueError), (2**63, ValueError), (1.0, TypeError),
                   (False, TypeError)]:
        with pytest.raises(exc, match="max_records"):
            log.read_batch(0, n)
    with pytest.raises(ValueError, match="max_bytes"):
        log.read_batch(0, max_bytes=0)
    assert len(log.read_batch(0, 2**63 - 1)) == 20


def test_log_read_batch_of_a_reader_and_a_closed_log(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=4096) as log:
        for i in range(100):
            log.append(b"%03d" % i + b"-" * 80)
        with tidelog.open(log_path, readonly=True) as r:
            got, off = [], 0
            while off < r.end_offset:
                b = r.read_batch(off)
                assert len(b) and len(b) < 100          # one segment per batch
                got += [bytes(v)[:3] for v in b.values]
                off += len(b)
            assert got == [b"%03d" % i for i in range(100)]
    with pytest.raises(tidelog.LogClosedError):
        log.read_batch(0)


# ----------------------------------------------------------------------------- log.stats

def test_stats_says_what_info_prints(log_path, run):
    with tidelog.open(log_path, durability="none", segment_bytes=4096) as log:
        for i in range(150):
            log.append(b"%03d" % i + b"-" * 60)
        log.sync()
        log.cursor(name="a").commit(100)
        log.set_position("b", 3)
        log.truncate_before(40)
        s = log.stats()
        assert set(s) == {"path", "start_offset", "end_offset", "durable_offset", "records",
                          "segments", "segment_file_bytes", "disk_bytes", "compression",
                          "subscribers", "subscribers_error"}
        assert s["path"] == log.path
        assert (s["start_offset"], s["end_offset"], s["durable_offset"]) == (
            log.start_offset, 150, 150)
        assert s["records"] == 150 - log.start_offset == len(log)
        assert s["segments"] == len(log.segments()) > 1
        assert s["segment_file_bytes"] == sum(os.path.getsize(p) for _, p in log.segments())
        assert s["disk_bytes"] > 0
        assert s["subscribers"]["a"]["position"] == 100 and s["subscribers"]["a"]["lag"] == 50
        assert s["subscribers"]["b"]["lag"] == 147
        assert abs(s["subscribers"]["b"]["committed_ns"] - time.time_ns()) < 3600e9
        assert s["subscribers_error"] is None
    out = run("info", log_path).stdout
    with tidelog.open(log_path, readonly=True) as r:
        s = r.stats()
    lines = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert int(lines["start_offset"]) == s["start_offset"]
    assert int(lines["end_offset"]) == s["end_offset"]
    assert int(lines["durable_offset"]) == s["durable_offset"]
    assert int(lines["records"]) == s["records"]
    assert lines["segments"].strip() == f"{s['segments']} ({s['segment_file_bytes']:,} bytes)"
    assert lines["disk usage"].strip().startswith(f"{s['disk_bytes']:,} bytes")
    assert int(lines["subscribers"]) == len(s["subscribers"]) == 2
    assert "position 100, lag 50" in out
    assert s["compression"] is None and lines["compression"].strip() == "none"


def test_stats_of_a_fresh_log_a_reader_and_a_closed_log(log_path):
    log = tidelog.open(log_path, durability="none", segment_bytes=4096)
    s = log.stats()
    assert (s["start_offset"], s["end_offset"], s["records"], s["subscribers"]) == (0, 0, 0, {})
    assert s["segments"] == 1
    log.append(b"x")
    with tidelog.open(log_path, readonly=True) as r:
        rs = r.stats()
        assert rs["end_offset"] == 1 and rs["durable_offset"] == 0 and rs["subscribers"] == {}
    log.close()
    with pytest.raises(tidelog.LogClosedError):
        log.stats()


def test_stats_with_an_unreadable_positions_store_says_why(log_path):
    with tidelog.open(log_path, durability="none") as log:
        log.append(b"x")
        log.sync()
        log.set_position("a", 1)
    store = os.path.join(log_path, "positions")
    for name in os.listdir(store):
        with open(os.path.join(store, name), "r+b") as f:
            f.write(b"\xff" * 4096)                 # not an LMDB environment any more
    with tidelog.open(log_path, readonly=True) as r:
        s = r.stats()
    assert s["subscribers"] is None
    assert isinstance(s["subscribers_error"], (tidelog.TidelogError, OSError))
    assert s["end_offset"] == 1


def test_stats_while_a_writer_appends_and_rolls(log_path):
    log = tidelog.open(log_path, durability="none", segment_bytes=4096, retain_bytes=16384)
    stop = threading.Event()

    def append():
        while not stop.is_set():
            log.append(b"." * 100)
    t = threading.Thread(target=append)
    t.start()
    try:
        for _ in range(200):
            s = log.stats()
            # ("none" mode: durable_offset may lag below start_offset, retention does not wait)
            assert s["durable_offset"] <= s["end_offset"] and s["start_offset"] <= s["end_offset"]
            assert s["records"] == s["end_offset"] - s["start_offset"]
    finally:
        stop.set()
        t.join()
        log.close()


# ----------------------------------------------------------------------------- ResourceWarning

def test_a_writer_collected_without_close_warns_and_still_closes(log_path):
    log = tidelog.open(log_path, durability="none")
    log.append(b"kept")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del log
        gc.collect()
    found = [x for x in w if issubclass(x.category, ResourceWarning)]
    assert len(found) == 1 and "unclosed tidelog writer" in str(found[0].message)
    assert log_path in str(found[0].message)
    # closed cleanly: the lock is free, the record is there ("none" mode: close() synced it)
    with tidelog.open(log_path) as again:
        assert bytes(again.read(0)) == b"kept" and again.durable_offset == 1


def test_no_warning_for_closed_logs_or_readers(log_path):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with tidelog.open(log_path) as log:
            log.append(b"x")
        del log
        w2 = tidelog.open(log_path, durability="none")
        w2.close()
        del w2
        r = tidelog.open(log_path, readonly=True)
        r.close()
        del r
        r = tidelog.open(log_path, readonly=True)     # a reader holds nothing that matters
        del r
        with pytest.raises(tidelog.LogLockedError):
            _second_writer(log_path)
        gc.collect()
    assert [str(x.message) for x in w if issubclass(x.category, ResourceWarning)] == []


def _second_writer(path):
    keep = tidelog.open(path)
    try:
        tidelog.open(path)                  # a failed open is not an unclosed log
    finally:
        keep.close()


def test_the_warning_as_an_error_still_closes_the_writer(log_path):
    code = f"""
        import gc, sys, tidelog
        seen = []
        sys.unraisablehook = lambda u: seen.append(u.exc_type.__name__)
        log = tidelog.open({log_path!r}, durability="none")
        log.append(b"x")
        del log
        gc.collect()
        assert seen == ["ResourceWarning"], seen
        with tidelog.open({log_path!r}) as again:        # closed: the lock is free
            assert again.end_offset == again.durable_offset == 1
        print("ok")
    """
    out = subprocess.run([sys.executable, "-W", "error::ResourceWarning", "-c",
                          textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_fork_child_does_not_warn_for_its_parents_writer(log_path):
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    code = f"""
        import gc, os, sys, warnings, tidelog
        log = tidelog.open({log_path!r}, durability="none")
        pid = os.fork()
        if pid == 0:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                del log
                gc.collect()
            os._exit(len([x for x in w if issubclass(x.category, ResourceWarning)]))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        log.append(b"parent")
        log.close()
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
