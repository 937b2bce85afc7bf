"""Bad input and bad paths get a clear TidelogError / TypeError / ValueError, and change nothing."""
import os
import struct

import numpy as np
import pytest

import tidelog
from conftest import run_python, snapshot_dir


@pytest.mark.parametrize("bad", ["text", 12, 1.5, None, [b"a"], object()])
def test_append_value_type_error_names_argument(log, bad):
    with pytest.raises(TypeError, match="value"):
        log.append(bad)
    assert log.end_offset == 0


@pytest.mark.parametrize("bad", ["text", 3, [1]])
def test_append_key_type_error(log, bad):
    with pytest.raises(TypeError, match="key"):
        log.append(b"v", key=bad)
    assert log.end_offset == 0


@pytest.mark.parametrize("bad", [1.0, "5", b"5"])
def test_append_timestamp_type_error(log, bad):
    with pytest.raises(TypeError, match="timestamp"):
        log.append(b"v", timestamp=bad)


def test_append_timestamp_out_of_range(log):
    with pytest.raises(ValueError, match="timestamp"):
        log.append(b"v", timestamp=1 << 64)


def test_batch_bad_element_appends_nothing(log):
    log.append(b"before")
    with pytest.raises(TypeError, match=r"values\[2\]"):
        log.append_batch([b"a", b"b", "c", b"d"])
    with pytest.raises(TypeError, match=r"keys\[1\]"):
        log.append_batch([b"a", b"b"], keys=[b"k", 5])
    with pytest.raises(ValueError, match="keys"):
        log.append_batch([b"a", b"b"], keys=[b"k"])
    with pytest.raises(ValueError, match="timestamps"):
        log.append_batch([b"a", b"b"], timestamps=[1])
    with pytest.raises(TypeError, match="timestamps"):
        log.append_batch([b"a"], timestamps=[1.5])
    with pytest.raises(TypeError, match="values"):
        log.append_batch(b"abc")
    with pytest.raises(TypeError, match="values"):
        log.append_batch(42)
    with pytest.raises(TypeError, match="values"):
        log.append_batch(np.array([object()]))
    assert log.end_offset == 1
    assert [bytes(r.value) for r in log.cursor()] == [b"before"]


def test_read_out_of_range(log):
    log.append_batch([b"a", b"b"])
    for off in (-1, 2, 10**6, 1 << 70):
        with pytest.raises(tidelog.OffsetOutOfRangeError):
            log.read(off)
    with pytest.raises(IndexError):
        log.read(2)
    with pytest.raises(TypeError, match="offset"):
        log.read("1")


def test_cursor_bad_positions(log):
    log.append_batch([b"a", b"b"])
    with pytest.raises(tidelog.OffsetOutOfRangeError):
        log.cursor(3)
    cur = log.cursor(2)                           # end_offset itself is fine
    assert list(cur) == []
    with pytest.raises(tidelog.OffsetOutOfRangeError):
        cur.seek(-1)
    with pytest.raises(TypeError):
        log.cursor("middle")
    with pytest.raises(ValueError, match="max_records"):
        cur.read_batch(0)


def test_closed_log_raises_log_closed_error(log_path):
    log = tidelog.open(log_path)
    log.append(b"a")
    cur = log.cursor()
    log.close()
    for call in (lambda: log.append(b"x"), lambda: log.append_batch([b"x"]), lambda: log.read(0),
                 log.sync, lambda: log.end_offset, lambda: len(log), lambda: log.cursor(),
                 lambda: next(cur), lambda: cur.read_batch()):
        with pytest.raises(tidelog.LogClosedError):
            call()
    with pytest.raises(ValueError):                  # LogClosedError is also a ValueError
        log.append(b"x")


def test_readonly_log_refuses_appends(log_path):
    tidelog.open(log_path).close()
    with tidelog.open(log_path, readonly=True) as log:
        with pytest.raises(tidelog.TidelogError, match="readonly"):
            log.append(b"x")
        with pytest.raises(tidelog.TidelogError):
            log.sync()


@pytest.mark.parametrize("kw,exc", [
    (dict(segment_bytes=100), ValueError), (dict(segment_bytes="big"), TypeError),
    (dict(segment_bytes=1 << 40), ValueError), (dict(durability="sometimes"), ValueError),
    (dict(durability=1), TypeError), (dict(sync_interval=0), ValueError),
    (dict(sync_interval="1"), TypeError), (dict(retain_bytes=-1), ValueError)])
def test_open_bad_arguments(log_path, kw, exc):
    with pytest.raises(exc, match=list(kw)[0]):
        tidelog.open(log_path, **kw)
    assert not os.path.exists(log_path)


def test_open_bad_path_type():
    with pytest.raises(TypeError, match="path"):
        tidelog.open(42)


def test_missing_log(tmp_path):
    p = str(tmp_path / "none")
    with pytest.raises(FileNotFoundError):
        tidelog.open(p, readonly=True)
    with pytest.raises(FileNotFoundError):
        tidelog.open(p, create=False)
    assert not os.path.exists(p)
    os.mkdir(p)
    with pytest.raises(FileNotFoundError):
        tidelog.open(p, readonly=True)
    assert os.listdir(p) == []


def test_path_is_a_file(tmp_path):
    p = tmp_path / "file"
    p.write_bytes(b"data")
    with pytest.raises(tidelog.TidelogError) as ei:
        tidelog.open(str(p))
    assert isinstance(ei.value, NotADirectoryError)
    assert p.read_bytes() == b"data"


def test_directory_with_other_files_is_untouched(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "notes.txt").write_bytes(b"mine")
    before = snapshot_dir(d)
    for kw in ({}, {"readonly": True}):
        with pytest.raises(tidelog.NotALogError, match="not a tidelog log"):
            tidelog.open(str(d), **kw)
    assert snapshot_dir(d) == before


def test_damaged_control_file_is_reported(log_path):
    tidelog.open(log_path).close()
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.write(b"GARBAGE!")
    before = snapshot_dir(log_path)
    with pytest.raises(tidelog.TidelogError, match="tidelog.ctl"):
        tidelog.open(log_path)
    assert snapshot_dir(log_path) == before


def test_newer_format_version(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"a")
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 3))
    before = snapshot_dir(log_path)
    for kw in ({}, {"readonly": True}):
        with pytest.raises(tidelog.FormatVersionError, match="version 3.*upgrade"):
            tidelog.open(log_path, **kw)
    assert snapshot_dir(log_path) == before


def test_newer_segment_version(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"a")
    seg = os.path.join(log_path, "%020d.seg" % 0)
    with open(seg, "r+b") as f:
        hdr = bytearray(f.read(64))
        hdr[8:12] = struct.pack("<I", 9)
        import crc32c
        hdr[60:64] = struct.pack("<I", crc32c.crc32c(bytes(hdr[:60])))
        f.seek(0)
        f.write(hdr)
    with pytest.raises(tidelog.FormatVersionError):
        tidelog.open(log_path)


def test_second_writer_same_process(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"a")
        with pytest.raises(tidelog.LogLockedError):
            tidelog.open(log_path)
        with tidelog.open(log_path, readonly=True) as reader:   # readers are fine
            assert reader.end_offset == 1
    with tidelog.open(log_path) as log:                         # released on close
        assert log.end_offset == 1


def test_second_writer_other_process(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"a")
        proc = run_python("""
            import sys, tidelog
            try:
                tidelog.open(sys.argv[1])
            except tidelog.LogLockedError as e:
                print("locked", e)
        """, log_path, timeout=30)
        assert proc.stdout.startswith("locked")


def test_lock_released_when_writer_dies(log_path):
    run_python("""
        import os, sys, tidelog
        log = tidelog.open(sys.argv[1])
        log.append(b"a")
        log.sync()
        os._exit(0)          # no close
    """, log_path)
    with tidelog.open(log_path) as log:
        assert log.end_offset == 1


def test_creation_interrupted_before_the_control_file(tmp_path):
    d = tmp_path / "log"
    d.mkdir()
    (d / "tidelog.lock").write_bytes(b"")
    (d / "tidelog.ctl.tmp").write_bytes(b"TDLGCTL\0")        # a crash while creating the log
    with pytest.raises(FileNotFoundError):
        tidelog.open(str(d), readonly=True)
    with tidelog.open(str(d)) as log:
        assert log.append(b"a") == 0
    assert not (d / "tidelog.ctl.tmp").exists()
