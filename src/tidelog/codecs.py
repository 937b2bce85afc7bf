"""Frame compression codecs (FORMAT.md §2, CODEC bits; issue 14): the only module that imports
zstandard and lz4, each on first use (the optional extras ``tidelog[zstd]`` and ``tidelog[lz4]``).
The core (ext/compression.pxi) calls the functions returned here once per frame: ``compressor``
for a writer, ``decompressor`` for every reader of a compressed frame.

Releases the GIL: zstandard and lz4 release it while they compress or decompress a buffer (the
calls here hold it only to look up the codec). Owns no state but the loaded codec functions
and their per-thread zstd contexts (one ZstdCompressor or ZstdDecompressor per thread).
"""
from __future__ import annotations

import threading
from typing import Callable

from tidelog.errors import MissingCodecError

NONE, ZSTD, LZ4 = 0, 1, 2
IDS = {"zstd": ZSTD, "lz4": LZ4}
NAMES = {ZSTD: "zstd", LZ4: "lz4"}
_EXTRA = {ZSTD: ("zstandard", "tidelog[zstd]"), LZ4: ("lz4", "tidelog[lz4]")}
ZSTD_LEVEL = 3          # zstandard's default: ~ lz4's ratio x 1.3 on JSON at a third of its speed
ZSTD_BLOCK_MAX = 128 << 10  # the most a zstd block decompresses to (RFC 8878 Block_Maximum_Size)
ZSTD_MAX_EXPANSION = ZSTD_BLOCK_MAX // 4     # ... from at least 4 bytes (an RLE block)

_lock = threading.Lock()
_compressors: dict[int, Callable[[memoryview], bytes]] = {}
_decompressors: dict[int, Callable[[memoryview, int], bytes]] = {}


def codec_id(name: object, what: str = "compression") -> int:
    """The CODEC value for a `compression=` argument: "zstd", "lz4", or "none" (0)."""
    if name == "none":
        return NONE
    if not isinstance(name, str) or name not in IDS:
        raise ValueError(f"{what}: expected 'zstd', 'lz4', 'none' or None, not {name!r}")
    return IDS[name]


def _missing(cid: int, e: Exception) -> MissingCodecError:
    module, extra = _EXTRA[cid]
    return MissingCodecError(f"this log's frames are compressed with {NAMES[cid]}, which needs "
                             f"the {module} package: pip install '{extra}' ({e})")


def compressor(cid: int) -> Callable[[memoryview], bytes]:
    """compress(data) -> bytes for codec `cid` (MissingCodecError naming the extra)."""
    fn = _compressors.get(cid)
    if fn is not None:
        return fn
    with _lock:
        if cid == ZSTD:
            try:
                import zstandard
            except ImportError as e:
                raise _missing(cid, e) from None
            # a ZstdCompressor is not thread-safe, and the writer lock is one log's: writers of
            # two logs compress at once (the GIL is released meanwhile) - one per thread
            clocal = threading.local()

            def fn(data: memoryview) -> bytes:
                c = getattr(clocal, "c", None)
                if c is None:
                    c = clocal.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
                return c.compress(data)
        elif cid == LZ4:
            try:
                import lz4.block  # type: ignore[import-untyped]
            except ImportError as e:
                raise _missing(cid, e) from None
            block = lz4.block

            def fn(data: memoryview) -> bytes:
                return block.compress(data, store_size=False)  # type: ignore[no-any-return]
        else:
            raise ValueError(f"unknown codec {cid}")
        _compressors[cid] = fn
        return fn


def decompressor(cid: int) -> Callable[[memoryview, int], bytes]:
    """decompress(data, size) -> bytes of exactly `size` (or an exception) for codec `cid`;
    MissingCodecError naming the extra to install when its package is missing; ValueError for
    a codec this tidelog does not know."""
    fn = _decompressors.get(cid)
    if fn is not None:
        return fn
    with _lock:
        if cid == ZSTD:
            try:
                import zstandard
            except ImportError as e:
                raise _missing(cid, e) from None
            local = threading.local()           # a ZstdDecompressor is not thread-safe

            def fn(data: memoryview, size: int) -> bytes:
                # the zstd frame must declare its size (the writer's always does) and it must be
                # `size`: without one, zstandard allocates max_output_size up front, and `size`
                # comes from disk (a forged frame could ask for 4 GiB)
                if zstandard.frame_content_size(data) != size:
                    raise ValueError("zstd frame content size is not the inner length")
                # ... and zstandard allocates that size before it decompresses: a forged frame
                # of a few bytes declaring it would cost a buffer up to the segment's capacity.
                # A zstd block makes at most 128 KiB from at least 4 bytes (an RLE block: 3
                # bytes of header, 1 of content), so a larger `size` is damage
                if size > ZSTD_MAX_EXPANSION * len(data) + ZSTD_BLOCK_MAX:
                    raise ValueError("zstd inner length beyond what the frame can expand to")
                d = getattr(local, "d", None)
                if d is None:
                    d = local.d = zstandard.ZstdDecompressor()
                return d.decompress(data, max_output_size=size)
        elif cid == LZ4:
            try:
                import lz4.block
            except ImportError as e:
                raise _missing(cid, e) from None
            block = lz4.block

            def fn(data: memoryview, size: int) -> bytes:
                # an lz4 block expands at most ~255 times (a match's length costs a byte per
                # 255): a larger `size` (from disk) is damage, not a buffer to allocate
                if size > 255 * len(data) + 64:
                    raise ValueError("lz4 inner length beyond what the block can expand to")
                return block.decompress(data, uncompressed_size=size)  # type: ignore[no-any-return]
        else:
            raise ValueError(f"unknown codec {cid}")
        _decompressors[cid] = fn
        return fn
