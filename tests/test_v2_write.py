"""Format v2's writer read back by the readers: append_batch of lists and numpy arrays makes
multi-form frames (groups of them above _frame_limit); every record reads back as written
(offset, key - None distinct from b"" -, timestamp, value), through read(), cursors,
read_batch / values_array, after reopening, and after a crash-style reopen."""
import os
import struct

import numpy as np
import pytest

import tidelog

from test_recovery import mark_unclean, set_durable


def records(log, start=0):
    return [(r.offset, r.key, r.timestamp, bytes(r.value)) for r in log.cursor(start)]


def expect_of(batches):
    out, off = [], 0
    for vals, keys, tss in batches:
        for i, v in enumerate(vals):
            out.append((off, None if keys is None else keys[i], tss[i],
                        v.tobytes() if isinstance(v, np.ndarray) else bytes(v)))
            off += 1
    return out


def make_batches(seed, n_batches=12):
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(n_batches):
        n = int(rng.integers(1, 400))
        kind = b % 4
        if kind == 0:
            vals = rng.integers(0, 1 << 60, size=(n, 3), dtype=np.int64)
        elif kind == 1:
            vals = [bytes(rng.integers(0, 256, size=int(rng.integers(0, 50)), dtype=np.uint8))
                    for _ in range(n)]
        elif kind == 2:
            vals = [b"u%05d" % i for i in range(n)]             # UNIFORM list
        else:
            vals = [b"" for _ in range(n)]                      # empty values
        keys = None
        if b % 3 == 1:
            keys = [None if i % 4 == 0 else (b"" if i % 4 == 1 else b"key%d" % i) for i in range(n)]
        tss = [1000 + b] * n if b % 2 == 0 else [int(t) for t in rng.integers(0, 10 ** 6, size=n)]
        batches.append((vals, keys, tss))
    return batches


@pytest.mark.parametrize("limit", [1 << 20, 512, 100])
@pytest.mark.parametrize("seg", [1 << 16, 1 << 20])
def test_batches_read_back(log_path, limit, seg):
    batches = make_batches(limit + seg)
    want = expect_of(batches)
    with tidelog.open(log_path, segment_bytes=seg, durability="none") as log:
        log._frame_limit = limit
        for vals, keys, tss in batches:
            log.append_batch(vals, keys=keys, timestamps=tss, atomic=False)
        assert records(log) == want
        for off in range(0, len(want), 7):
            r = log.read(off)
            assert (r.offset, r.key, r.timestamp, bytes(r.value)) == want[off]
    with tidelog.open(log_path, readonly=True) as r:
        assert records(r) == want
        got = []
        cur = r.cursor()
        while True:
            b = cur.read_batch(max_records=97)
            if not len(b):
                break
            got.extend(bytes(v) for v in b.values)
        assert got == [w[3] for w in want]
        assert r._index_problems() == []
    mark_unclean(log_path)
    set_durable(log_path, 0)
    with tidelog.open(log_path, segment_bytes=seg, durability="none") as log:   # recovery scan
        assert log.end_offset == len(want)
        log.append(b"after")
        assert records(log, len(want) - 3) == want[-3:] + [(len(want), None, log.read(len(want)).timestamp, b"after")]


def test_numpy_batch_is_one_zero_copy_view(log_path):
    a = np.arange(8000, dtype=np.float64).reshape(1000, 8)
    with tidelog.open(log_path, durability="none") as log:
        first = log.append_batch(a)
        b = log.cursor(first).read_batch()
        arr = b.values_array(np.dtype((np.float64, 8)))
        assert np.array_equal(arr, a)
        assert arr.ctypes.data % 64 == 0                       # values 64-aligned (vpad)


def test_single_append_stays_single_form(log_path):
    """append() writes the single form; the bytes 28..31 say TS_SHARED|UNIFORM (KEYS)."""
    with tidelog.open(log_path, segment_bytes=8192, durability="none") as log:
        log.append(b"abc", key=b"k", timestamp=5)
        log.append(b"abc", timestamp=5)
    with open(os.path.join(log_path, "%020d.seg" % 0), "rb") as f:
        data = f.read()
    assert struct.unpack_from("<iHH", data, 64 + 24) == (1, 0x70, 0)
    assert struct.unpack_from("<iHH", data, 64 + 48 + 24) == (-1, 0x30, 0)


def test_segment_rolls_at_r_records(log_path):
    """A segment holds at most R = (capacity - 64) / 8 records (FORMAT.md rule 8): zero-byte
    values take ~nothing, so a segment of 4096 bytes rolls after 504 of them."""
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        log.append_batch([b""] * 2000, atomic=False)
        bases = [b for b, _ in log.segments()]
        assert bases[:4] == [0, 504, 1008, 1512]
        with pytest.raises(ValueError, match="records"):
            log.append_batch([b""] * 505)                      # atomic, more than R
        for off in (0, 503, 504, 1999):
            assert log.read(off).offset == off
    with tidelog.open(log_path, readonly=True) as r:
        assert sum(1 for _ in r.cursor()) == 2000


def test_single_appends_after_a_dense_batch_have_index_entries(log_path):
    """Records of a multi-form frame can take a few bytes each, far fewer than the 32 a single
    append takes, which the index files' growth in steps counts on: after such a batch, the
    single appends filling the allocated rest still find their .idx/.tix entries inside the
    files (a store past an index file's end through its mapping was a SIGBUS)."""
    with tidelog.open(log_path, segment_bytes=1 << 26, durability="none") as log:
        for _ in range(6):              # (allocation steps grow to MiBs: long stretches)
            log.append_batch([b""] * 20000)
            for i in range(30000):
                log.append(b"s")
        assert log.end_offset == 300000
        assert log._index_problems() == []
    with tidelog.open(log_path, readonly=True) as r:
        assert [r.read(o).offset for o in range(0, 300000, 997)] == list(range(0, 300000, 997))
