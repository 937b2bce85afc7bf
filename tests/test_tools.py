"""The operator tools as a Python API (tidelog.verify, tidelog.repair, tidelog.salvage: what
`tidelog verify` and `tidelog repair` run), on real logs damaged on disk."""
import os
import struct

import pytest

import tidelog


def fill(path, n=200, segment_bytes=4096):
    with tidelog.open(path, segment_bytes=segment_bytes, durability="none") as log:
        for i in range(n):
            log.append(b"r%04d" % i + b"." * 60, key=b"k%d" % i, timestamp=1000 + i)
        return [b for b, _ in log.segments()]


def frame_positions(seg, count):
    with open(seg, "rb") as f:
        data = f.read()
    pos = [64]
    for _ in range(count):
        pos.append(pos[-1] + (struct.unpack_from("<I", data, pos[-1])[0] + 7) // 8 * 8)
    return pos


def test_verify_a_clean_log(tmp_path):
    path = str(tmp_path / "log")
    fill(path)
    seen = []
    report = tidelog.verify(path, progress=lambda done, total: seen.append((done, total)))
    assert report and report.damage is None and report.indexes == []
    assert (report.start, report.end, report.records) == (0, 200, 200)
    assert report.path == os.path.abspath(path)
    assert seen[0] == (0, 200) and seen[-1] == (200, 200)


def test_verify_names_the_damaged_frame(tmp_path):
    path = str(tmp_path / "log")
    bases = fill(path)
    seg = os.path.join(path, "%020d.seg" % bases[1])
    pos = frame_positions(seg, 3)
    with open(seg, "r+b") as f:
        f.seek(pos[2] + 40)                         # a value byte of the segment's 3rd record
        f.write(b"\xff")
    report = tidelog.verify(path)
    assert not report
    d = report.damage
    assert (d.file, d.position, d.offset) == (seg, pos[2], bases[1] + 2)
    assert report.records == bases[1] + 2 and report.indexes == []
    assert "tidelog verify" not in d.reason          # the advice is the caller's to give


def test_verify_reports_a_missing_segment(tmp_path):
    path = str(tmp_path / "log")
    bases = fill(path)
    os.unlink(os.path.join(path, "%020d.seg" % bases[2]))
    report = tidelog.verify(path)
    assert not report and report.damage.offset == bases[2] and report.records == bases[2]


def test_verify_lists_index_problems_and_repair_rebuilds_them(tmp_path):
    path = str(tmp_path / "log")
    bases = fill(path)
    os.unlink(os.path.join(path, "%020d.idx" % bases[1]))
    report = tidelog.verify(path)
    assert report                                   # indexes are hints, not damage
    assert [name for name, _ in report.indexes] == [os.path.join(path, "%020d.idx" % bases[1])]
    fixed = tidelog.repair(path)
    assert fixed.indexes_rebuilt == 1 and fixed.truncated is None
    assert (fixed.start, fixed.end) == (0, 200)
    assert tidelog.verify(path).indexes == []


def test_repair_truncate_cuts_at_the_first_damage(tmp_path):
    path = str(tmp_path / "log")
    with tidelog.open(path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(100):
            log.append(b"v%04d" % i)
    seg = os.path.join(path, "%020d.seg" % 0)
    with open(seg, "r+b") as f:
        f.seek(64 + 40 * 60 + 33)                   # a byte of record 60
        f.write(b"\xff")
    untouched = tidelog.repair(path)                # without truncate nothing is cut
    assert untouched.truncated is None and untouched.end == 100
    report = tidelog.repair(path, truncate=True)
    where, position, offset, problem = report.truncated
    assert (where, offset, report.end) == (seg, 60, 60)
    assert tidelog.verify(path)
    with pytest.raises(TypeError, match="truncate"):
        tidelog.repair(path, truncate="yes")
    with pytest.raises(FileNotFoundError):
        tidelog.repair(str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_salvage_reports_what_it_lost(tmp_path):
    path, out = str(tmp_path / "log"), str(tmp_path / "salvaged")
    bases = fill(path)
    seg = os.path.join(path, "%020d.seg" % bases[1])
    pos = frame_positions(seg, 3)
    with open(seg, "r+b") as f:
        f.seek(pos[2] + 40)
        f.write(b"\xff")
    report = tidelog.salvage(path, out)
    assert report.records == 199 and report.lost == [(bases[1] + 2, bases[1] + 3)]
    with tidelog.open(out, readonly=True) as log:
        assert [r.key for r in log.cursor()] == [b"k%d" % i for i in range(200)
                                                 if i != bases[1] + 2]
    with pytest.raises(ValueError, match="out: .* not empty"):
        tidelog.salvage(path, out)


def test_progress_must_be_callable(tmp_path):
    path = str(tmp_path / "log")
    fill(path, n=3)
    with pytest.raises(TypeError, match="progress"):
        tidelog.verify(path, progress=3)


def test_salvage_counts_a_lost_first_segment(tmp_path):
    """Records lost before the first readable one are reported too (the CLI used to start
    counting gaps at the first record it could read)."""
    path, out = str(tmp_path / "log"), str(tmp_path / "salvaged")
    bases = fill(path)
    os.unlink(os.path.join(path, "%020d.seg" % bases[0]))
    report = tidelog.salvage(path, out)
    assert report.lost == [(0, bases[1])] and report.records == 200 - bases[1]
    for base in bases[1:]:
        os.unlink(os.path.join(path, "%020d.seg" % base))
    report = tidelog.salvage(path, str(tmp_path / "nothing"))
    assert report.records == 0 and report.lost == [(0, 200)]
