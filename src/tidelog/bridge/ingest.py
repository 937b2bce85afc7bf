"""The ingester: every message of a Kafka partition or a JetStream stream, once, in order, into a
log.

Owns the resume decision and the append loop; the broker side is a source object (kafka.py,
nats.py) with batches() / close(). Exactly once by construction: the log is the only record of
progress. Each record carries its source position in a header (`kafka-offset`, `nats-sequence`);
at start the ingester reads it from the log's last ingested record and asks the source for what
follows. After a kill -9 the log reopens as a gap-free prefix of what was appended, so the
position it holds is exactly where to go on.

The position header says where in *a* source the log stopped, not in which: the file
`bridges/ingest.source` in the log's directory names the source (Kafka topic and partition, NATS
stream and subject filter) whose positions the log holds, written before the first append, and
an ingest of another source into a log holding positions is refused (it would resume at the
first source's position). It only guards: where to resume still comes from the log alone.

The positions a source hands out must go on past the log's last one, strictly increasing
(_check_order): a batch that goes back or repeats is refused whole, since the next resume would
trust it. Gaps are the source's to find (Kafka offsets skip legitimately: transaction markers,
compaction): a position its retention deleted is an error there, or with skip_gap a jump.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable
from itertools import islice
from typing import Optional, Union

import tidelog
from tidelog import _args
from tidelog.bridge.base import BridgeError, Source, headers_of
from tidelog.bridge.lock import LOCK_DIR, BridgeLock

__all__ = ["run_ingest", "last_position"]

SYNC_BYTES = 16 << 20  # values appended between syncs of a log whose durability is "none" (a
                       # "batch" or "always" log's own syncs keep up; the end of a run syncs the
                       # rest)
SCAN_LIMIT = 1_000_000  # records read backwards looking for the last ingested one
CATCH_UP_SYNC = 0.05   # s: the flusher's interval of a log the ingester opens to catch up (not
                       # --follow; the log's default, 5 ms, when following): nothing waits on
                       # those syncs, and each fdatasync cost the machine a journal commit. 1 KiB
                       # from Tansu, 6 rounds twice, one process: machine CPU 7.38 -> 6.43 and
                       # 8.18 -> 7.02 us a record (/proc/stat), records/s +3.5 % and +12 %;
                       # 0.2 s no better than 0.05


def last_position(log: tidelog.Log, header: str) -> Optional[int]:
    """The source position in the last record of `log` that carries `header` (None: none)."""
    off = log.end_offset - 1
    stop = max(log.start_offset, log.end_offset - SCAN_LIMIT)
    while off >= stop:
        for k, v in reversed(headers_of(log.read(off))):
            if k == header:
                text = bytes(v).decode("ascii", "replace")
                if not text.isdigit():
                    raise BridgeError(f"record {off} of the log has a malformed {header} "
                                      f"header; refusing to guess where to resume")
                return int(text)
        off -= 1
    if stop > log.start_offset:
        raise BridgeError(f"none of the log's last {SCAN_LIMIT} records carries {header}: if "
                          f"it was ever ingested into, where to resume is unknown; ingest into "
                          f"a log of its own")
    if log.start_offset > 0:
        # retention deleted records 0..start-1: they may have been the ingested ones, and
        # starting the source over would append every message again
        raise BridgeError(f"no record of the log carries {header}, but its records "
                          f"0..{log.start_offset - 1} were deleted (retention): if they were "
                          f"ingested, where to resume is unknown; ingest into a log of its own")
    return None


SOURCE_FILE = "ingest.source"   # in the bridges/ directory of the log (lock.LOCK_DIR)


def _check_source(log_path: str, origin: str, holds_positions: bool) -> None:
    """Refuse when the log holds positions of another source than `origin`; else note
    `origin` as the log's source (durably, before anything is appended)."""
    path = os.path.join(log_path, LOCK_DIR, SOURCE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            known: Optional[str] = f.read().strip() or None
    except FileNotFoundError:
        known = None
    if known == origin:
        return
    if known is not None and holds_positions:
        raise BridgeError(f"the log holds positions of another source ({known}), not of "
                          f"{origin}: resuming there would skip or repeat messages; ingest into "
                          f"a log of its own")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(origin + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_order(positions: list[int], last: Optional[int], header: str) -> None:
    """Refuse a batch whose positions do not all follow `last` (the log's last ingested one)
    in strictly increasing order: a source whose positions went backwards or repeated (a topic
    or stream deleted and made again, a broker that lost what it acknowledged) would make the
    resume point lie. Nothing of the batch is appended; what was before it stays."""
    if (last is None or positions[0] > last) and all(map(operator.lt, positions,
                                                         islice(positions, 1, None))):
        return
    prev = last
    for p in positions:
        if prev is not None and p <= prev:
            raise BridgeError(f"the source's message at {header} {p} came after {header} "
                              f"{prev}: its positions went backwards or repeated (was it "
                              f"deleted and made again?); ingesting it would break the resume "
                              f"point; ingest into a log of its own")
        prev = p


def _check_stamps(stamps: list[int], positions: list[int], header: str) -> None:
    """On a batch the log refused: a message stamped beyond what a record holds (int64 ns
    since the epoch: 1677-09-21 to 2262-04-11; a Kafka timestamp in ms can be any int64) is
    named by its position (was: append_batch's words only, of a batch's `timestamps`, which
    the user never gave). Checked after the refusal only: nothing per message before it."""
    for t, p in zip(stamps, positions):
        if not _args.INT64_MIN <= t <= _args.INT64_MAX:
            raise BridgeError(f"the source's message at {header} {p} is stamped {t} ns since "
                              f"the epoch, beyond what a log's record holds (int64 ns: "
                              f"1677-09-21 to 2262-04-11); it cannot be ingested") from None


def run_ingest(source: Source, log: Union[str, os.PathLike[str], tidelog.Log], *,
               name: str, header: str, follow: bool, resume: bool,
               stopping: Callable[[], bool],
               progress: Optional[Callable[[int], None]] = None,
               origin: Optional[str] = None) -> int:
    """Append what `source` (a source object) holds after the log's last ingested position;
    return the number of records appended. `origin` names the source (see SOURCE_FILE)."""
    own = not isinstance(log, tidelog.Log)
    path = log.path if isinstance(log, tidelog.Log) else os.fspath(log)
    # the bridge lock first when the log exists, so a second ingester hears who runs. A log
    # exists once its control file does: a creation killed before that leaves tidelog.lock
    # alone, which the open below finishes, but not with a bridges/ directory added (files
    # that are not a log's: the open would refuse the directory)
    lock = (BridgeLock(path, "ingest", name)
            if os.path.isfile(os.path.join(path, "tidelog.ctl")) else None)
    try:
        # A log the ingester opens syncs in the background ("batch": the flusher, every 5 ms)
        # with no bound on what is not yet synced: max_unsynced_bytes makes an append wait for
        # the disk once 4 MiB are pending, which at 1 KiB values stalled the loop for every 4
        # MiB. Exactly once does not rest on it: what a power loss takes from the log's end,
        # the source still holds, and the resume point comes from the log as it reopens.
        # (durability "none" with a sync every second was measured too: slower at 1 KiB, 0.35x
        # against 0.49x of the raw loop, the syncs blocking the loop instead of the flusher's)
        # Catching up (not follow), the flusher syncs every CATCH_UP_SYNC instead of 5 ms:
        # readers of durable records only (named cursors, replay) see them that much later.
        if isinstance(log, tidelog.Log):
            lg = log
        elif follow:
            lg = tidelog.open(path, max_unsynced_bytes=None)
        else:
            lg = tidelog.open(path, max_unsynced_bytes=None, sync_interval=CATCH_UP_SYNC)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    try:
        with lock or BridgeLock(lg.path, "ingest", name):
            after = last_position(lg, header) if resume else None
            if resume and origin is not None:
                _check_source(lg.path, origin, after is not None)
            got = 0
            unsynced = 0
            last = after
            own_syncs = lg.durability != "none"
            for b in source.batches(after, follow, stopping):
                _check_order(b.positions, last, header)
                # (no keys at all: None, and the log looks at no key per record)
                keys = None if b.keys.count(None) == len(b.keys) else b.keys
                try:
                    lg.append_batch(b.values, keys=keys, timestamps=b.timestamps,
                                    headers=b.headers,
                                    int_headers=(None if b.position_header is None else
                                                 {b.position_header: b.positions}),
                                    value_offsets=b.value_offsets)
                except (TypeError, ValueError):
                    _check_stamps(b.timestamps, b.positions, header)
                    raise
                last = b.positions[-1]
                got += len(b)
                if not own_syncs:
                    unsynced += b.value_bytes()
                    if unsynced >= SYNC_BYTES:
                        lg.sync()
                        unsynced = 0
                if progress is not None:
                    progress(got)
            lg.sync()
            return got
    finally:
        if own:
            lg.close()
