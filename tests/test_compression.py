"""Per-log compression (issue 14 item 4; FORMAT.md §2 "Compressed frames"): open(compression=)
compresses whole frames (zstd, lz4), readers decompress once per frame, the setting persists in
the control page, frames decode by the spec alone (v2spec), damage is found, a missing codec
names its extra."""
import json
import os
import pickle
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

import tidelog
from click.testing import CliRunner
from tidelog.cli import cli
import v2spec

pytest.importorskip("zstandard")
pytest.importorskip("lz4")

CODECS = ["zstd", "lz4"]
CID = {"zstd": 1, "lz4": 2}


def clicks(n, seed=1):
    rng = random.Random(seed)
    return [json.dumps({"user": "user-%d" % rng.randrange(1000), "page": "/p/%d" % rng.randrange(80),
                        "ref": rng.choice(["search", "ad", "direct"]), "n": i}).encode()
            for i in range(n)]


def seg_frames(path):
    out = []
    for name in sorted(n for n in os.listdir(path) if n.endswith(".seg")):
        with open(os.path.join(path, name), "rb") as f:
            out += [(name, pos, fr) for pos, fr in v2spec.frames_of(f.read())]
    return out


def codec_of(fr):
    return struct.unpack_from("<H", fr, 28)[0] & 7


def fill(log):
    """A mix: a large batch (keys, headers, per-record timestamps), small singles, a large
    single, numpy rows. Returns [(value, key, timestamp, headers)] in offset order."""
    vals = clicks(600)
    keys = [None if i % 4 == 0 else b"k%d" % (i % 9) for i in range(600)]
    hs = [[("i", b"%d" % i)] if i % 5 == 0 else [] for i in range(600)]
    tss = [1000 + (i * 7919) % 600 for i in range(600)]
    log.append_batch(vals, keys=keys, timestamps=tss, headers=hs)
    want = list(zip(vals, keys, tss, hs))
    log.append(b"tiny", key=b"k", timestamp=5)
    want.append((b"tiny", b"k", 5, []))
    big = b"".join(clicks(40, 2))
    log.append(big, timestamp=6, headers={"big": b"1"})
    want.append((big, None, 6, [("big", b"1")]))
    rows = np.arange(64 * 16, dtype=np.int64).reshape(64, 16)
    log.append_batch(rows, timestamps=[7] * 64)
    want += [(rows[i].tobytes(), None, 7, []) for i in range(64)]
    return want


def got_of(recs):
    return [(bytes(r.value), r.key, r.timestamp, r.headers) for r in recs]


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_through_every_read_path(log_path, codec):
    with tidelog.open(log_path, compression=codec, segment_bytes=1 << 20) as log:
        log._frame_limit = 8192             # several frames per batch
        want = fill(log)
        assert log.compression == codec
        assert got_of(log.cursor()) == want
        assert got_of(log.read(i) for i in range(len(want))) == want
        cur = log.cursor()
        got = []
        while True:
            b = cur.read_batch(max_records=97)
            if not len(b):
                break
            assert b.headers == [r.headers for r in b]
            assert [bytes(v) for v in b.values] == [bytes(r.value) for r in b]
            assert list(b.timestamps) == [r.timestamp for r in b]
            assert sum((list(f.timestamps) for f in b.frames()), []) == list(b.timestamps)
            c = pickle.loads(pickle.dumps(b))
            assert got_of(c) == got_of(b)
            got += got_of(b)
        assert got == want
        # numpy rows of a compressed frame: one view of the decompressed buffer
        b = log.cursor(len(want) - 64).read_batch()
        arr = b.values_array(np.dtype((np.int64, 16)))
        assert (arr == np.arange(64 * 16).reshape(64, 16)).all()
        # seek_time inside compressed frames finds the exact record (timestamps vary)
        for t in (1000, 1300, 1599, 1600):
            expect = next((i for i, w in enumerate(want) if w[2] >= t), len(want))
            assert log.offset_for_time(t) == expect
    frames = seg_frames(log_path)
    assert sum(codec_of(fr) == CID[codec] for _, _, fr in frames) >= 3
    # the spec alone decodes what the engine wrote (compressed frames included)
    spec = [r for _, _, fr in frames for r in v2spec.decode(fr)]
    assert [(bytes(r.value), r.key, r.ts, [(n.decode(), v) for n, v in r.headers])
            for r in spec] == want


@pytest.mark.parametrize("codec", CODECS)
def test_small_frames_stay_uncompressed_and_zero_copy_means_after_decompression(log_path, codec):
    with tidelog.open(log_path, compression=codec) as log:
        log.append(b"x" * 100)                  # a single frame of 136 bytes: below 512
        log.append_batch([b"a" * 10] * 10)      # a small multi frame
        log.append_batch(clicks(100))
        log.append_batch([os.urandom(100) for _ in range(50)])   # incompressible: as it is
        frames = seg_frames(log_path)
        assert [codec_of(fr) for _, _, fr in frames] == [0, 0, CID[codec], 0]
        b = log.cursor(12).read_batch(max_records=99)       # inside the compressed frame
        objs = {id(v.obj) for v in b.values}
        assert len(objs) == 1 and isinstance(b.values[0].obj, bytes)    # one buffer per frame
        r = log.read(20)
        del b
        assert bytes(r.value) == clicks(100)[9]      # the record keeps its buffer alive


@pytest.mark.parametrize("codec", CODECS)
def test_the_setting_persists_and_readers_need_none(log_path, codec):
    with tidelog.open(log_path, compression=codec) as log:
        log.append_batch(clicks(50))
    with tidelog.open(log_path) as log:                 # None: the log's own setting
        assert log.compression == codec
        log.append_batch(clicks(50, 3))
    with tidelog.open(log_path, readonly=True) as r:
        assert r.compression == codec == r.stats()["compression"]
        assert len(list(r.cursor())) == 100
    info = CliRunner().invoke(cli, ["info", log_path])
    assert info.exit_code == 0 and f"compression:    {codec}\n" in info.output, info.output
    with tidelog.open(log_path, compression="none") as log:     # switched off, stored
        assert log.compression is None
        log.append_batch(clicks(50, 4))
    with tidelog.open(log_path) as log:
        assert log.compression is None
        assert got_of(log.cursor())[100:] == got_of(log.cursor(100))
        assert [bytes(r.value) for r in log.cursor()] == clicks(50) + clicks(50, 3) + clicks(50, 4)
    assert [codec_of(fr) for _, _, fr in seg_frames(log_path)] == [CID[codec]] * 2 + [0]


def test_bad_compression_argument(log_path):
    for bad in ("gzip", 1, b"zstd", True):
        with pytest.raises(ValueError, match="compression"):
            tidelog.open(log_path, compression=bad)
    assert not os.path.exists(log_path)


def test_a_readers_writer_settings_are_refused_not_dropped(log_path):
    """compression= (and retention) on a reader cannot take effect: a ValueError naming the
    argument, where it was once accepted and ignored (a reader passing compression="zstd"
    believed it chose something)."""
    with tidelog.open(log_path) as log:
        log.append(b"x")
    for kw in ({"compression": "zstd"}, {"compression": "none"}, {"retain_bytes": 1 << 20},
               {"retain_seconds": 60.0}):
        with pytest.raises(ValueError, match=list(kw)[0]):
            tidelog.open(log_path, readonly=True, **kw)
    with tidelog.open(log_path, readonly=True, compression=None, retain_bytes=None) as r:
        assert bytes(r.read(0).value) == b"x"


@pytest.mark.parametrize("codec", CODECS)
def test_engine_reads_spec_built_compressed_frames(tmp_path, codec):
    recs = [v2spec.Rec(v, None if i % 2 else b"k", 100 + i, ((b"h", b"%d" % i),) if i % 3 else ())
            for i, v in enumerate(clicks(30))]
    frames = [v2spec.Frame(recs[:20], codec=CID[codec]),
              v2spec.Frame(recs[20:21], form="single", codec=CID[codec]),
              v2spec.Frame(recs[21:], codec=CID[codec])]
    path = str(tmp_path / "log")
    v2spec.write_log(path, [frames])
    with tidelog.open(path, readonly=True) as log:
        assert got_of(log.cursor()) == [
            (r.value, r.key, r.ts, [(n.decode(), v) for n, v in r.headers]) for r in recs]


def damage(path, pos, delta, fix_crc):
    name = sorted(n for n in os.listdir(path) if n.endswith(".seg"))[0]
    with open(os.path.join(path, name), "r+b") as f:
        data = bytearray(f.read())
        length = struct.unpack_from("<I", data, pos)[0]
        data[pos + delta] ^= 0x5A
        if fix_crc:
            data[pos:pos + length] = v2spec.fix_crc(bytes(data[pos:pos + length]))
        f.seek(0)
        f.write(data)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("forge", [False, True])
def test_damaged_compressed_frame(log_path, tmp_path, codec, forge):
    """A flipped byte in a compressed frame's payload: the CRC over the stored bytes finds it;
    with the CRC forged to match, the frame does not decompress to what its header says: read,
    verify and batches raise CorruptLogError, salvage skips the frame and keeps the rest."""
    with tidelog.open(log_path, compression=codec) as log:
        log.append_batch(clicks(100))
        log.append_batch(clicks(100, 5))
        log.append(b"after")
    _, pos, fr = seg_frames(log_path)[1]
    assert codec_of(fr) == CID[codec]
    damage(log_path, pos, len(fr) // 2, forge)
    with tidelog.open(log_path, readonly=True) as log:
        assert bytes(log.read(0).value) == clicks(100)[0]
        with pytest.raises(tidelog.CorruptLogError) as e:
            log.read(150)
        assert e.value.offset in (100, 150)
        with pytest.raises(tidelog.CorruptLogError):
            log.cursor(100).read_batch()
        assert len(log.cursor().read_batch()) == 100     # what is good, then the damage raises
    rep = tidelog.verify(log_path)
    assert not rep and rep.damage.offset == 100
    out = str(tmp_path / "salvaged")
    s = tidelog.salvage(log_path, out)
    assert s.records == 101 and s.lost == [(100, 200)]
    with tidelog.open(out, readonly=True) as log:
        assert [bytes(r.value) for r in log.cursor()] == clicks(100) + [b"after"]


@pytest.mark.parametrize("codec", CODECS)
def test_recovery_after_an_unclean_stop(log_path, codec):
    from test_recovery import mark_unclean
    with tidelog.open(log_path, compression=codec, segment_bytes=1 << 16) as log:
        for i in range(30):
            log.append_batch(clicks(20, i))
            log.append(b"s%d" % i)
        want = [bytes(r.value) for r in log.cursor()]
    mark_unclean(log_path)
    with tidelog.open(log_path) as log:
        assert [bytes(r.value) for r in log.cursor()] == want
        log.append_batch(clicks(20, 99))
    assert tidelog.verify(log_path)


def test_a_missing_codec_names_the_extra(log_path):
    with tidelog.open(log_path, compression="zstd") as log:
        log.append_batch(clicks(100))
        log.append(b"plain")
    code = f"""
import sys
sys.modules["zstandard"] = None        # as if not installed
import tidelog
with tidelog.open({log_path!r}, readonly=True) as log:
    assert bytes(log.read(100).value) == b"plain"     # uncompressed frames read as ever
    try:
        log.read(0)
    except tidelog.MissingCodecError as e:
        print("reader:", e)
try:
    tidelog.open({log_path!r})                         # the log's setting needs it
except tidelog.MissingCodecError as e:
    print("writer:", e)
try:
    tidelog.open({log_path!r} + "2", compression="zstd")
except ImportError as e:
    print("new:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [l.split(":")[0] for l in lines] == ["reader", "writer", "new"]
    assert all("tidelog[zstd]" in l for l in lines)


@pytest.mark.parametrize("codec", CODECS)
def test_single_appends_of_every_kind_interleaved(log_path, codec):
    """The readers' fast path for a single append's frame (single_at: no layout) must take only
    plain single frames: compressed singles, singles with headers and keys mixed in among plain
    ones read back exactly through iteration, read(), read_batch of any size and a pickle."""
    rng = random.Random(7)
    want = []
    with tidelog.open(log_path, compression=codec, segment_bytes=1 << 20) as log:
        for i in range(3000):
            kind = rng.randrange(5)
            if kind == 0:                   # compressed: large and compressible
                v = (b"%06d," % i) * rng.randrange(100, 400)
            else:
                v = rng.randbytes(rng.randrange(0, 300))
            key = b"k%d" % i if kind in (1, 3) else None
            hs = [("h", b"%d" % i)] if kind in (2, 3) else []
            log.append(v, key=key, timestamp=i, headers=hs or None)
            want.append((v, key, i, hs))
        assert got_of(log.cursor()) == want
        order = list(range(3000))
        rng.shuffle(order)
        assert [got_of([log.read(i)])[0] for i in order] == [want[i] for i in order]
        for size in (1, 2, 7, 64, 1000, 65536):
            cur = log.cursor()
            got = []
            while True:
                b = cur.read_batch(max_records=size)
                if not len(b):
                    break
                assert [bytes(v) for v in b.values] == [bytes(r.value) for r in b]
                assert b.headers == [r.headers for r in b]
                got += got_of(pickle.loads(pickle.dumps(b)))
            assert got == want, size
    assert sum(codec_of(fr) == CID[codec] for _, _, fr in seg_frames(log_path)) > 100
