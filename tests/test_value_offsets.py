"""append_batch(values, value_offsets=...): n values back to back in one bytes-like object
(Arrow's binary layout), no object per value. Each record reads back as the slice its offsets
name, with keys, timestamps, headers and int_headers as for a list; across segments
(atomic=False) and compressed; every bad offset or argument a clear error with nothing
appended."""
import array

import numpy as np
import pytest

import tidelog


def _slices(buf, offs):
    return [bytes(buf[a:b]) for a, b in zip(offs, offs[1:])]


@pytest.mark.parametrize("form", ["list", "tuple", "int64", "int32", "uint64", "memoryview"])
def test_records_are_the_slices_the_offsets_name(tmp_path, form):
    buf = bytes(range(256)) * 4
    offs = [3, 3, 10, 500, 500, 1024]
    arg = {"list": offs, "tuple": tuple(offs), "int64": np.array(offs, np.int64),
           "int32": np.array(offs, np.int32), "uint64": np.array(offs, np.uint64),
           "memoryview": memoryview(array.array("q", offs))}[form]
    with tidelog.open(tmp_path / "log") as log:
        first = log.append_batch(memoryview(buf), value_offsets=arg,
                                 keys=[b"k%d" % i for i in range(5)],
                                 timestamps=list(range(10, 15)),
                                 headers=[[("h", b"x")], None, None, [("a", b"1")], None],
                                 int_headers={"pos": [7, 8, 9, 10, 11]})
        assert first == 0 and log.end_offset == 5
        for i, want in enumerate(_slices(buf, offs)):
            rec = log.read(i)
            assert bytes(rec.value) == want
            assert rec.key == b"k%d" % i and rec.timestamp == 10 + i
            assert rec.headers[-1] == ("pos", b"%d" % (7 + i))
        assert log.read(0).headers == [("h", b"x"), ("pos", b"7")]


def test_the_same_records_as_a_list_of_the_values(tmp_path):
    rng = np.random.default_rng(5)
    lens = rng.integers(0, 3000, 400)
    offs = np.concatenate([[0], np.cumsum(lens)])
    buf = rng.integers(0, 256, int(offs[-1]), dtype=np.uint8).tobytes()
    with tidelog.open(tmp_path / "a") as a, tidelog.open(tmp_path / "b") as b:
        a.append_batch(bytearray(buf), value_offsets=offs, timestamps=[1] * 400)
        b.append_batch(_slices(buf, offs.tolist()), timestamps=[1] * 400)
        for i in range(400):
            assert bytes(a.read(i).value) == bytes(b.read(i).value)


def test_uniform_values_and_an_empty_batch(tmp_path):
    with tidelog.open(tmp_path / "log") as log:
        assert log.append_batch(b"", value_offsets=[0]) == 0 and log.end_offset == 0
        log.append_batch(b"aabbcc", value_offsets=[0, 2, 4, 6])
        assert [bytes(log.read(i).value) for i in range(3)] == [b"aa", b"bb", b"cc"]


def test_across_segments_and_compressed(tmp_path):
    buf = bytes(range(200)) * 100                       # 20,000 bytes, 100 values of 200
    offs = list(range(0, 20_001, 200))
    with tidelog.open(tmp_path / "seg", segment_bytes=8192) as log:
        log.append_batch(buf, value_offsets=offs, atomic=False)
        assert log.end_offset == 100 and len(log._segment_info()) > 1
        assert [bytes(log.read(i).value) for i in range(100)] == _slices(buf, offs)
    with tidelog.open(tmp_path / "z", compression="zstd") as log:
        log.append_batch(buf, value_offsets=offs)
        assert [bytes(log.read(i).value) for i in range(100)] == _slices(buf, offs)


@pytest.mark.parametrize("values, offsets, exc, words", [
    (b"abc", [0, 2, 1], ValueError, "never decrease"),
    (b"abc", [0, 4], ValueError, "outside"),
    (b"abc", [-1, 2], ValueError, "outside"),
    (b"abc", [], ValueError, "at least one"),
    (b"abc", [0, "1"], TypeError, "value_offsets"),
    (b"abc", [0, 1.5], TypeError, "value_offsets"),
    (b"abc", [0, 2**64], TypeError, "value_offsets"),
    (b"abc", np.array([0, 2**63], np.uint64), ValueError, "int64"),
    (b"abc", np.zeros((2, 2), np.int64), TypeError, "value_offsets"),
    (b"abc", 3, TypeError, "value_offsets"),
    (b"abc", bytearray(b"\x00\x01"), TypeError, "one offset per byte"),
    (b"abc", b"\x00\x01", TypeError, "one offset per byte"),
    (b"abc", memoryview(b"\x00\x01"), TypeError, "one offset per byte"),
    ("abc", [0, 1], TypeError, "values"),
    ([b"a", b"b"], [0, 1, 2], TypeError, "values"),
    (None, [0], TypeError, "values"),
])
def test_bad_offsets_and_values_are_errors_and_nothing_is_appended(tmp_path, values, offsets,
                                                                   exc, words):
    with tidelog.open(tmp_path / "log") as log:
        log.append(b"before")
        with pytest.raises(exc, match=words):
            log.append_batch(values, value_offsets=offsets)
        assert log.end_offset == 1 and bytes(log.read(0).value) == b"before"


def test_other_columns_must_match_the_offsets_count(tmp_path):
    with tidelog.open(tmp_path / "log") as log:
        with pytest.raises(ValueError, match="keys"):
            log.append_batch(b"abcd", value_offsets=[0, 2, 4], keys=[b"k"])
        with pytest.raises(ValueError, match="timestamps"):
            log.append_batch(b"abcd", value_offsets=[0, 2, 4], timestamps=[1, 2, 3])
        with pytest.raises(ValueError, match="headers"):
            log.append_batch(b"abcd", value_offsets=[0, 2, 4], headers=[None])
        assert log.end_offset == 0


def test_the_buffer_is_held_while_appending(tmp_path):
    """A bytearray given as values cannot be resized while append_batch holds it (its buffer
    exported), and is free again after (never a read of freed memory)."""
    ba = bytearray(b"x" * 1000)
    with tidelog.open(tmp_path / "log") as log:
        log.append_batch(ba, value_offsets=[0, 500, 1000])
        ba.extend(b"more")                      # released: resizable again
        assert bytes(log.read(1).value) == b"x" * 500


@pytest.mark.parametrize("offsets", [[0, 9], [0, 3, 2], [-1, 2]])
def test_a_refused_batch_lets_its_buffer_go(tmp_path, offsets):
    """Offsets refused (outside the buffer, decreasing): the buffer is released all the same
    (was: held for ever, the bytearray never resizable again, an mmap never closable)."""
    import mmap
    ba = bytearray(b"abcdef")
    (tmp_path / "f").write_bytes(b"abcdef")
    with tidelog.open(tmp_path / "log") as log, open(tmp_path / "f", "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        for values in (ba, m):
            with pytest.raises(ValueError, match="value_offsets"):
                log.append_batch(values, value_offsets=offsets)
        ba.extend(b"g")
        m.close()
        assert log.end_offset == 0


def test_a_strided_buffer_is_its_bytes_in_order(tmp_path):
    """A non-contiguous buffer (a strided memoryview or array) is taken as its bytes in order
    (copied, as append()'s value is), its length what the offsets are checked against (was:
    numpy's or memoryview's own error, naming neither argument)."""
    arr = np.arange(20, dtype=np.uint8)
    with tidelog.open(tmp_path / "log") as log:
        log.append_batch(arr[::2], value_offsets=[0, 3, 10])
        log.append_batch(memoryview(bytes(arr))[1::2], value_offsets=[0, 10])
        log.append_batch(np.arange(6, dtype=np.uint8).reshape(2, 3).T, value_offsets=[0, 6])
        assert [bytes(log.read(i).value) for i in range(4)] == [
            bytes([0, 2, 4]), bytes([6, 8, 10, 12, 14, 16, 18]), bytes(range(1, 20, 2)),
            bytes([0, 3, 1, 4, 2, 5])]
        with pytest.raises(ValueError, match="outside values' 10 bytes"):
            log.append_batch(arr[::2], value_offsets=[0, 11])
        assert log.end_offset == 4

