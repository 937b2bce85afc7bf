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


# --- format v2: spec-built multi-form frames (tests/v2spec.py), mutated ----------------------

import v2spec                                               # noqa: E402
from v2spec import Frame, Rec                               # noqa: E402

recs_st = st.lists(st.tuples(st.binary(max_size=40),
                             st.one_of(st.none(), st.binary(max_size=9)),
                             st.integers(0, 1 << 40),
                             st.lists(st.tuples(st.binary(max_size=5), st.binary(max_size=5)),
                                      max_size=2)),
                   min_size=1, max_size=12)


def spec_payload(groups, shared, uniform_pad, codec=0):
    """Frames for `groups` (lists of record lists: a group of frames chained by MORE) placed
    from byte 64 as the spec says; (payload bytes, records in order)."""
    frames, records = [], []
    for g in groups:
        for k, rs in enumerate(g):
            recs = [Rec(v.ljust(uniform_pad, b"u") if uniform_pad else v, key,
                        0 if shared else ts, tuple(h)) for v, key, ts, h in rs]
            frames.append(Frame(recs, more=k < len(g) - 1, codec=codec)
                          if len(recs) > 1 or recs[0].headers
                          else Frame(recs, form="single", more=k < len(g) - 1, codec=codec))
            records.extend(recs)
    seg = v2spec.segment(0, frames, capacity=1 << 16)
    end = seg.frames[-1][0] + v2spec.align8(struct.unpack_from("<I", seg.data, seg.frames[-1][0])[0])
    return seg.data[64:end], seg.frames, records


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(recs_st, min_size=1, max_size=3), min_size=1, max_size=4),
       st.booleans(), st.sampled_from([0, 8, 40]), st.sampled_from([0, 1, 2]), st.data())
def test_multi_frames_with_mutations(groups, shared, pad, codec, data):
    """Multi-form frames (columns, keys None and b"", headers, groups) with a few random byte
    changes: recovery keeps a prefix of whole groups, never garbage; with the CRC recomputed
    after the change (a forgery), readers and recovery still never crash or read out of
    bounds (rules 3 and 5), they hand out records or raise CorruptLogError. Frames compressed
    (codec 1 zstd, 2 lz4: issue 14) too: a forged compressed frame is damage at the read."""
    payload, placed, records = spec_payload(groups, shared, pad, codec)
    payload = bytearray(payload)
    forge = data.draw(st.booleans())
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    if forge:
        for pos, _, _ in placed:
            p = pos - 64
            length = struct.unpack_from("<I", payload, p)[0]
            if 32 <= length <= len(payload) - p:
                payload[p:p + length] = v2spec.fix_crc(bytes(payload[p:p + length]))
    d, path = build_log(bytes(payload), False, len(records))     # unclean: recovery scans
    try:
        check_readable(path)
        try:
            with tidelog.open(path, durability="none") as log:
                got = [(r.key, r.timestamp, bytes(r.value)) for r in log.cursor()]
        except tidelog.CorruptLogError:
            assert forge        # (only a forgery can make an invalid frame look whole)
            return
        if not forge:
            want = [(r.key, r.ts, bytes(r.value)) for r in records]
            assert got == want[:len(got)]          # a prefix of what was written
            ends = [0]
            for g in groups:
                ends.append(ends[-1] + sum(len(rs) for rs in g))
            assert len(got) in ends                # of whole groups
    finally:
        shutil.rmtree(d)
