"""The log as Arrow (issue 14, item 1): Cursor.read_arrow / scan_arrow and Log.scan_arrow give
tables equal to the records, zero-copy over the mapping for frames written by append_batch (the
Arrow buffer addresses lie inside the segment's mapping, seen in /proc/self/maps), kept alive
after close() and the log's deletion; value_type columns; durable-only and named cursors;
damage refused; round trips through Parquet and Polars (DuckDB: test_sql.py)."""
import gc
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import tidelog

pa = pytest.importorskip("pyarrow")
sys.path.insert(0, os.path.dirname(__file__))
import v2spec as S  # noqa: E402


def mappings_of(path):
    """(start, end) address ranges of this process's mappings of file `path`."""
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) == 6 else ""
            if name.endswith(" (deleted)"):        # the file was removed since it was mapped
                name = name[:-len(" (deleted)")]
            if name == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def inside(addr, ranges):
    return any(lo <= addr < hi for lo, hi in ranges)


def fill(log):
    """A bit of everything: batches with keys None / b"" / present, varying and uniform sizes,
    per-record timestamps, numpy rows, single appends with and without keys. Returns the
    records as read by a cursor."""
    log.append_batch([b"v%d" % i * (i % 4) for i in range(50)],
                     keys=[[None, b"", b"key%d" % i][i % 3] for i in range(50)])
    log.append(b"single-a", key=b"sk")
    log.append(b"single-bb")
    log.append(b"", key=b"")
    log.append_batch(np.arange(30, dtype=np.float64))
    log.append_batch([b"u%03d" % i for i in range(20)], keys=[b"k"] * 20,
                     timestamps=list(range(1000, 1020)))
    log.append(b"tail")
    return list(log.cursor())


def assert_table_is(table, recs):
    table.validate(full=True)
    assert table.column("offset").to_pylist() == [r.offset for r in recs]
    assert table.column("timestamp").cast(pa.int64()).to_pylist() == [r.timestamp for r in recs]
    assert table.column("key").to_pylist() == [r.key for r in recs]
    assert table.column("value").to_pylist() == [bytes(r.value) for r in recs]


def test_read_arrow_equals_the_records(log):
    recs = fill(log)
    t = log.cursor().read_arrow()
    assert t.schema.names == ["offset", "timestamp", "key", "value"]
    assert t.schema.field("timestamp").type == pa.timestamp("ns", "UTC")
    assert t.schema.field("key").type == pa.binary() and t.schema.field("key").nullable
    assert_table_is(t, recs)
    # one chunk per frame: batch, run of 3 singles, numpy batch, keyed batch, single
    assert t.column("value").num_chunks == 5
    assert [len(c) for c in t.column("value").chunks] == [50, 3, 30, 20, 1]


def test_read_arrow_moves_the_cursor_and_stops_at_max_records(log):
    recs = fill(log)
    cur = log.cursor(10)
    parts = []
    while True:
        t = cur.read_arrow(7)
        if t.num_rows == 0:
            break
        assert t.num_rows <= 7
        parts.append(t)
    assert cur.position == log.end_offset
    assert_table_is(pa.concat_tables(parts), recs[10:])
    assert cur.read_arrow().num_rows == 0
    assert cur.read_arrow().schema == t.schema


def test_buffers_are_the_mapping(log, log_path):
    recs = fill(log)
    seg = os.path.join(log_path, "%020d.seg" % 0)
    t = log.cursor().read_arrow()
    ranges = mappings_of(seg)
    assert ranges
    value, key = t.column("value"), t.column("key")
    for i in (0, 2, 3):                        # the frames append_batch wrote: zero-copy
        v_off, v_data = value.chunks[i].buffers()[1:3]
        assert inside(v_data.address, ranges), i
        if i != 2:                             # (a frame without keys has no key buffer)
            assert inside(v_off.address, ranges) or i == 3   # uniform sizes: offsets made
            k_data = key.chunks[i].buffers()[2]
            assert inside(k_data.address, ranges), i
    # the keyed batch's timestamps column: the frame's own
    ts = t.column("timestamp").chunks[3].buffers()[1]
    assert inside(ts.address, ranges)
    # single appends are not columnar on disk: copied, once per run
    assert not inside(value.chunks[1].buffers()[2].address, ranges)
    assert_table_is(t, recs)
    # value_type: zero-copy too
    ft = log.cursor(53).read_arrow(30, value_type=np.float64).column("value")
    assert ft.num_chunks == 1 and inside(ft.chunks[0].buffers()[1].address, ranges)
    assert ft.to_pylist() == [float(i) for i in range(30)]


def test_table_outlives_close_and_deletion(log_path):
    log = tidelog.open(log_path, durability="none", segment_bytes=1 << 16)
    recs = [(r.offset, r.timestamp, r.key, bytes(r.value)) for r in fill(log)]
    t = log.cursor().read_arrow()
    r = log.scan_arrow(batch_records=10)
    first = r.read_next_batch()
    seg = os.path.join(log_path, "%020d.seg" % 0)
    log.close()
    shutil.rmtree(log_path)
    gc.collect()
    assert mappings_of(seg)                    # the table keeps the mapping alive ...
    got = list(zip(t.column("offset").to_pylist(),
                   t.column("timestamp").cast(pa.int64()).to_pylist(),
                   t.column("key").to_pylist(), t.column("value").to_pylist()))
    assert got == recs                         # ... and reads it without a crash
    assert first.column("value").to_pylist() == [v for _, _, _, v in recs[:10]]
    with pytest.raises(tidelog.LogClosedError):
        r.read_next_batch()                    # the reader's next read needs the log
    del t, first, r
    gc.collect()
    assert not mappings_of(seg)                # ... and only while it lives


def test_table_outlives_retention(tmp_path):
    with tidelog.open(tmp_path / "log", durability="none", segment_bytes=1 << 14) as log:
        for i in range(20):
            log.append_batch([b"%05d" % (i * 100 + j) * 8 for j in range(100)])
        t = log.cursor().read_arrow(300)
        want = [b"%05d" % j * 8 for j in range(300)]
        log.truncate_before(log.end_offset - 50)
        assert log.start_offset > 300
        gc.collect()
        assert t.column("value").to_pylist() == want
        t2 = log.cursor().read_arrow()
        assert t2.column("offset")[0].as_py() == log.start_offset


def test_table_outlives_close_in_a_child_process(tmp_path):
    """The same after the interpreter's own teardown order: no crash at exit."""
    code = f"""
import gc, shutil, tidelog
log = tidelog.open({str(tmp_path / 'log')!r})
log.append_batch([b"x" * 100] * 1000, keys=[b"k"] * 1000)
t = log.cursor().read_arrow()
log.close(); shutil.rmtree({str(tmp_path / 'log')!r}); gc.collect()
assert t.column("value").to_pylist() == [b"x" * 100] * 1000
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


@pytest.mark.parametrize("vt,expect", [
    (np.float64, [float(i) for i in range(30)]),
    ("<f8", [float(i) for i in range(30)]),
    (pa.float64(), [float(i) for i in range(30)]),
    (pa.int64(), [int(np.float64(i).view(np.int64)) for i in range(30)]),
    (pa.binary(8), [np.float64(i).tobytes() for i in range(30)]),
    (pa.list_(pa.float32(), 2), [np.array([i], np.float64).view(np.float32).tolist()
                                 for i in range(30)]),
    (np.dtype((np.uint32, 2)), [np.array([i], np.float64).view(np.uint32).tolist()
                                for i in range(30)]),
])
def test_value_type_columns(log, vt, expect):
    fill(log)
    t = log.cursor(53).read_arrow(30, value_type=vt)
    t.validate(full=True)
    assert t.column("value").to_pylist() == expect
    assert t.column("offset").to_pylist() == list(range(53, 83))


def test_structured_value_type(log):
    dt = np.dtype([("user", "<u4"), ("amount", "<f8"), ("flag", "u1"), ("pad", "V3")])
    rows = np.zeros(100, dt)
    rows["user"] = np.arange(100) % 7
    rows["amount"] = np.arange(100) * 0.5
    rows["flag"] = np.arange(100) % 2
    log.append_batch(rows)
    log.append(rows[:1].tobytes())            # a single append: a run, copied
    t = log.cursor().read_arrow(value_type=dt)
    t.validate(full=True)
    col = t.column("value")
    assert col.type == pa.struct([("user", pa.uint32()), ("amount", pa.float64()),
                                  ("flag", pa.uint8()), ("pad", pa.binary(3))])
    assert col.combine_chunks().field("user").to_pylist() == list(rows["user"]) + [0]
    assert col.combine_chunks().field("amount").to_pylist() == list(rows["amount"]) + [0.0]


def test_value_type_of_single_appends(log):
    for i in range(10):
        log.append(struct.pack("<q", i * 3), key=b"k" if i % 2 else None)
    t = log.cursor().read_arrow(value_type=pa.int64())
    assert t.column("value").to_pylist() == [i * 3 for i in range(10)]
    assert t.column("key").to_pylist() == [b"k" if i % 2 else None for i in range(10)]


def test_value_type_size_mismatch_and_bad_types(log):
    fill(log)
    with pytest.raises(ValueError, match="every value must be 4 bytes"):
        log.cursor(53).read_arrow(30, value_type=np.float32)
    with pytest.raises(ValueError, match="sizes range"):
        log.cursor(0).read_arrow(value_type=np.uint8)
    with pytest.raises(ValueError, match="value_type.*fixed-width"):
        log.cursor().read_arrow(value_type=pa.string())
    with pytest.raises(ValueError, match="value_type.*fixed-width"):
        log.cursor().read_arrow(value_type=pa.bool_())
    with pytest.raises(ValueError, match="big-endian"):
        log.cursor().read_arrow(value_type=">f8")
    with pytest.raises(TypeError, match="value_type"):
        log.cursor().read_arrow(value_type=object())
    with pytest.raises(ValueError, match="value_type.*zero-sized"):
        log.cursor().read_arrow(value_type=np.dtype([]))
    cur = log.cursor(53)
    with pytest.raises(ValueError):
        cur.read_arrow(value_type=pa.string())
    assert cur.position == 53                  # a bad value_type reads nothing


def test_bad_arguments(log):
    fill(log)
    cur = log.cursor()
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_records"):
            cur.read_arrow(bad)
    with pytest.raises(TypeError, match="max_records"):
        cur.read_arrow("10")
    with pytest.raises(ValueError, match="batch_records"):
        log.scan_arrow(batch_records=0)
    with pytest.raises(TypeError, match="stop"):
        log.scan_arrow(stop="end")
    with pytest.raises(TypeError, match="headers"):
        log.scan_arrow(headers=1)
    with pytest.raises(tidelog.OffsetOutOfRangeError):
        log.scan_arrow(start=log.end_offset + 1)
    cur.close()
    with pytest.raises(tidelog.LogClosedError):
        cur.read_arrow()


def test_scan_arrow_ranges_and_batches(log):
    recs = fill(log)
    r = log.scan_arrow()
    assert isinstance(r, pa.RecordBatchReader)
    assert_table_is(r.read_all(), recs)
    r = log.scan_arrow(start=5, stop=60, batch_records=8)
    batches = list(r)
    assert all(0 < b.num_rows <= 8 for b in batches)
    assert_table_is(pa.Table.from_batches(batches), recs[5:60])
    assert log.scan_arrow(start="latest").read_all().num_rows == 0
    assert log.scan_arrow(start=10, stop=10).read_all().num_rows == 0
    t = log.scan_arrow(headers=True).read_all()
    assert t.schema.names[-1] == "headers" and t.column("headers").to_pylist() == [[]] * len(recs)
    cur = log.cursor(100)
    t = cur.scan_arrow(stop=102).read_all()
    assert t.column("offset").to_pylist() == [100, 101] and cur.position == 102


def test_durable_only_and_named_cursors(tmp_path):
    with tidelog.open(tmp_path / "log", durability="none") as log:
        log.append_batch([b"a"] * 10)
        log.sync()
        log.append_batch([b"b"] * 5)
        assert log.durable_offset == 10 and log.end_offset == 15
        assert log.cursor().read_arrow().num_rows == 15
        assert log.cursor(durable_only=True).read_arrow().num_rows == 10
        assert log.scan_arrow(durable_only=True).read_all().num_rows == 10
        assert log.scan_arrow(name="x").read_all().num_rows == 10
        cur = log.cursor(name="sub")
        assert cur.read_arrow().column("value").to_pylist() == [b"a"] * 10
        cur.commit()
        log.sync()
        assert log.positions() == {"sub": 10}
        cur2 = log.cursor(name="sub")
        t = cur2.scan_arrow().read_all()
        assert t.column("value").to_pylist() == [b"b"] * 5
        cur2.commit()
        assert log.scan_arrow(name="sub").read_all().num_rows == 0


def test_damaged_frame_is_refused(tmp_path):
    recs = [S.Rec(b"%04d" % i * 4, b"k%d" % i, 7) for i in range(600)]
    built = S.write_log(str(tmp_path / "log"), [[S.Frame(recs[:300]), S.Frame(recs[300:])]])
    pos2 = built.segs[0].frames[1][0]
    with open(S.seg_path(built.path, 0), "r+b") as f:     # a flipped value byte in frame 2
        f.seek(pos2 + 4000)
        b = f.read(1)
        f.seek(pos2 + 4000)
        f.write(bytes([b[0] ^ 1]))
    with tidelog.open(built.path, readonly=True) as log:
        t = log.cursor().read_arrow(300)
        assert t.column("value").to_pylist() == [r.value for r in recs[:300]]
        with pytest.raises(tidelog.CorruptLogError, match="CRC"):
            log.cursor(300).read_arrow()
        cur = log.cursor()
        assert cur.read_arrow().num_rows == 300     # what is good first (as read_batch) ...
        with pytest.raises(tidelog.CorruptLogError):
            cur.read_arrow()                        # ... then the damage: refused
        assert cur.position == 300
        with pytest.raises(tidelog.CorruptLogError):
            log.scan_arrow().read_all()


def test_headers_column_from_spec_frames(tmp_path):
    recs = [S.Rec(b"value%d" % i, b"k%d" % i if i % 2 else None, 100 - i,
                  tuple((b"h%d" % j, b"x" * j) for j in range(i % 4))) for i in range(25)]
    built = S.write_log(str(tmp_path / "log"), [[
        S.Frame(recs[:10]), S.Frame(recs[10:11], "single"), S.Frame(recs[11:12]),
        S.Frame(recs[12:25], ts_shared=False), S.Frame([S.Rec(b"plain")], "single")]])
    with tidelog.open(built.path, readonly=True) as log:
        t = log.cursor().read_arrow()
        t.validate(full=True)
        assert t.schema.names[-1] == "headers"
        want = [[{"name": n.decode(), "value": v} for n, v in r.headers] for r in recs] + [[]]
        assert t.column("headers").to_pylist() == want
        assert t.column("value").to_pylist() == [r.value for r in recs] + [b"plain"]
        assert t.column("timestamp").cast(pa.int64()).to_pylist() == [r.ts for r in recs] + [0]
        inner = log.cursor(3).read_arrow(4)            # records inside a frame
        assert inner.column("headers").to_pylist() == want[3:7]
        assert log.cursor().read_arrow(headers=False).schema.names[-1] == "value"
        assert len(list(log.scan_arrow(headers=True))) == 5


def test_parquet_round_trip(log, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    recs = fill(log)
    pq.write_table(log.cursor().read_arrow(), tmp_path / "out.parquet")
    assert_table_is(pq.read_table(tmp_path / "out.parquet"), recs)
    with pq.ParquetWriter(tmp_path / "s.parquet", log.scan_arrow().schema) as w:
        for b in log.scan_arrow(batch_records=9):
            w.write_batch(b)
    assert_table_is(pq.read_table(tmp_path / "s.parquet"), recs)


def test_polars_round_trip(log):
    pl = pytest.importorskip("polars")
    recs = fill(log)
    df = pl.from_arrow(log.cursor().read_arrow())
    assert df["offset"].to_list() == [r.offset for r in recs]
    assert df["key"].to_list() == [r.key for r in recs]
    assert df["value"].to_list() == [bytes(r.value) for r in recs]
    assert df["timestamp"].cast(pl.Int64).to_list() == [r.timestamp for r in recs]
    lazy = pl.from_arrow(log.scan_arrow(batch_records=16).read_all())
    assert lazy.filter(pl.col("key") == b"k").height == 20


def test_without_pyarrow_the_error_names_the_extra(log, monkeypatch):
    fill(log)
    for name in list(sys.modules):
        if name == "pyarrow" or name.startswith("pyarrow."):
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"tidelog\[arrow\]"):
        log.cursor().read_arrow()
    with pytest.raises(ImportError, match=r"tidelog\[arrow\]"):
        log.scan_arrow()


def test_pyarrow_and_duckdb_are_imported_only_when_used(tmp_path):
    code = f"""
import sys, tidelog, tidelog.cli
from click.testing import CliRunner
with tidelog.open({str(tmp_path / 'log')!r}) as log:
    log.append_batch([b"a", b"b"])
    list(log.cursor()); log.cursor().read_batch()
CliRunner().invoke(tidelog.cli.cli, ["info", {str(tmp_path / 'log')!r}])
assert not {{"pyarrow", "duckdb", "polars"}} & set(sys.modules), sorted(sys.modules)
with tidelog.open({str(tmp_path / 'log')!r}) as log:
    assert log.cursor().read_arrow().num_rows == 2
assert "pyarrow" in sys.modules and "duckdb" not in sys.modules
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_frames_give_their_inflated_columns(tmp_path, codec):
    # a compressed frame's part reads its columns from the inflated copy, not the stored bytes
    log = tidelog.open(str(tmp_path / "l"), compression=codec)
    vals = [b'{"user": %d, "page": "/p/%d"}' % (i, i % 7) * 3 for i in range(5000)]
    keys = [b"k%d" % (i % 10) for i in range(5000)]
    hdrs = [[("h", b"x%d" % i)] if i % 2 else None for i in range(5000)]
    log.append_batch(vals, keys=keys, headers=hdrs)
    for v in vals[:10]:
        log.append(v)
    log.sync()
    t = log.cursor(0).read_arrow()
    log.close()
    assert t.column("value").to_pylist() == vals + vals[:10]
    assert t.column("key").to_pylist()[:5000] == keys
    assert [[(h["name"], h["value"]) for h in r] for r in t.column("headers").to_pylist()[:5000]] \
        == [h or [] for h in hdrs]
