"""The core's CRC32C against the `crc32c` package as an oracle, hardware and table versions."""
import crc32c as oracle
from hypothesis import given, strategies as st

from tidelog import _core


def test_known_vector():
    # RFC 3720 B.4: 32 bytes of zeros
    assert _core.crc32c(bytes(32)) == 0x8A9136AA
    assert _core.crc32c(b"123456789") == 0xE3069283


def test_hardware_used_where_available():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    if "sse4_2" in info or " crc32" in info:
        assert _core.crc32c_hardware()
    if "sse4_2" in info and "pclmulqdq" in info:
        wide = " avx2" in info and "vpclmulqdq" in info
        assert _core.crc32c_implementation() == ("crc32+vpclmul" if wide else "crc32+clmul")


def test_every_short_length_and_alignment():
    # short inputs: one chain below 48 bytes, three chains combined by carry-less multiply up to
    # 768, then blocks of 256; every length and start alignment of those ranges, and continuing
    # from a non-zero CRC (the frame CRC starts from the length word's)
    import random
    rng = random.Random(11)
    data = bytes(rng.randrange(256) for _ in range(2000))
    for n in range(0, 1100):
        for a in range(8):
            chunk = data[a:a + n]
            want = oracle.crc32c(chunk)
            assert _core.crc32c(memoryview(data)[a:a + n]) == want, (n, a)
        assert _core.crc32c(chunk, 0xDEADBEEF) == oracle.crc32c(chunk, 0xDEADBEEF), n


@given(st.binary(max_size=5000), st.integers(0, 15))
def test_matches_oracle_any_alignment(data, skip):
    data = data[skip:]
    mv = memoryview(bytearray(b"\0" * skip + data))[skip:]   # unaligned start
    want = oracle.crc32c(data)
    assert _core.crc32c(mv) == want
    assert _core.crc32c_portable(mv) == want


@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_continuation(a, b):
    assert _core.crc32c(b, _core.crc32c(a)) == oracle.crc32c(a + b)
    assert _core.crc32c_portable(b, _core.crc32c_portable(a)) == oracle.crc32c(a + b)


def test_long_inputs_all_block_paths():
    # three chains of 8 KiB and of 256 B blocks, plus the tails, at several alignments
    import os
    import random
    rng = random.Random(7)
    data = os.urandom(3 * 8192 * 3 + 3 * 256 * 2 + 77)
    for _ in range(40):
        a = rng.randrange(0, 64)
        b = rng.randrange(a, len(data) + 1)
        assert _core.crc32c(memoryview(data)[a:b]) == oracle.crc32c(data[a:b])
    assert _core.crc32c(data) == oracle.crc32c(data)


@given(st.integers(0, 2**32 - 1), st.binary(max_size=2000))
def test_frame_crc_is_the_length_word_then_the_bytes(length, data):
    assert _core.frame_crc32c(length, data) == oracle.crc32c(data, oracle.crc32c(length.to_bytes(4, "little")))


def test_long_inputs_folded_and_chained():
    # from 2 KiB on (a CPU with VPCLMULQDQ): 256-bit folding over the first 4/7 and three crc32
    # chains over the rest, joined by shifts; every length around the split points, every
    # alignment, continuing from a non-zero CRC, and sizes up to a few MiB
    import os
    import random
    rng = random.Random(5)
    data = os.urandom((4 << 20) + 64)
    lengths = list(range(2000, 2400)) + [4096, 65536, 65536 + 40, 64032, 1 << 20, 4 << 20]
    lengths += [rng.randrange(2048, 300_000) for _ in range(200)]
    for n in lengths:
        a = rng.randrange(0, 64)
        chunk = memoryview(data)[a:a + n]
        assert _core.crc32c(chunk) == oracle.crc32c(chunk), (n, a)
        assert _core.crc32c(chunk, 0x9E3779B9) == oracle.crc32c(chunk, 0x9E3779B9), (n, a)
        assert _core.frame_crc32c(n, chunk) == oracle.crc32c(
            chunk, oracle.crc32c(n.to_bytes(4, "little"))), (n, a)


def test_long_inputs_without_the_wide_folding():
    # the crc32+clmul path (CPUs without VPCLMULQDQ), forced where the CPU has it
    import subprocess
    import sys
    code = ("import os, crc32c; from tidelog import _core\n"
            "d = os.urandom(300_000)\n"
            "assert _core.crc32c_implementation() in ('crc32+clmul', 'crc32', 'table')\n"
            "for n in list(range(2040, 2100)) + [65536, 65576, 299_999]:\n"
            "    assert _core.crc32c(d[3:3 + n], 7) == crc32c.crc32c(d[3:3 + n], 7), n\n")
    env = dict(__import__("os").environ, TIDELOG_CRC32C_NO_WIDE="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
