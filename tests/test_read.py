"""Reading: cursors, batches, zero-copy views and their lifetime, readers in other processes,
threads appending and reading at once."""
import gc
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tidelog
from conftest import spawn_python


def test_cursor_start_seek_and_position(log):
    log.append_batch([b"%d" % i for i in range(10)])
    assert [r.offset for r in log.cursor(7)] == [7, 8, 9]
    assert list(log.cursor("latest")) == []
    cur = log.cursor()
    assert cur.position == 0
    next(cur)
    assert cur.position == 1
    cur.seek(9)
    assert [bytes(r.value) for r in cur] == [b"9"]
    assert cur.position == 10
    log.append(b"10")                     # iteration keeps up with appends
    assert [r.offset for r in cur] == [10]


def test_read_batch_limits(log_path):
    with tidelog.open(log_path, segment_bytes=8192, durability="none") as log:
        log.append_batch([b"v" * 50] * 400, atomic=False)
        cur = log.cursor()
        b = cur.read_batch(max_records=7)
        assert len(b) == 7 and list(b.offsets) == list(range(7))
        b = cur.read_batch(max_bytes=120)
        assert len(b) == 2 and cur.position == 9
        b = cur.read_batch(max_bytes=1)          # at least one record
        assert len(b) == 1
        seen, sizes = 10, set()
        while True:
            b = cur.read_batch()
            if not len(b):
                break
            assert b.offsets.dtype == np.int64 and b.timestamps.dtype == np.int64
            assert list(b.offsets) == list(range(seen, seen + len(b)))
            seen += len(b)
            sizes.add(len(b))
        assert seen == 400
        assert max(sizes) < 400              # a batch holds records of one segment only


def test_values_are_zero_copy_and_read_only(log):
    log.append(b"hello")
    r = log.read(0)
    v1, v2 = r.value, log.read(0).value
    assert v1.readonly and bytes(v1) == b"hello"
    with pytest.raises(TypeError):
        v1[0] = 0
    a1 = np.frombuffer(v1, np.uint8)
    a2 = np.frombuffer(v2, np.uint8)
    assert a1.ctypes.data == a2.ctypes.data        # the same bytes of the mapping, not copies
    assert a1.ctypes.data % 8 == 0                 # values are 8-byte aligned
    b = log.cursor().read_batch()
    assert np.frombuffer(b.values[0], np.uint8).ctypes.data == a1.ctypes.data


def test_value_views_are_ordinary_memoryviews(log):
    # views of one segment share one managed buffer (ext/tl_view.h): each must still behave as
    # a memoryview of exactly its own bytes
    vals = [bytes([i]) * (i * 7 % 50) for i in range(60)]
    log.append_batch(vals, keys=[b"k%d" % i if i % 3 else None for i in range(60)])
    batch = log.cursor().read_batch()
    views = list(batch.values)
    keys = [b"k%d" % i if i % 3 else None for i in range(60)]
    assert batch.keys == keys and [batch[i].key for i in range(60)] == keys
    assert batch.nbytes == sum(map(len, vals)) and list(batch.offsets) == list(range(60))
    assert [bytes(batch[i].value) for i in range(-60, 0)] == vals
    for i, v in enumerate(views):
        n = len(vals[i])
        assert (v.nbytes, v.shape, v.strides, v.ndim) == (n, (n,), (1,), 1)
        assert v.format == "B" and v.itemsize == 1 and v.readonly
        assert v.c_contiguous and v.contiguous
        assert v.tobytes() == vals[i] and v == vals[i] and hash(v) == hash(vals[i])
        assert bytes(v[1:-1]) == vals[i][1:-1] and v[::2].tobytes() == vals[i][::2]
        assert bytes(log.read(i).value) == vals[i]
        if n >= 4:
            m = n // 4 * 4
            assert v[:m].cast("I").tolist() == memoryview(vals[i][:m]).cast("I").tolist()
    views[5].release()                     # releasing one leaves the others (and new ones) whole
    with pytest.raises(ValueError):
        bytes(views[5])
    assert [bytes(v) for v in views[6:]] == vals[6:]
    assert [bytes(v) for v in batch.values] == vals
    with pytest.raises(TypeError):
        views[7][0] = 1
    with memoryview(views[8]) as again:
        assert again == vals[8]


def test_values_array_is_a_strided_view(log):
    a = np.arange(1000, dtype=np.float64)
    log.append_batch(a)
    b = log.cursor().read_batch()
    arr = b.values_array(np.float64)
    assert np.array_equal(arr, a)
    # one multi-form frame: the values are contiguous (format v2); single-form frames: a
    # 32-byte header + an 8-byte value each
    step = (np.frombuffer(b.values[1], np.uint8).ctypes.data
            - np.frombuffer(b.values[0], np.uint8).ctypes.data)
    assert step in (8, 40) and arr.strides == (step,)
    assert arr.ctypes.data == np.frombuffer(b.values[0], np.uint8).ctypes.data
    with pytest.raises(ValueError, match="8 bytes"):
        log.append(b"odd")
        log.cursor().read_batch().values_array(np.float64)
    with pytest.raises(ValueError):
        b.values_array(np.int32)


def test_values_array_with_mixed_keys_copies(log):
    log.append_batch([b"abcd"] * 4, keys=[b"k", b"kkkkkkkkkk", None, b"k"])
    arr = log.cursor().read_batch().values_array("S4")
    assert list(arr) == [b"abcd"] * 4 and not arr.flags.writeable


def test_views_outlive_close(log_path):
    log = tidelog.open(log_path, segment_bytes=4096)
    log.append_batch([b"x" * 100] * 100, atomic=False)
    views = [log.read(i).value for i in range(0, 100, 9)]
    arr = log.cursor(50).read_batch(1).values_array("S100")
    rec = log.read(3)
    log.close()
    del log
    gc.collect()
    assert all(bytes(v) == b"x" * 100 for v in views)
    assert arr[0] == b"x" * 100
    assert bytes(rec.value) == b"x" * 100


def test_reader_in_another_process_sees_appends(log_path):
    log = tidelog.open(log_path, segment_bytes=4096, durability="none")
    log.append(b"first")
    child = spawn_python("""
        import sys, time, tidelog
        log = tidelog.open(sys.argv[1], readonly=True)
        cur = log.cursor()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 2001 and time.monotonic() < deadline:
            for r in cur:
                got.append(bytes(r.value))
        print(len(got), got[0].decode(), got[-1].decode(), log.end_offset)
    """, log_path)
    for i in range(2000):                 # many segment rolls while the child reads
        log.append(b"rec-%d" % i * 3)
    out, err = child.communicate(timeout=60)
    log.close()
    assert child.returncode == 0, err
    assert out.split() == ["2001", "first", ("rec-1999" * 3), "2001"]


def test_reader_opened_before_anything_was_written(log_path):
    writer = tidelog.open(log_path, segment_bytes=4096, durability="none")
    reader = tidelog.open(log_path, readonly=True)
    assert reader.end_offset == 0 and list(reader.cursor()) == []
    writer.append_batch([b"a" * 1000] * 20, atomic=False)
    assert reader.end_offset == 20
    assert [bytes(r.value) for r in reader.cursor()] == [b"a" * 1000] * 20
    assert bytes(reader.read(19).value) == b"a" * 1000
    writer.close()
    assert reader.durable_offset == 20
    reader.close()


def test_threads_append_concurrently(log_path):
    pad = b"." * 300
    with tidelog.open(log_path, segment_bytes=1 << 22, durability="none") as log:
        def work(t):
            for i in range(2000):
                if i % 50 == 0:
                    log.append_batch([b"%d-%d-" % (t, i) + pad] * 5)
                else:
                    log.append(b"%d-%d-" % (t, i) + pad)
            log.append_batch(np.full((600, 4096), t, np.uint8))   # big: copied without the GIL
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        expected = 4 * (2000 + 40 * 4 + 600)
        assert log.end_offset == expected
        assert len(log.segments()) >= 3
        recs = list(log.cursor())
        assert [r.offset for r in recs] == list(range(expected))
        for t in range(4):                         # each thread's records in its own order
            mine = [bytes(r.value) for r in recs if bytes(r.value).startswith(b"%d-" % t)]
            nums = [int(v.split(b"-")[1]) for v in mine]
            assert nums == sorted(nums)


def test_reads_concurrent_with_appends(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 14, durability="none") as log:
        stop = threading.Event()
        errors = []

        def reader():
            cur = log.cursor()
            try:
                while not stop.is_set() or cur.position < log.end_offset:
                    for r in cur:
                        assert bytes(r.value) == b"%08d" % r.offset
            except Exception as e:           # pragma: no cover - reported below
                errors.append(e)

        th = threading.Thread(target=reader)
        th.start()
        for i in range(0, 20000, 100):
            log.append_batch([b"%08d" % j for j in range(i, i + 100)])
        stop.set()
        th.join()
        assert not errors


def test_threads_append_across_many_rolls(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        def work(t):
            for i in range(1500):
                log.append(b"%d:%06d" % (t, i) + b"." * 90)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert log.end_offset == 6000 and len(log.segments()) > 150
        recs = list(log.cursor())
        assert [r.offset for r in recs] == list(range(6000))
        for t in range(4):
            nums = [int(bytes(r.value)[2:8]) for r in recs if bytes(r.value)[:1] == b"%d" % t]
            assert nums == list(range(1500))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(st.tuples(st.sampled_from([8, 16]), st.one_of(st.none(), st.binary(max_size=9))),
                     min_size=1, max_size=60),
       max_records=st.integers(1, 70))
def test_values_array_agrees_with_values(tmp_path_factory, recs, max_records):
    """values_array (its fast path when read_batch saw uniform sizes and stride, or the numpy
    checks) equals the values one by one, or refuses with ValueError."""
    path = str(tmp_path_factory.mktemp("va") / "log")
    with tidelog.open(path, durability="none", segment_bytes=1 << 16) as log:
        for i, (size, key) in enumerate(recs):
            log.append(bytes([i % 251]) * size, key=key)
        cur = log.cursor()
        while True:
            b = cur.read_batch(max_records)
            if not len(b):
                break
            vals = [bytes(v) for v in b.values]
            for dt in ("V8", "V16", np.int64):
                want = np.dtype(dt).itemsize
                if all(len(v) == want for v in vals):
                    a = b.values_array(dt)
                    assert [x.tobytes() for x in a] == vals
                    assert not a.flags.writeable
                else:
                    with pytest.raises(ValueError):
                        b.values_array(dt)
