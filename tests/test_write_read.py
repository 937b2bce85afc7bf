"""Appending and reading back: single records, batches of every accepted kind, rolls, reopen."""
import os

import numpy as np
import pytest

import tidelog


def values_of(log, start=None):
    return [bytes(r.value) for r in log.cursor(start if start is not None else "earliest")]


def test_offsets_are_dense_from_zero(log):
    assert (log.start_offset, log.end_offset, len(log)) == (0, 0, 0)
    assert [log.append(b"%d" % i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert log.append_batch([b"a", b"b"]) == 5
    assert log.end_offset == 7 and len(log) == 7
    assert values_of(log) == [b"0", b"1", b"2", b"3", b"4", b"a", b"b"]


def test_record_fields(log):
    log.append(b"v", key=b"k", timestamp=123)
    log.append(b"w")
    r = log.read(0)
    assert (r.offset, r.timestamp, r.key, bytes(r.value)) == (0, 123, b"k", b"v")
    r1 = log.read(1)
    assert r1.key is None and abs(r1.timestamp - __import__("time").time_ns()) < 60e9


def test_empty_key_differs_from_no_key(log):
    log.append(b"a", key=b"")
    log.append(b"b")
    assert log.read(0).key == b"" and log.read(1).key is None


def test_bytes_like_inputs(log):
    arr = np.arange(4, dtype=np.int32)
    noncontig = np.arange(10, dtype=np.uint8)[::2]
    inputs = [b"bytes", bytearray(b"ba"), memoryview(b"mv"), arr, noncontig,
              memoryview(b"abcdef")[::2]]
    for v in inputs:
        log.append(v, key=memoryview(b"key"))
    assert values_of(log) == [b"bytes", b"ba", b"mv", arr.tobytes(), noncontig.tobytes(), b"ace"]
    assert all(r.key == b"key" for r in log.cursor())


@pytest.mark.parametrize("kind", ["list", "tuple", "generator"])
def test_batch_iterables(log, kind):
    vals = [b"x" * i for i in range(50)]
    src = {"list": vals, "tuple": tuple(vals), "generator": (v for v in vals)}[kind]
    assert log.append_batch(src) == 0
    assert values_of(log) == vals


def test_batch_numpy_2d_uint8(log):
    a = np.arange(6 * 40, dtype=np.uint8).reshape(40, 6)
    first = log.append_batch(a)
    assert values_of(log, first) == [row.tobytes() for row in a]


@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.dtype([("a", "<i4"), ("b", "<f8")])])
def test_batch_numpy_1d_fixed_dtype_roundtrip(log, dtype):
    a = np.zeros(100, dtype=dtype)
    if a.dtype.names:
        a["a"] = np.arange(100)
        a["b"] = np.arange(100) / 3
    else:
        a[:] = np.arange(100)
    log.append_batch(a)
    b = log.cursor().read_batch()
    got = b.values_array(dtype)
    assert np.array_equal(got, a)
    assert not got.flags.writeable


def test_batch_numpy_noncontiguous(log):
    a = np.arange(200, dtype=np.int64).reshape(100, 2)[:, 0]
    log.append_batch(a)
    assert np.array_equal(log.cursor().read_batch().values_array(np.int64), a)


def test_batch_keys_and_timestamps(log):
    log.append_batch([b"a", b"b", b"c"], keys=[b"k1", None, bytearray(b"k3")],
                     timestamps=np.array([5, 6, 7]))
    recs = list(log.cursor())
    assert [r.key for r in recs] == [b"k1", None, b"k3"]
    assert [r.timestamp for r in recs] == [5, 6, 7]


def test_empty_batch(log):
    log.append(b"a")
    assert log.append_batch([]) == 1
    assert log.append_batch(np.empty((0, 8), np.uint8)) == 1
    assert log.end_offset == 1


def test_segments_roll_and_reads_cross_them(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(500):
            log.append(b"%05d" % i * 10)
        segs = log.segments()
        assert len(segs) > 10
        assert [os.path.basename(p) for _, p in segs] == sorted(os.path.basename(p) for _, p in segs)
        for base, path in segs:
            assert os.path.basename(path) == "%020d.seg" % base
            assert log.read(base).offset == base
        assert values_of(log) == [b"%05d" % i * 10 for i in range(500)]
        for off in (0, 1, 77, 250, 499):
            assert bytes(log.read(off).value) == b"%05d" % off * 10


def test_batch_is_one_segment_or_value_error(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        log.append(b"x" * 1000)
        first = log.append_batch([b"y" * 100] * 30)       # does not fit the rest: rolls first
        assert first == 1
        assert len(log.segments()) == 2 and log.segments()[1][0] == 1
        with pytest.raises(ValueError, match="segment"):
            log.append_batch([b"z" * 100] * 100)          # larger than a segment
        assert log.end_offset == 31
        first = log.append_batch([b"z" * 100] * 100, atomic=False)
        assert (first, log.end_offset) == (31, 131)
        assert values_of(log, 31) == [b"z" * 100] * 100
        assert len(log.segments()) >= 4


def test_record_too_large_for_segment(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        log.append(b"a")
        with pytest.raises(ValueError, match="segment_bytes"):
            log.append(b"x" * 5000)
        assert log.end_offset == 1
        log.append(b"x" * (4096 - 64 - 32))               # exactly a whole segment
        assert len(log.read(1).value) == 4000


def test_reopen_is_exact(log_path):
    vals = [os.urandom(i % 300) for i in range(3000)]
    with tidelog.open(log_path, segment_bytes=1 << 18, durability="none") as log:
        log.append_batch(vals[:1000])
        for v in vals[1000:]:
            log.append(v, key=v[:3])
    with tidelog.open(log_path) as log:
        assert (log.start_offset, log.end_offset, log.durable_offset) == (0, 3000, 3000)
        assert values_of(log) == vals
        assert log.append(b"after") == 3000
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == 3001 and bytes(log.read(3000).value) == b"after"


def test_reopen_with_other_segment_bytes(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        log.append_batch([b"a" * 100] * 10)
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        log.append_batch([b"b" * 100] * 100)
        assert values_of(log) == [b"a" * 100] * 10 + [b"b" * 100] * 100


def test_sync_and_durable_offset(log_path):
    with tidelog.open(log_path, durability="none") as log:
        log.append_batch([b"a"] * 10)
        assert log.durable_offset == 0
        assert log.sync() == 10 == log.durable_offset
    with tidelog.open(log_path, durability="always") as log:
        log.append(b"b")
        assert log.durable_offset == 11
        log.append_batch([b"c"] * 3)
        assert log.durable_offset == 14
    with tidelog.open(log_path, durability="batch", sync_interval=0.001) as log:
        log.append(b"d")
        import time
        deadline = time.monotonic() + 10
        while log.durable_offset < 15 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert log.durable_offset == 15                 # the flusher synced it on its own


def test_close_is_idempotent_and_context_manager(log_path):
    log = tidelog.open(log_path)
    log.append(b"x")
    log.close()
    log.close()
    assert log.closed
    with tidelog.open(log_path) as log2:
        assert log2.end_offset == 1
    assert log2.closed


def test_index_used_and_rebuilt(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 20, durability="none") as log:
        log.append_batch([b"%06d" % i for i in range(20000)])
    idx = os.path.join(log_path, "%020d.idx" % 0)
    with open(idx, "r+b") as f:            # damage the index: it is only a hint
        f.seek(64 + 8 * 5)
        f.write(b"\xff" * 80)
    with tidelog.open(log_path, readonly=True) as log:
        for off in (0, 4000, 12345, 19999):
            assert bytes(log.read(off).value) == b"%06d" % off
    os.unlink(idx)
    with tidelog.open(log_path, durability="none") as log:
        for off in (0, 4000, 12345, 19999):
            assert bytes(log.read(off).value) == b"%06d" % off
        log.append(b"more")
    with tidelog.open(log_path, readonly=True) as log:
        assert bytes(log.read(20000).value) == b"more"



@pytest.mark.parametrize("pwrite_min", [1 << 62, 8192, 1])
def test_batch_write_paths_agree(log_path, pwrite_min):
    """Batches go through the mapping or through pwrite by size: both write the same log."""
    vals = [os.urandom(i % 700) for i in range(5000)]
    with tidelog.open(log_path, segment_bytes=1 << 20, durability="none") as log:
        log._pwrite_min = pwrite_min
        for i in range(0, 5000, 250):
            log.append_batch(vals[i:i + 250], keys=[b"k%d" % j for j in range(i, i + 250)])
        log.append_batch(vals * 3, atomic=False)               # rolls within a run
        log.append(b"single")
    with tidelog.open(log_path, readonly=True) as log:
        recs = list(log.cursor())
    assert [bytes(r.value) for r in recs] == vals + vals * 3 + [b"single"]
    assert [r.key for r in recs[:5000]] == [b"k%d" % j for j in range(5000)]


def test_wait_durable(log_path):
    import threading
    import time
    with tidelog.open(log_path, durability="none") as log:
        off = log.append(b"a")
        assert log.wait_durable(off, timeout=0.05) is False      # nobody syncs in "none"
        threading.Timer(0.05, log.sync).start()
        assert log.wait_durable(off, timeout=30) is True
        assert log.wait_durable(off) is True                     # already durable
        with pytest.raises(TypeError, match="offset"):
            log.wait_durable("1")
        with pytest.raises(ValueError, match="timeout"):
            log.wait_durable(off, timeout=-1)
    with tidelog.open(log_path, durability="batch", sync_interval=0.002) as log:
        off = log.append(b"b")
        assert log.wait_durable(off, timeout=30) and log.durable_offset > off
    with tidelog.open(log_path, durability="always") as log:
        results = []

        def waiter(o):
            results.append(log.wait_durable(o, timeout=30))
        off = log.end_offset
        th = threading.Thread(target=waiter, args=(off,))
        th.start()
        log.append(b"c")
        th.join()
        assert results == [True]
    reader = tidelog.open(log_path, readonly=True)
    assert reader.wait_durable(off, timeout=1) is True
    assert reader.wait_durable(off + 5, timeout=0.05) is False
    reader.close()


def test_always_mode_threads_each_append_returns_durable(log_path):
    import threading
    errors = []
    with tidelog.open(log_path, durability="always", segment_bytes=1 << 16) as log:
        def work(t):
            for i in range(150):
                off = log.append(b"%d-%d" % (t, i) + b"." * 100)
                if log.durable_offset <= off:
                    errors.append((t, off, log.durable_offset))
        ths = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        assert not errors and log.durable_offset == log.end_offset == 600


def test_large_single_appends_take_the_pwrite_path(tmp_path):
    """Single records of 8 KiB and more are staged and written with pwrite; their frames are the
    same as any single append's (a single-form frame, no MORE), and reads, reopen and readers agree."""
    import struct
    path = str(tmp_path / "l")
    sizes = [100, 8191, 8192, 70_000, 5, 65536, 9000]
    vals = [bytes([i + 1]) * n for i, n in enumerate(sizes)]
    with tidelog.open(path, durability="always", segment_bytes=1 << 17) as log:
        for i, v in enumerate(vals):
            assert log.append(v, key=b"k%d" % i) == i
        assert [bytes(r.value) for r in log.cursor()] == vals
    with tidelog.open(path, readonly=True) as r:
        assert [bytes(x.value) for x in r.cursor()] == vals
        assert [x.key for x in r.cursor()] == [b"k%d" % i for i in range(len(vals))]
        for base, seg in r.segments():
            with open(seg, "rb") as f:
                data = f.read()
            pos = 64
            while pos + 32 <= len(data):
                length, = struct.unpack_from("<I", data, pos)
                if length == 0:
                    break
                # attributes TS_SHARED|UNIFORM|KEYS, vpad 0 (FORMAT.md §2): a group of one
                assert struct.unpack_from("<I", data, pos + 28)[0] == 0x70
                pos += (length + 7) & ~7
