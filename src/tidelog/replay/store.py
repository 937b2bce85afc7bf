"""Replayers seen from outside a Replayer: list them, read a view, forget one.

Owns the module functions over a log's positions store that need no running Replayer:
`replayers(log)` (every stored Checkpoint), `read_view(log, name)`, `delete_replayer(log, name)`
(one write transaction removing a name's position, checkpoint, snapshot, digests and view), and
the argument check shared by every replay entry point (`check_log`). Reading never creates the
store or a database in it (`existing_dbs`). The format of what they read is checkpoint.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from tidelog.errors import LogClosedError
from tidelog.positions import check_name
from tidelog.replay.checkpoint import (CHECKPOINTS_DB, DIGESTS_DB, SNAPSHOT_SUFFIX,
                                       VIEW_DB_PREFIX, Checkpoint, digest_key, stored_digests,
                                       unpack_header)


if TYPE_CHECKING:
    from tidelog.log import Log
    from tidelog.positions import PositionStore


def check_log(log: object) -> None:
    from tidelog.log import Log
    if not isinstance(log, Log):
        raise TypeError(f"log: expected a tidelog.Log (from tidelog.open), not "
                        f"{type(log).__name__}")
    if log.closed:
        raise LogClosedError(f"{log.path}: the log is closed")


def existing_dbs(log: Log, *names: str) -> tuple[Optional[PositionStore], list[bool]]:
    """(store, [whether it exists, per name]) without creating anything: reading never creates
    the positions store or a database in it. store is None when there is no store. (Handles
    are looked up inside each transaction: a lock-less reader's copy may change between.)"""
    store = log.position_store(create=False)
    if store is None:
        return None, [False] * len(names)
    return store, [store.has_db(n) for n in names]


def replayers(log: Log) -> dict[str, Checkpoint]:
    """{name: Checkpoint} of every replayer with a checkpoint in this log's positions store."""
    check_log(log)
    store, (has_cp,) = existing_dbs(log, CHECKPOINTS_DB)
    if not has_cp:
        return {}
    assert store is not None            # (for mypy) a database exists only in a store
    return store.read(lambda txn: {bytes(k).decode("utf-8"): unpack_header(v) for k, v in
                                   txn.cursor(db=store.db(CHECKPOINTS_DB)) if b"\0" not in k})


def delete_replayer(log: Log, name: str) -> bool:
    """Forget replayer `name`: its position, checkpoint, digests and view. True if it had any.
    (A live Replayer of that name in this process must not be used afterwards.)"""
    check_log(log)
    name_b = check_name(name, "name", existing=True)
    store = log.position_store()
    cp_db, dg_db = store.db(CHECKPOINTS_DB), store.db(DIGESTS_DB)
    store.positions_db                  # opened before the write transaction, as the others
    view_key = VIEW_DB_PREFIX + name

    def delete(txn: Any) -> bool:       # txn: an lmdb Transaction (lmdbenv types it Any)
        found = store.delete(name, txn)
        found |= txn.delete(name_b, db=cp_db)
        txn.delete(name_b + SNAPSHOT_SUFFIX, db=cp_db)
        keys = [k for k, _ in stored_digests(txn, dg_db, name_b + b"\0", 0)]
        for off in keys:
            txn.delete(digest_key(name_b + b"\0", off), db=dg_db)
        found |= bool(keys)
        if txn.get(view_key.encode(), db=None) is not None:    # a named db lives in the main db
            txn.drop(store.shared.db(view_key, txn=txn), delete=True)
            found = True
        return found

    try:
        return store.write(delete)
    finally:
        store.shared.forget_db(view_key)    # the handle is gone with the database


def read_view(log: Log, name: str) -> Any:
    """A read transaction on the view of LmdbView replayer `name` (default database the view),
    a context manager: ``with read_view(log, "counts") as txn: txn.get(b"u42")``. KeyError when
    there is no such view."""
    check_log(log)
    check_name(name, "name", existing=True)
    store, (has_view,) = existing_dbs(log, VIEW_DB_PREFIX + name)
    if not has_view:
        raise KeyError(f"no replayer view named {name!r} in {log.path}")
    assert store is not None            # (for mypy) a database exists only in a store
    return store.shared.reader(db=VIEW_DB_PREFIX + name)
