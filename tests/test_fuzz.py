"""Arbitrary bytes where frames should be: opening, recovering and reading never crash, hang or
read out of bounds; they either hand out CRC-valid records or raise CorruptLogError."""
import os
import shutil
import struct
import tempfile

import crc32c as oracle
from hypothesis import HealthCheck, given, settings, strategies as st

import tidelog

SEG = "%020d.seg" % 0


def build_log(payload, clean, end, segment_bytes=8192):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "log")
    with tidelog.open(path, segment_bytes=segment_bytes, durability="none") as log:
        log.append(b"seed")
    with open(os.path.join(path, SEG), "r+b") as f:
        f.seek(64)
        f.write(payload[:segment_bytes - 64])
    with open(os.path.join(path, "tidelog.ctl"), "r+b") as f:
        f.seek(12)
        f.write(struct.pack("<I", 1 if clean else 0))
        f.seek(24)
        f.write(struct.pack("<qq", end, 0))           # end offset, durable offset 0
    return d, path


def check_readable(path):
    try:
        with tidelog.open(path, readonly=True) as log:
            n = 0
            try:
                for rec in log.cursor():
                    assert rec.offset == n
                    bytes(rec.value), rec.key
                    n += 1
                for off in range(log.end_offset):
                    log.read(off)
            except tidelog.CorruptLogError:
                pass
    except tidelog.CorruptLogError:
        pass


def frame(off, value, key=None):
    ka = 0 if key is None else (len(key) + 7) // 8 * 8
    length = 32 + ka + len(value)
    body = struct.pack("<qqiHH", off, 0, -1 if key is None else len(key),
                       0x30 | (0 if key is None else 0x40), 0)      # single form, FORMAT.md §2
    body += (key or b"").ljust(ka, b"\0") + value
    crc = oracle.crc32c(body, oracle.crc32c(struct.pack("<I", length)))
    f = struct.pack("<II", length, crc) + body
    return f + b"\0" * (-len(f) % 8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.booleans(), st.integers(0, 300))
def test_random_bytes(payload, clean, end):
    d, path = build_log(payload, clean, end)
    try:
        check_readable(path)                       # a reader on the raw damage
        try:
            with tidelog.open(path, durability="none") as log:   # the writer recovers
                good = [bytes(r.value) for r in log.cursor()]
                log.append(b"after")
            with tidelog.open(path, readonly=True) as log:
                assert [bytes(r.value) for r in log.cursor()] == good + [b"after"]
        except tidelog.CorruptLogError:
            pass
    finally:
        shutil.rmtree(d)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=20), st.data())
def test_valid_frames_with_mutations(values, data):
    """Valid frames with a few random byte changes: recovery keeps exactly a valid prefix."""
    payload = bytearray(b"".join(frame(i, v) for i, v in enumerate(values)))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    d, path = build_log(bytes(payload), False, len(values))     # unclean: recovery scans
    try:
        check_readable(path)
        with tidelog.open(path, durability="none") as log:
            got = [bytes(r.value) for r in log.cursor()]
        assert got == values[:len(got)]            # a prefix of what was written, never garbage
    finally:
        shutil.rmtree(d)
