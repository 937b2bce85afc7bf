"""The mirror: every durable record of a log, once, in order, to a Kafka partition or a NATS
subject.

Owns the resume decision and the shipping loop; the broker side is a target object (kafka.py,
nats.py) with last_offset() / send() / flush() / close(). Exactly once by construction: the target is the
only record of progress. At start the mirror asks the target for the `tidelog-offset` of its last
message and ships from the next offset; a target fed in log order by one sender holds a prefix of
what was sent, so after a kill -9 at any moment nothing is missing and nothing is sent twice.
The log is opened read-only (producers keep appending); only durable records are shipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from typing import Any, Optional, Union

import tidelog
from tidelog.bridge.base import Batch, BridgeError, Target
from tidelog.bridge.lock import BridgeLock

__all__ = ["run_mirror"]

BATCH = 1000          # records per send (a target waits for acks in its own rhythm, and once
                      # the mirror caught up: Target.flush)
WAIT = 0.2            # seconds between checks for new durable records / a stop in follow mode


def _resume(log: tidelog.Log, last: Optional[int], skip_gap: bool) -> int:
    start = log.start_offset
    want = 0 if last is None else last + 1
    if want > log.end_offset:
        raise BridgeError(f"the target already holds offset {last} but the log ends at "
                          f"{log.end_offset}: it was mirrored from another log (or this one "
                          f"was recreated); refusing to mix them")
    if want < start:
        if not skip_gap:
            raise BridgeError(f"records {want}..{start - 1} were deleted by the log's "
                              f"retention before the target got them; --skip-gap ships from "
                              f"{start} on and leaves the gap")
        return start
    return want


def _target_lock(log_path: str, target_id: Optional[str]) -> Any:
    if target_id is None:
        return contextlib.nullcontext()
    digest = hashlib.sha256(target_id.encode()).hexdigest()[:24]
    return BridgeLock(log_path, "mirror-to", digest,
                      busy=f"another mirror of this log to {target_id} is running (under "
                           f"another --name); two would ship every record twice")


def run_mirror(log: Union[str, os.PathLike[str], tidelog.Log], target: Target, *,
               name: str, follow: bool, skip_gap: bool, resume: bool,
               stopping: Callable[[], bool],
               progress: Optional[Callable[[int], None]] = None,
               target_id: Optional[str] = None) -> int:
    """Ship `log` to `target` (a target object); return the number of records shipped.
    `target_id` names the target (its address): one mirror per log and target, whatever the
    names, since two would each ship every record after the last one they read."""
    own = not isinstance(log, tidelog.Log)
    lg = log if isinstance(log, tidelog.Log) else tidelog.open(os.fspath(log), readonly=True)
    try:
        with BridgeLock(lg.path, "mirror", name), _target_lock(lg.path, target_id):
            last = target.last_offset()
            pos = _resume(lg, last, skip_gap) if resume else lg.start_offset
            cur = lg.cursor(pos, durable_only=True)
            sent = 0
            while not stopping():
                # the records as columns (read_batch: one segment's at most, values copied
                # out of the mapping, since the client libraries take bytes only)
                b = cur.read_batch(BATCH)
                if len(b):
                    target.send(Batch(b.offsets.tolist(), list(map(bytes, b.values)), b.keys,
                                      b.timestamps.tolist(), b.headers))
                    sent += len(b)
                    continue
                # caught up: what was sent is acknowledged before the mirror waits or ends
                target.flush()
                if progress is not None:
                    progress(sent)
                if not follow:
                    break
                lg.wait_durable(cur.position, WAIT)   # wakes when the writer syncs
            target.flush()
            return sent
    finally:
        if own:
            lg.close()
