"""Attacks on the data-integration features (record headers, per-log compression, Arrow, the
readers' single-append fast path): inputs that change under the writer while it packs them,
forged compressed frames that ask for huge buffers, zero-copy tables against close / retention,
races of the fast path with close and truncate_before, a numpy array of Python objects given
where bytes are. Each test here failed before its fix.

Crash-prone cases run in a child interpreter (run_python): a segfault fails the test instead of
ending the run."""
import os
import struct
import sys
import threading

import numpy as np
import pytest

import tidelog
from conftest import run_python

sys.path.insert(0, os.path.dirname(__file__))
import v2spec  # noqa: E402

# --- inputs that change while the writer packs them -----------------------------------------

# A header pair that is a list subclass: its __len__ runs Python code in the middle of
# pack_headers / append_batch (which index their sequences unchecked and borrow their items)
EVIL = """
import os, sys, tidelog
class Evil(list):
    def __init__(self, target, *a):
        super().__init__(*a)
        self.target = target
    def __len__(self):
        if self.target:
            self.target.clear()
            self.junk = [os.urandom(200) for _ in range(20000)]     # reuse what was freed
        return 2
log = tidelog.open(sys.argv[1])
"""


def test_header_pair_emptying_the_headers_list_of_one_append(log_path):
    """log.append(v, headers=list): the list emptied by a pair's __len__ while it is packed
    (was: an unchecked pairs[j] read past the list: segfault)."""
    out = run_python(EVIL + """
hs = []
hs.extend([Evil(hs, ["a", b"1"])] + [("b%d" % i, b"x") for i in range(1000)])
log.append(b"v", headers=hs)
h = log.read(0).headers
assert len(h) == 1001 and h[0] == ("a", b"1") and h[-1] == ("b999", b"x"), h[:3]
print("ok")
""", log_path, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


def test_header_pair_emptying_the_batch_headers_list(log_path):
    """append_batch(headers=list): the per-value list emptied while a record's headers are
    packed (was: an unchecked hseq[i] past the list: segfault)."""
    out = run_python(EVIL + """
hseq = []
hseq.extend([[Evil(hseq, ["a", b"1"])]] + [[("b", b"%d" % i)] for i in range(999)])
log.append_batch([b"v"] * 1000, headers=hseq)
got = [r.headers for r in log.cursor()]
assert got[0] == [("a", b"1")] and got[999] == [("b", b"998")], got[:2]
print("ok")
""", log_path, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


@pytest.mark.parametrize("victim", ["values", "keys", "timestamps"])
def test_python_code_emptying_the_values_or_keys_list_mid_append_batch(log_path, victim):
    """append_batch borrowed its values' and keys' bytes from the caller's lists, then ran
    Python code (a header pair's __len__, a timestamps object's __array__) that may empty them:
    the freed bytes were written to the log (was: silently garbage records)."""
    out = run_python(EVIL + """
import numpy as np
victim = sys.argv[2]
vals = [os.urandom(200) for _ in range(1000)]
keys = [os.urandom(200) for _ in range(1000)]
want_v = [bytes(bytearray(v)) for v in vals]
want_k = [bytes(bytearray(k)) for k in keys]
class T:
    def __array__(self, dtype=None, copy=None):
        vals.clear()
        keys.clear()
        self.junk = [os.urandom(200) for _ in range(20000)]
        return np.arange(1000, dtype=np.int64)
if victim == "timestamps":
    log.append_batch(vals, keys=keys, timestamps=T())
else:
    target = vals if victim == "values" else keys
    log.append_batch(vals, keys=keys, headers=[[Evil(target, ["a", b"1"])]] + [None] * 999)
got = [(bytes(r.value), r.key) for r in log.cursor()]
assert got == list(zip(want_v, want_k)), "garbage records"
print("ok")
""", log_path, victim, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


# --- forged compressed frames ---------------------------------------------------------------

FORGE = """
import os, resource, struct, sys
sys.path.insert(0, sys.argv[3])
import tidelog, v2spec
path, codec = sys.argv[1], sys.argv[2]
with tidelog.open(path, compression=codec) as log:
    log.append(b"x" * 2000)
    log.append(b"y" * 3000)
name = sorted(n for n in os.listdir(path) if n.endswith(".seg"))[0]
fp = os.path.join(path, name)
data = bytearray(open(fp, "rb").read())
pos, fr = v2spec.frames_of(bytes(data))[0]
length = len(fr)
if codec == "zstd":             # a zstd frame that does not declare its size
    import zstandard
    z = zstandard.ZstdCompressor(write_content_size=False).compress(v2spec.inflate(fr))
    nf = v2spec._finish(bytes(fr[8:40]) + z)
    assert len(nf) <= length
    data[pos:pos + len(nf)] = nf
    length = len(nf)
struct.pack_into("<I", data, pos + 32, int(sys.argv[4]))       # the inner length: forged
data[pos:pos + length] = v2spec.fix_crc(bytes(data[pos:pos + length]))
with open(fp, "r+b") as f:
    f.write(data)
# 1 GiB of address space more than now: a buffer of the forged size cannot be had
now = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (now + (1 << 30), resource.RLIM_INFINITY))
with tidelog.open(path, readonly=True) as log:
    try:
        log.read(0)
    except tidelog.CorruptLogError as e:
        assert e.offset == 0
        print("corrupt")
    assert bytes(log.read(1).value) == b"y" * 3000
"""


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
@pytest.mark.parametrize("raw", [2_000_000_000, 0xFFFFFFF0])
def test_forged_inner_length_is_damage_not_an_allocation(log_path, codec, raw):
    """A compressed frame whose inner length says ~4 GiB under a valid CRC: CorruptLogError,
    never a buffer of that size (was: MemoryError under a 1 GiB address-space limit, else a
    multi-GB allocation per read)."""
    pytest.importorskip("zstandard")
    pytest.importorskip("lz4")
    out = run_python(FORGE, log_path, codec, os.path.dirname(__file__), raw, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "corrupt", (out.stdout, out.stderr)


FORGE_DECLARED = """
import os, resource, struct, sys
sys.path.insert(0, sys.argv[2])
import tidelog, v2spec
path = sys.argv[1]
with tidelog.open(path, compression="zstd") as log:      # segments of 256 MiB (the default)
    log.append(b"x" * 2000)
    log.append(b"y" * 3000)
name = sorted(n for n in os.listdir(path) if n.endswith(".seg"))[0]
fp = os.path.join(path, name)
data = bytearray(open(fp, "rb").read(1 << 16))
pos, fr = v2spec.frames_of(bytes(data))[0]
raw = 200 << 20             # below the capacity: the inner length check lets it through
# a zstd frame of 17 bytes declaring `raw` bytes of content (magic, single segment, 8-byte
# content size, then one empty last raw block): zstandard allocates the declared size first
# (zeros after it keep the frame's length: the next frame stays where it is)
z = struct.pack("<IBQ", 0xFD2FB528, 0xE0, raw) + bytes([1, 0, 0])
z += bytes(len(fr) - 40 - len(z))
nf = v2spec._finish(bytes(fr[8:32]) + struct.pack("<II", raw, 0) + z)
assert len(nf) == len(fr)
data[pos:pos + len(nf)] = nf
with open(fp, "r+b") as f:
    f.write(data)
with tidelog.open(path, readonly=True) as log:
    assert bytes(log.read(1).value) == b"y" * 3000      # (the segment mapped first)
    # 64 MiB of address space more than now: a buffer of the declared size cannot be had
    now = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (now + (64 << 20), resource.RLIM_INFINITY))
    try:
        log.read(0)
    except tidelog.CorruptLogError as e:
        assert e.offset == 0
        print("corrupt")
    assert bytes(log.read(1).value) == b"y" * 3000
"""


def test_a_zstd_frame_declaring_a_huge_content_size_is_damage_not_an_allocation(log_path):
    """A compressed frame of a few bytes whose zstd frame declares (and whose inner length says)
    200 MiB, within a 256 MiB segment's capacity: zstandard allocates the declared size before
    it decompresses, so this was MemoryError under an address-space limit (else 200 MiB per
    read, up to 4 GiB with a forged segment capacity). A zstd block makes at most 128 KiB from
    4 bytes: a larger declared size is damage (CorruptLogError), never a buffer."""
    pytest.importorskip("zstandard")
    out = run_python(FORGE_DECLARED, log_path, os.path.dirname(__file__), check=False)
    assert out.returncode == 0 and out.stdout.strip() == "corrupt", (out.stdout, out.stderr)


# --- the command line's header output -------------------------------------------------------

def test_dump_hex_is_all_hex_even_for_header_names(log_path, run):
    """`dump --format hex` prints every byte field as hex; header names went out raw, so a name
    holding a tab, newline, '=' or ';' broke the line apart (a forged extra record line)."""
    with tidelog.open(log_path) as log:
        log.append(b"v", headers=[("a\n0\tforged", b"1"), ("x=y;z", b"\x00")])
    r = run("dump", log_path, "--format", "hex")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 1, lines
    cols = lines[0].split("\t")
    assert cols[3] == b"v".hex()
    pairs = [p.split("=") for p in cols[4].split(";")]
    assert [(bytes.fromhex(n).decode(), bytes.fromhex(v)) for n, v in pairs] == [
        ("a\n0\tforged", b"1"), ("x=y;z", b"\x00")]


def test_dump_text_escapes_what_would_break_the_line_or_drive_the_terminal(log_path, run):
    """`dump` (text) and `tail` print one line per record: a tab, newline or escape sequence in
    a header name, key or value went out raw (a forged extra record line, or a terminal
    command); they are escaped now, and the hex format still gives the bytes back."""
    name, key, value = "a\n1\tforged", b"k\x1b[2J", b"v\nsecond\tline\r"
    with tidelog.open(log_path) as log:
        log.append(value, key=key, headers=[(name, b"x\ny")])
    for cmd in (["dump", log_path], ["tail", log_path]):
        r = run(*cmd)
        assert r.exit_code == 0, r.output
        lines = r.stdout.splitlines()
        assert len(lines) == 1 and "\x1b" not in r.stdout and "\r" not in r.stdout, lines
        cols = lines[0].split("\t")
        assert cols[2:] == ["k\\x1b[2J", "v\\nsecond\\tline\\r", "a\\n1\\tforged=x\\ny"]


# --- Arrow ----------------------------------------------------------------------------------

def test_value_type_of_zero_length_lists_is_refused_not_a_crash(log_path):
    """read_arrow(value_type=fixed_size_list<..>[0]) on a log of empty values (their size, 0,
    matches): pyarrow divides by the list size (was: SIGFPE, the interpreter gone). Also a
    numpy dtype with a sub-array of 0 items, alone or as a struct field."""
    pytest.importorskip("pyarrow")
    out = run_python("""
import sys, numpy as np, pyarrow as pa, tidelog
with tidelog.open(sys.argv[1]) as log:
    log.append_batch([b""] * 5)
    log.append(b"")
    log.append_batch(np.zeros((3, 8), np.uint8))
    for vt in [pa.list_(pa.int64(), 0), pa.list_(pa.binary(4), 0), np.dtype(("<i8", (0,))),
               np.dtype([("a", "<i8"), ("b", "<i4", (2, 0))])]:
        for read in (lambda: log.cursor().read_arrow(value_type=vt),
                     lambda: log.scan_arrow(value_type=vt).read_all()):
            try:
                read()
            except ValueError as e:
                assert "value_type" in str(e), e
            else:
                raise AssertionError(f"{vt} accepted")
    assert log.cursor().read_arrow(6, value_type=pa.binary(0)).num_rows == 6
print("ok")
""", log_path, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


# --- compression: tools without the codec --------------------------------------------------

def test_salvage_without_the_codec_leaves_no_half_made_log(log_path, tmp_path):
    """salvage of a compressed log where zstandard is missing raises MissingCodecError naming
    the extra; it left `out` holding an empty log, so the retry (codec installed) was refused:
    "out exists and is not empty"."""
    pytest.importorskip("zstandard")
    with tidelog.open(log_path, compression="zstd") as log:
        log.append_batch([b'{"i": %d, "pad": "................"}' % i for i in range(200)])
        log.append(b"plain")
    out = str(tmp_path / "salvaged")
    run_python("""
import sys
sys.modules["zstandard"] = None        # as if not installed
import tidelog
try:
    tidelog.salvage(sys.argv[1], sys.argv[2])
except tidelog.MissingCodecError as e:
    assert "tidelog[zstd]" in str(e)
else:
    raise AssertionError("salvage read a zstd frame without zstandard")
""", log_path, out)
    assert not os.path.exists(out)
    s = tidelog.salvage(log_path, out)          # the retry, with the codec
    assert s.records == 201 and s.lost == []


def test_writers_of_different_logs_compress_at_once(tmp_path):
    """One ZstdCompressor served every log of the process ("used under the writer lock" - but
    that lock is one log's): writers of two logs in two threads compressed at once with the GIL
    released (was: segfault, or garbage frames)."""
    pytest.importorskip("zstandard")
    out = run_python("""
import json, random, sys, threading, tidelog
d, N = sys.argv[1], 4
logs = [tidelog.open(f"{d}/log{i}", compression="zstd", durability="none") for i in range(N)]
want = [[] for _ in range(N)]
def w(i):
    rng = random.Random(i)
    for j in range(80):
        vals = [json.dumps({"log": i, "j": j, "k": k, "r": rng.random()}).encode() * 4
                for k in range(200)]
        logs[i].append_batch(vals)
        want[i] += vals
ts = [threading.Thread(target=w, args=(i,)) for i in range(N)]
for t in ts: t.start()
for t in ts: t.join()
for i in range(N):
    assert [bytes(r.value) for r in logs[i].cursor()] == want[i], i
    logs[i].close()
print("ok")
""", str(tmp_path), check=False, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


@pytest.mark.parametrize("stored", [3, 7, 8, -1])
def test_a_damaged_codec_field_is_no_preference(log_path, stored):
    """The control page's codec field is a preference, never truth (FORMAT.md §2): a value no
    codec has makes a writer append uncompressed (was: 3..7 - the CODEC bits' invalid values -
    made every writer's open fail with a bare ValueError 'unknown codec 3'; 8+ was fine)."""
    with tidelog.open(log_path, compression="zstd") as log:
        log.append_batch([b"a" * 100] * 50)
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.seek(88)
        f.write(struct.pack("<q", stored))
    with tidelog.open(log_path) as log:
        log.append_batch([b"b" * 100] * 50)
        assert [bytes(r.value) for r in log.cursor()] == [b"a" * 100] * 50 + [b"b" * 100] * 50
    frames = [fr for name in sorted(os.listdir(log_path)) if name.endswith(".seg")
              for _, fr in v2spec.frames_of(open(os.path.join(log_path, name), "rb").read())]
    assert [struct.unpack_from("<H", fr, 28)[0] & 7 for fr in frames] == [1, 0]


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_repair_truncate_cuts_where_verify_finds_a_bad_compressed_frame(log_path, codec):
    """A compressed frame that passes its CRC but does not inflate to what its header says:
    verify reports it, yet repair(truncate=True) (which checks outer frames only) found nothing
    to cut - the log stayed damaged with no tool to mend it but salvage."""
    pytest.importorskip("zstandard")
    pytest.importorskip("lz4")
    pad = b'"................................................................"'
    with tidelog.open(log_path, compression=codec) as log:
        log.append_batch([b'{"a": %d, "p": %s}' % (i, pad) for i in range(100)])
        log.append_batch([b'{"b": %d, "p": %s}' % (i, pad) for i in range(100)])
        log.append(b"after")
    name = sorted(n for n in os.listdir(log_path) if n.endswith(".seg"))[0]
    fp = os.path.join(log_path, name)
    with open(fp, "rb") as f:
        data = bytearray(f.read())
    pos, fr = v2spec.frames_of(bytes(data))[1]
    assert struct.unpack_from("<H", fr, 28)[0] & 7
    length = struct.unpack_from("<I", data, pos)[0]
    data[pos + length // 2] ^= 0x5A
    data[pos:pos + length] = v2spec.fix_crc(bytes(data[pos:pos + length]))
    with open(fp, "r+b") as f:
        f.write(data)
    rep = tidelog.verify(log_path)
    assert not rep and rep.damage.offset == 100
    r = tidelog.repair(log_path, truncate=True)
    assert r.truncated is not None and r.truncated[2] == 100 and r.end == 100
    assert tidelog.verify(log_path)
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == 100 and bytes(log.read(99).value).startswith(b'{"a": 99')


def test_a_scan_of_compressed_segments_keeps_no_inflated_frame_per_segment(tmp_path):
    """Each segment kept the frame it inflated last (a bytes object up to the segment's size)
    after the reader's LRU unmapped it: a scan over 120 segments of one 900 KB compressed record
    each kept ~100 MB (bounded only by the log's size)."""
    pytest.importorskip("zstandard")
    out = run_python("""
import gc, os, sys, tidelog
p = sys.argv[1]
with tidelog.open(p, segment_bytes=1 << 20, compression="zstd", durability="none") as log:
    for i in range(120):
        log.append(os.urandom(450_000).hex().encode())     # ~2:1, one per segment
    assert len(log.segments()) == 120
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
with tidelog.open(p, readonly=True) as log:
    gc.collect()
    base = rss()
    for r in log.cursor():
        pass
    del r
    gc.collect()
    grown = (rss() - base) >> 20
print(grown)
""", str(tmp_path / "log"), timeout=120)
    assert int(out.stdout.strip()) < 40, out.stdout


@pytest.mark.parametrize("mode", ["iter", "read", "batch"])
def test_a_segment_unmapped_while_its_frame_is_inflated(log_path, mode):
    """seg_inflate took its frame pointer from seg.data, then made Python calls (the codec
    lookup, the codec: other threads run) before reading through it and taking seg.mv: a
    thread whose reads made the Log's LRU unmap that segment meanwhile left it reading unmapped
    (or remapped) memory - a healthy log reported damaged (CorruptLogError), or a crash. The
    other thread's reads are run here at that very point, from the codec lookup."""
    pytest.importorskip("zstandard")
    out = run_python("""
import json, sys, tidelog
from tidelog import codecs
p, mode = sys.argv[1], sys.argv[2]
with tidelog.open(p, compression="zstd", segment_bytes=1 << 16, durability="none") as log:
    for j in range(3000):
        log.append_batch([json.dumps({"j": j, "k": k, "p": "x" * 40,
                                      "r": j * 7919 % 10007 * k}).encode() for k in range(10)])
log = tidelog.open(p, readonly=True)
log._max_mapped = 1
bases = [b for b, _ in log.segments()]
assert len(bases) > 5
real = codecs.decompressor
calls = [0]
def other_thread_meanwhile(cid):
    calls[0] += 1
    if calls[0] % 50 == 3:
        for b in bases[-4:]:        # reads elsewhere: the LRU unmaps the segment being inflated
            log.read(b)
    return real(cid)
codecs.decompressor = other_thread_meanwhile
if mode == "iter":
    n = sum(1 for _ in log.cursor())
elif mode == "read":
    n = sum(1 for o in range(0, 30000, 7) if log.read(o))
else:
    c = log.cursor()
    n = 0
    while True:
        b = c.read_batch(25)
        if not len(b):
            break
        n += len(b)
log.close()
print(n)
""", log_path, mode, check=False, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-1500:])
    assert int(out.stdout.strip()) == {"iter": 30000, "read": 4286, "batch": 30000}[mode]


def test_arrow_of_an_unpickled_batch_keeps_its_headers(log_path):
    """tidelog.arrow.batch_table of a RecordBatch that went through pickle (one run of copied
    records, headers kept as lists): the headers column came out empty for every record
    (batch_columns read header columns from frames only)."""
    pa = pytest.importorskip("pyarrow")
    import pickle
    from tidelog import arrow
    with tidelog.open(log_path, compression="none") as log:
        log.append_batch([b"v%d" % i for i in range(50)], keys=[None, b"k"] * 25,
                         headers=[{"a": b"%d" % i} if i % 3 else None for i in range(50)])
        log.append(b"s", key=b"kk", headers=[("x", b""), ("x", b"\xff")])
        log.append(b"plain")
        b = log.cursor().read_batch()
    want = [[{"name": n, "value": v} for n, v in h] for h in b.headers]
    assert arrow.batch_table(b, headers=True).column("headers").to_pylist() == want
    b2 = pickle.loads(pickle.dumps(b))
    assert b2.headers == b.headers
    t = arrow.batch_table(b2, headers=True)
    t.validate(full=True)
    assert t.column("headers").to_pylist() == want
    assert t.column("key").to_pylist() == [r.key for r in b]
    assert arrow.batch_table(b2).column_names[-1] == "headers"      # None: some record has them



# --- the writer's own copies, reached through the gc module ----------------------------------

# The copies above kept the caller's lists out of reach, but not Python code's: gc.get_referrers
# (or gc.get_objects from a gc.callbacks hook) finds a list copy and can empty it, and a list
# copy was indexed unchecked and its items borrowed. A pair whose __len__ empties every list
# holding `self.of` (and, as above, makes junk to reuse what was freed):
REFERRERS = """
import gc, os, sys, tidelog
class Evil(list):
    def __len__(self):
        for r in gc.get_referrers(self.of):
            if type(r) is list and r is not self:
                r.clear()
        self.junk = [os.urandom(200) for _ in range(20000)]
        return 2
def evil(of=None):
    e = Evil(["a", b"1"])
    e.of = e if of is None else of
    return e
log = tidelog.open(sys.argv[1])
"""


def test_a_pair_emptying_pack_headers_own_copy_through_gc(log_path):
    """append(headers=list): pack_headers' own copy of the list, found by gc.get_referrers from
    a pair's __len__ and emptied (was: an unchecked pairs[j] past it: segfault)."""
    out = run_python(REFERRERS + """
log.append(b"v", headers=[evil()] + [("b%d" % i, b"x") for i in range(1000)])
h = log.read(0).headers
assert len(h) == 1001 and h[0] == ("a", b"1") and h[-1] == ("b999", b"x"), h[:3]
print("ok")
""", log_path, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


@pytest.mark.parametrize("victim", ["values", "keys", "headers"])
def test_a_pair_emptying_append_batch_own_copies_through_gc(log_path, victim):
    """append_batch: its own copies of the values / keys / headers lists, found by
    gc.get_referrers from a header pair's __len__ and emptied (was: the freed values or keys
    written to the log, or an unchecked hseq[i] past the list: garbage records or segfault)."""
    out = run_python(REFERRERS + """
victim = sys.argv[2]
want_v = [os.urandom(200) for _ in range(1000)]
want_k = [os.urandom(200) for _ in range(1000)]
hs = [[("b", b"%d" % i)] for i in range(1000)]
vals = [bytes(bytearray(v)) for v in want_v]
keys = [bytes(bytearray(k)) for k in want_k]
of = {"values": vals[500], "keys": keys[500], "headers": hs[500]}[victim]
hs[0] = [evil(of)]
vals_ = vals; keys_ = keys
del vals, keys
log.append_batch(vals_, keys=keys_, headers=hs)
got = [(bytes(r.value), r.key, r.headers) for r in log.cursor()]
want_h = [[("a", b"1")]] + [[("b", b"%d" % i)] for i in range(1, 1000)]
assert got == list(zip(want_v, want_k, want_h)), "garbage records"
print("ok")
""", log_path, victim, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


def test_a_gc_callback_emptying_the_copy_as_pack_exact_gives_up(log_path):
    """A name that is no UTF-8 (a lone surrogate) after exact (str, bytes) pairs: the fast
    path's UnicodeEncodeError makes objects, so a collection may run, and a gc.callbacks hook
    empties pack_headers' copy before the general path reads it (was: segfault). The error is
    the general path's, and nothing is appended."""
    out = run_python("""
import gc, sys, tidelog
log = tidelog.open(sys.argv[1])
marker = ("zz-marker", b"m")
h = [marker, ("\\ud800", b"x")] + [("b%d" % i, b"y") for i in range(100)]
def cb(phase, info):
    if phase == "start":
        for r in gc.get_referrers(marker):
            if type(r) is list and r is not h:
                r.clear()
gc.callbacks.append(cb)
gc.set_threshold(1)
try:
    log.append(b"v", headers=h)
except ValueError as e:
    assert "headers[1]" in str(e) and "UTF-8" in str(e), e
    gc.set_threshold(700)
    assert log.end_offset == 0
    print("ok")
""", log_path, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


@pytest.mark.parametrize("arg", ["timestamps", "int_headers"])
def test_a_gc_callback_emptying_a_list_of_ints_as_int64_list_reads_it(log_path, arg):
    """append_batch(timestamps=list, int_headers={name: list}): the lists-of-ints fast path
    (appender.pxi int64_list) makes its int64 array after checking the list's length; a
    collection run by that allocation, whose gc.callbacks hook empties the list, left the loop
    reading past its end (was: segfault). Every collection of the call is tried in turn (and
    the young generation's count after one, so that the next allocation collects): each call
    appends its records with the ints given, or refuses the emptied list with nothing
    appended."""
    out = run_python("""
import gc, sys, tidelog
log = tidelog.open(sys.argv[1])
arg = sys.argv[2]
n = 50
state = {}
hold = []
def cb(phase, info):
    if phase == "start":
        state["count"] += 1
        if state["count"] == state["k"]:
            state["ints"].clear()
    else:
        hold.extend([] for _ in range(state["young"]))   # the count the next one starts from
gc.callbacks.append(cb)
outcomes = set()
for young in range(5):
    for k in range(1, 40):
        ints = list(range(10**12, 10**12 + n))
        want = list(ints)
        state.update(k=k, count=0, ints=ints, young=young)
        end = log.end_offset
        gc.collect()
        gc.set_threshold(1)
        try:
            if arg == "timestamps":
                log.append_batch([b"v"] * n, timestamps=ints)
            else:
                log.append_batch([b"v"] * n, int_headers={"p": ints})
        except ValueError as e:
            gc.set_threshold(700)
            assert "0 " in str(e) and log.end_offset == end, (e, log.end_offset, end)
            outcomes.add("refused")
            continue
        gc.set_threshold(700)
        assert log.end_offset == end + n
        if arg == "timestamps":
            got = [log.read(o).timestamp for o in range(end, end + n)]
        else:
            got = [int(log.read(o).headers[0][1]) for o in range(end, end + n)]
        assert got == want, (k, young)
        outcomes.add("appended")
assert outcomes == {"refused", "appended"}, outcomes
print("ok")
""", log_path, arg, check=False, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


_OBJECTS = np.array([b"ab", None], dtype=object)


@pytest.mark.parametrize("how", ["value_offsets", "view", "record", "append", "list", "key",
                                 "keys", "header"])
@pytest.mark.parametrize("arr", [_OBJECTS, np.zeros(2, dtype=[("a", "i4"), ("o", "O")])],
                         ids=["objects", "object-field"])
def test_an_array_of_python_objects_is_not_bytes(tmp_path, how, arr):
    """A numpy array holding Python objects exports their addresses as its buffer: a
    TypeError wherever a bytes-like object is taken, as append_batch's array path had it
    (was: the addresses written as the value's, key's or header's bytes)."""
    with tidelog.open(tmp_path / "log") as log:
        with pytest.raises(TypeError, match="Python objects|bytes-like"):
            if how == "value_offsets":
                log.append_batch(arr, value_offsets=[0, 8])
            elif how == "view":
                log.append_batch(memoryview(arr)[::1], value_offsets=[0, 8])
            elif how == "record":
                log.append(arr)
            elif how == "append":
                log.append(memoryview(arr))
            elif how == "list":
                log.append_batch([b"x", arr])
            elif how == "key":
                log.append(b"x", key=arr)
            elif how == "keys":
                log.append_batch([b"x"], keys=[arr])
            else:
                log.append(b"x", headers=[("h", arr)])
        assert log.end_offset == 0
