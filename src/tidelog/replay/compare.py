"""Replica comparison: a replayer's digests against its reference's, offset by offset.

Owns the rule of agreement (`compare_digests`): walk a replica's (offset, digest) pairs in order,
compare each with the reference's digest at the same offset, skip offsets the reference passed
without a digest, stop at one it has not reached, and raise ReplicaDivergedError at the first
difference. `check_replica(log, name, reference)` applies it to two stored replayers. Reads
inside its caller's (or its own read) transaction; writes nothing.

Types: `txn` and the database handles are py-lmdb's, typed Any as tidelog.lmdbenv hands them out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional

from tidelog.errors import ReplicaDivergedError
from tidelog.positions import check_name
from tidelog.replay.checkpoint import (CHECKPOINTS_DB, DIGESTS_DB, digest_key, stored_digests,
                                       unpack_header)
from tidelog.replay.store import check_log, existing_dbs

if TYPE_CHECKING:
    from tidelog.log import Log


def compare_digests(txn: Any, cp_db: Any, dg_db: Any, own: Iterable[tuple[int, bytes]],
                    name: Optional[str], reference: str, verified: int, agreed: int,
                    upto: int) -> tuple[tuple[int, int], int]:
    """Compare `own` digests ((offset, digest) ascending, offsets > verified) with those of
    `reference` up to offset `upto`; returns the new (verified, agreed) and how many offsets were
    compared; ReplicaDivergedError at
    the first difference. An offset the reference has passed without a digest there is skipped;
    one it has not reached yet stops the comparison (to be resumed later)."""
    ref = check_name(reference, "replica_of")
    raw = txn.get(ref, db=cp_db)
    ref_pos = None if raw is None else unpack_header(raw).position
    prefix = ref + b"\0"
    compared = 0
    for off, digest in own:
        if off > upto:
            break
        if off <= verified:
            continue
        theirs = txn.get(digest_key(prefix, off), db=dg_db)
        if theirs is None:
            if ref_pos is None or ref_pos < off:
                break
            verified = off
            continue
        if bytes(theirs) != bytes(digest):
            who = "an unnamed replica" if name is None else f"replica {name!r}"
            since = "never agreed before" if agreed < 0 else f"last agreed at {agreed}"
            lo = max(agreed, 0)
            raise ReplicaDivergedError(
                f"{who} diverged from {reference!r} at checkpoint offset {off}: the state after "
                f"the records below {off} has digest {bytes(digest).hex()}, {reference!r} had "
                f"{bytes(theirs).hex()} ({since}; the first differing record lies in "
                f"[{lo}, {off})). A machine must not read clocks, random numbers or anything "
                f"outside its records: check with tidelog.verify_determinism(log, factory)",
                offset=off, since=None if agreed < 0 else agreed, name=name, reference=reference,
                digest=bytes(digest), expected=bytes(theirs))
        verified = agreed = off
        compared += 1
    return (verified, agreed), compared


def check_replica(log: Log, name: str, reference: str) -> tuple[int, Optional[int]]:
    """Compare the stored digests of replayer `name` with those of `reference` at every common
    checkpoint offset. Returns (offsets compared, last offset where they agree or None);
    ReplicaDivergedError at the first difference."""
    check_log(log)
    name_b = check_name(name, "name")
    check_name(reference, "reference")
    store, (has_cp, has_dg) = existing_dbs(log, CHECKPOINTS_DB, DIGESTS_DB)
    if not (has_cp and has_dg):
        return 0, None
    assert store is not None            # (for mypy) a database exists only in a store

    def compare(txn: Any) -> tuple[tuple[int, int], int]:
        cp_db, dg_db = store.db(CHECKPOINTS_DB), store.db(DIGESTS_DB)
        return compare_digests(txn, cp_db, dg_db, stored_digests(txn, dg_db, name_b + b"\0", 0),
                        name, reference, -1, -1, 1 << 62)

    (_, agreed), n = store.read(compare)
    return n, None if agreed < 0 else agreed
