"""verify_determinism: two fresh replicas side by side, and the first record where they differ.

Owns DeterminismReport and the side-by-side run: two ephemeral Replayers (they store nothing in
the log's directory) stepped to the same checkpoint offsets, their digests compared, and, at the
first difference, a record-by-record re-run from the last agreeing snapshot (`_locate_record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Optional

from tidelog import _args
from tidelog.errors import ReplicaDivergedError
from tidelog.replay.checkpoint import as_bytes, digest_of
from tidelog.replay.machine import blame, check_machine
from tidelog.replay.replayer import Replayer
from tidelog.replay.store import check_log


if TYPE_CHECKING:
    from tidelog.log import Log


@dataclass(frozen=True)
class DeterminismReport:
    """What verify_determinism found. True (as a bool) when the replicas agreed throughout."""
    deterministic: bool
    start: int                  # the first record replayed
    end: int                    # where the comparison stopped (the divergence, or the end)
    checkpoints: int            # digests compared
    checkpoint_every: int
    offset: Optional[int] = None    # first checkpoint offset whose digests differ
    since: Optional[int] = None     # last checkpoint offset where they agreed
    record: Optional[int] = None    # the first record after which a re-run's states differ

    def __bool__(self) -> bool:
        return self.deterministic

    def __str__(self) -> str:
        if self.deterministic:
            return (f"deterministic: two replicas agree at all {self.checkpoints} checkpoints "
                    f"over [{self.start}, {self.end}) (every {self.checkpoint_every} records)")
        since = "no earlier checkpoint" if self.since is None else f"agreed at {self.since}"
        where = (f"; record {self.record} is the first whose effect differs"
                 if self.record is not None else "")
        return (f"NOT deterministic: the replicas' states differ at checkpoint offset "
                f"{self.offset} ({since}){where}")


def verify_determinism(log: Log, factory: Callable[[], Any], *, until: int | None = None,
                       checkpoint_every: int = 10_000, locate_record: bool = True,
                       raise_on_divergence: bool = True) -> DeterminismReport:
    """Replay the log into two fresh machines from `factory()` side by side, stepping both to each
    multiple of `checkpoint_every` (and to `until`, default the durable end) and comparing their
    digests there. Stores nothing: no positions, no checkpoints, nothing in the log's directory
    (two LmdbViews live in temporary LMDB environments outside the log, deleted at the end).

    Returns a DeterminismReport. At the first checkpoint offset whose digests differ, with
    `locate_record` (snapshot machines), the interval since the last agreement is re-run record
    by record in two more fresh machines, restored from the agreeing snapshot, comparing digests
    after each record, to name the first record whose effect differs (`report.record`; None if
    the re-run does not reproduce it). Then ReplicaDivergedError (with `.report`) unless
    `raise_on_divergence=False`."""
    check_log(log)
    if not callable(factory):
        raise TypeError(f"factory: expected a callable that returns a fresh machine, not "
                        f"{type(factory).__name__}")
    checkpoint_every = _args.count(checkpoint_every, "checkpoint_every")
    start, durable = log.start_offset, log.durable_offset
    if until is None:
        until = durable
    elif not start <= (until := _args.offset(until, "until")) <= durable:
        raise ValueError(f"until: {until} is outside [start_offset, durable_offset] = "
                         f"[{start}, {durable}]")
    ma, mb = factory(), factory()
    view = check_machine(ma, "factory()")
    if check_machine(mb, "factory()") != view or ma is mb:
        raise TypeError("factory: must return a new machine of the same kind on every call")
    a = b = None
    try:
        a = Replayer(log, ma, name=None, checkpoint_every=checkpoint_every)
        b = Replayer(log, mb, name=None, checkpoint_every=checkpoint_every)
        pos, since, compared, agreed_snapshot = start, None, 0, None
        report = None
        while pos < until:
            cp = min(until, (pos // checkpoint_every + 1) * checkpoint_every)
            a.run(until=cp)
            b.run(until=cp)
            # run() checkpointed both at cp, so neither last_digest is None
            (oa, da), (ob, db) = a.last_digest, b.last_digest  # type: ignore[misc]
            assert oa == ob == cp, (oa, ob, cp)
            compared += 1
            if da != db:
                record = None
                if locate_record and not view:
                    record = _locate_record(log, factory, agreed_snapshot,
                                            start if since is None else since, cp)
                report = DeterminismReport(False, start, cp, compared, checkpoint_every,
                                           offset=cp, since=since, record=record)
                break
            since, pos = cp, cp
            if not view:
                agreed_snapshot = a.last_snapshot
        if report is None:
            report = DeterminismReport(True, start, pos, compared, checkpoint_every, since=since)
    finally:
        for r in (a, b):
            if r is not None:
                r.close()
    if not report and raise_on_divergence:
        raise ReplicaDivergedError(str(report), offset=report.offset, since=report.since,
                                   record=report.record, report=report)
    return report


def _locate_record(log: Log, factory: Callable[[], Any], snapshot: Optional[bytes], start: int,
                   stop: int) -> Optional[int]:
    # factory: the user's (it returns their machine objects: Any)
    """The first record in [start, stop) after which two fresh machines (restored from
    `snapshot`, or new when None) applying the same records have different digests, or None."""
    m1, m2 = factory(), factory()
    method: Optional[str]
    method, at = "restore", start
    try:
        if snapshot is not None:
            m1.restore(snapshot)
            m2.restore(snapshot)
        method = None                   # reading the log: not the machine's doing
        for rec in islice(log.cursor(start, durable_only=True), stop - start):
            at = rec.offset
            method = "apply"
            m1.apply(rec)
            m2.apply(rec)
            method = "snapshot"
            s1, s2 = as_bytes(m1.snapshot(), "snapshot()"), as_bytes(m2.snapshot(), "snapshot()")
            method = "digest"
            if digest_of(m1, False, s1) != digest_of(m2, False, s2):
                return rec.offset
            method = None
    except BaseException as exc:
        if method is not None:
            blame(exc, m1, method, at,
                   f"at record offset {at} (locating the first differing record)", None)
        raise
    return None
