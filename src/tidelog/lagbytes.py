"""Lag in bytes: the value bytes from each subscriber's position to the end of a log, counted in
one read pass shared by every subscriber, exact or (far behind) estimated. Reads only; holds no
state. The reads release the GIL inside the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, Optional, Tuple

from tidelog.errors import CorruptLogError, OffsetOutOfRangeError, TidelogError

BATCH = 65536                 # records per read_batch
SCAN_RECORDS = 5_000_000      # by default, read at most this many records back from the end
SCAN_BYTES = 1 << 30          # ... and about this many value bytes (~0.3 s from the page cache)
SAMPLE = 4096                 # records near the end that estimate the record size first

if TYPE_CHECKING:
    from tidelog.log import Log


def bytes_behind(log: Log, offsets: Iterable[int], end: int, exact: bool = False, *,
                 sample: int = SAMPLE, scan_records: int = SCAN_RECORDS,
                 scan_bytes: int = SCAN_BYTES
                 ) -> Tuple[Dict[int, Tuple[int, bool]], Optional[TidelogError]]:
    """({position: (value bytes in [position, end), approximate?)}, problem or None).

    One pass from the lowest position serves every subscriber: read_batch stops at each
    position, so each gets its exact share. Unless `exact`, the pass starts at most about
    `scan_records` records / `scan_bytes` bytes before `end` (the bytes of `sample` records
    at the end estimate how many records that is); bytes further back are extrapolated from the
    mean value size of the records read. A position below start_offset counts from there (the
    records before it are gone); one beyond `end` gets no entry."""
    start = log.start_offset
    inside = sorted({max(pos, start) for pos in offsets if pos <= end})
    if not inside:
        return {}, None
    lo = scan_lo = inside[0]
    try:
        if not exact and end - lo > sample:
            last = log.cursor(end - sample).read_batch(sample)   # one segment's
            mean = last.nbytes / len(last) if len(last) else 0
            window = scan_records if not mean else int(scan_bytes / mean)
            scan_lo = max(lo, end - max(sample, min(scan_records, window)))
        marks = [pos for pos in inside if pos >= scan_lo]
        before: Dict[int, int] = {}          # position -> value bytes in [scan_lo, position)
        cur = log.cursor(scan_lo)
        at, total, i = scan_lo, 0, 0
        while True:
            while i < len(marks) and marks[i] <= at:
                before[marks[i]] = total
                i += 1
            if at >= end:
                break
            batch = cur.read_batch(min(BATCH, (marks[i] if i < len(marks) else end) - at))
            if not len(batch):
                return {}, TidelogError(f"the log ends at {at}, before its end offset {end}")
            total += batch.nbytes
            at += len(batch)
    except (CorruptLogError, OffsetOutOfRangeError) as exc:
        return {}, exc
    mean = total / (end - scan_lo) if end > scan_lo else 0.0
    out: Dict[int, Tuple[int, bool]] = {}
    for pos in offsets:
        if pos > end:
            continue
        at = max(pos, start)
        if at >= scan_lo:
            out[pos] = (total - before[at], False)
        else:
            out[pos] = (total + round((scan_lo - at) * mean), True)
    return out, None
