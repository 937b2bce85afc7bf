"""Operator tools over a log directory: verify, repair, salvage (what `tidelog verify` and
`tidelog repair` run).

Each opens the log itself and closes it before returning, and returns a report; none holds state.
`verify` and `salvage` open it read-only (they work while a writer appends); `repair` needs the
writer lock. The reads and the index rebuild release the GIL inside the core (tidelog._core).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple, Union, cast

import tidelog
from tidelog.errors import CorruptLogError, OffsetOutOfRangeError

if TYPE_CHECKING:
    from tidelog.log import PathArg

__all__ = ["verify", "repair", "salvage", "VerifyReport", "Damage", "RepairReport",
           "SalvageReport"]

BATCH = 65536           # records per read_batch while verifying


@dataclass(frozen=True)
class Damage:
    """Where verify stopped: the file and byte position of the damaged frame and the offset of
    the record it should hold (None where unknown). `file` is None when the log holds fewer
    records than it claims and no single frame is to blame."""
    file: Optional[str]
    position: Optional[int]
    offset: Optional[int]
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """What verify found. True (as a bool) when every record read back CRC-valid."""
    path: str
    start: int                  # the log's [start, end) when verify began
    end: int
    records: int                # records read and CRC-checked
    damage: Optional[Damage] = None
    indexes: List[Tuple[str, int]] = field(default_factory=list)
    # [(index file, entries wrong or missing)]: hints only (lookups still work, slower);
    # checked only when the records are clean; `repair` rewrites them

    def __bool__(self) -> bool:
        return self.damage is None


@dataclass(frozen=True)
class RepairReport:
    """What repair did: `truncated` is (segment file, byte position, offset, problem) of the
    cut, None when nothing was cut; `start`/`end` the log's offsets after it."""
    path: str
    truncated: Optional[Tuple[str, int, int, str]]
    start: int
    end: int
    indexes_rebuilt: int        # segments whose index files were rewritten


@dataclass(frozen=True)
class SalvageReport:
    """What salvage copied: `records` records into `out`; `lost` the offset ranges [a, b) of
    the source that could not be read (damage, a missing segment)."""
    out: str
    records: int
    lost: List[Tuple[int, int]]


def verify(path: PathArg, *,
           progress: Optional[Callable[[int, int], object]] = None) -> VerifyReport:
    """Read every record of the log at `path` from start to end, checking each frame's CRC, then
    (when clean) check the index files against the frames. Opens the log read-only.

    progress: None, or a callable(records read, records to read) called before the first read
    and after each batch. Returns a VerifyReport; damage is reported, not raised (a missing or
    unreadable log still raises as tidelog.open does)."""
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a callable, not {type(progress).__name__}")
    with tidelog.open(path, readonly=True) as log:
        start, end = log.start_offset, log.end_offset
        cur = log.cursor(start)
        n = 0
        damage = None
        if progress is not None:
            progress(0, end - start)
        try:
            while cur.position < end:
                batch = cur.read_batch(min(BATCH, end - cur.position))
                if not len(batch):
                    break
                n += len(batch)
                if progress is not None:
                    progress(n, end - start)
        except CorruptLogError as exc:
            damage = Damage(exc.path, exc.position, exc.offset,
                            str(exc).split("; run `tidelog verify")[0])
        except OffsetOutOfRangeError as exc:       # a segment file is missing
            damage = Damage(log.path, None, cur.position, str(exc))
        if damage is None and n != end - start:
            damage = Damage(None, None, start + n, f"read {n} records, the log claims "
                                                   f"{end - start} ([{start}, {end}))")
        indexes = [] if damage is not None else log.index_problems()
        return VerifyReport(log.path, start, end, n, damage, indexes)


def repair(path: PathArg, *, truncate: bool = False) -> RepairReport:
    """Repair the log at `path` (it must exist; needs the writer lock): with `truncate`, cut it
    at the first damaged record, deleting that record and everything after it (acknowledged or
    not); then rewrite the index files that disagree with their segments' frames. Check first
    with verify(). Returns a RepairReport."""
    if not isinstance(truncate, bool):
        raise TypeError(f"truncate: expected a bool, not {type(truncate).__name__}")
    log = tidelog.open(path, create=False, durability="none",
                       repair="truncate" if truncate else None)
    try:
        truncated = cast(Optional[Tuple[str, int, int, str]],      # the core's tuple
                         tuple(log.repaired) if log.repaired else None)
        start, end = log.start_offset, log.end_offset
        n = log.rebuild_indexes()
        return RepairReport(log.path, truncated, start, end, n)
    finally:
        log.close()


# out: typed as a str path (a bytes path works too, but then SalvageReport.out is bytes)
def salvage(path: PathArg, out: Union[str, os.PathLike[str]]) -> SalvageReport:
    """Copy every CRC-valid record of the log at `path`, skipping damage, into a new log at
    `out` (which must not exist or be an empty directory): an operator's last resort. The source
    is opened read-only and left as it is; in the copy, offsets are renumbered from 0, keys,
    timestamps and headers are kept. Returns a SalvageReport naming the source offsets lost."""
    out = os.fspath(out)
    existed = os.path.exists(out)
    if existed and os.listdir(out):
        raise ValueError(f"out: {out} exists and is not empty")
    made: list[bool] = []
    try:
        return _salvage(path, out, made)
    except BaseException:
        # a failed salvage (a codec missing for a compressed frame, a full disk) leaves no
        # half-made log behind: `out` is as it was, and a retry may use it. Only a log this
        # call made (it held its writer lock): never the files of another salvage into `out`
        if made and os.path.isdir(out):
            for name in os.listdir(out):
                try:
                    os.unlink(os.path.join(out, name))
                except OSError:
                    pass
            if not existed:
                try:
                    os.rmdir(out)
                except OSError:
                    pass
        raise


def _salvage(path: PathArg, out: str, made: list[bool]) -> SalvageReport:
    kept = 0
    gaps = []
    with tidelog.open(path, readonly=True) as src, tidelog.open(out, durability="none") as dst:
        made.append(True)
        expect = src.start_offset
        for rec in src.salvage():
            if rec.offset > expect:
                gaps.append((expect, rec.offset))
            dst.append(bytes(rec.value), key=rec.key, timestamp=rec.timestamp,
                       headers=rec.headers or None)
            expect = max(expect, rec.offset + 1)
            kept += 1
        end = src.end_offset
    if expect < end:
        gaps.append((expect, end))
    return SalvageReport(out, kept, gaps)
