"""What a replay machine is, and what its code is blamed for.

Owns the machine contract: `LmdbView` (the base class of a view machine, with the default digest
of its database), the checks that an object is a machine (`check_machine`), and `MachineCall`:
the mark (`exc.tidelog_machine_call`, plus a note) put on an exception that a machine's own
method raised, naming the method and the record offset. Holds no state; releases nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, Optional

from tidelog import _core

from tidelog.replay.checkpoint import DIGEST_SIZE


class LmdbView:
    """Base class of a machine whose state is a materialized view: key/values in its own LMDB
    database (``view:<name>`` in the log's positions environment), written in the same write
    transaction that commits the replayer's position: exactly-once effects, no snapshot.

    Define ``apply(self, record, txn)``; optionally ``apply_batch(self, batch, txn)`` (then
    called instead, with RecordBatches) and ``digest(self, txn) -> bytes``. `txn` is an lmdb
    write Transaction whose default database is this view's: ``txn.get(key)``,
    ``txn.put(key, value)``, ``txn.delete(key)``, ``txn.cursor()`` read and write the view (and
    see the writes of earlier records not yet checkpointed). Don't commit or abort it, and don't
    keep it, or values read through it, past the call. `self.db` is the view's database handle.

    The default digest hashes every key and value (one pass over the view per checkpoint);
    override `digest` for a large view (for instance keep a running hash of what apply writes, in
    the view itself). Read a view from elsewhere with `Replayer.read()` or
    ``tidelog.replay.read_view(log, name)``.
    """

    db: Any = None          # the view's lmdb database handle (set by the Replayer)

    def apply(self, record: _core.Record, txn: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__}.apply(record, txn)")

    def digest(self, txn: Any) -> bytes:
        """blake2b of every (key, value) of the view, in key order, length-prefixed."""
        h = hashlib.blake2b(digest_size=DIGEST_SIZE)
        update = h.update
        for k, v in txn.cursor(db=self.db).iternext():
            update(len(k).to_bytes(4, "little"))
            update(k)
            update(len(v).to_bytes(8, "little"))
            update(v)
        return h.digest()


def check_machine(machine: Any, what: str = "machine") -> bool:
    # machine: the user's object (Any: its class is theirs; what it must have is checked here)
    if isinstance(machine, type):
        raise TypeError(f"{what}: expected a machine object, not the class {machine.__name__} "
                        f"(pass an instance: {machine.__name__}())")
    view = isinstance(machine, LmdbView)
    needed = ("apply",) if view else ("apply", "snapshot", "restore")
    for method in needed:
        if not callable(getattr(machine, method, None)):
            raise TypeError(
                f"{what}: {type(machine).__name__} has no {method}() method; a machine needs "
                f"apply(record), snapshot() and restore(snapshot), or subclasses "
                f"tidelog.LmdbView and defines apply(record, txn)")
    if view and type(machine).apply is LmdbView.apply:
        raise TypeError(f"{what}: {type(machine).__name__} does not define apply(record, txn)")
    return view


class MachineCall(NamedTuple):
    """Where a replay machine's own code raised: the exception carries this as
    ``exc.tidelog_machine_call`` (and, on Python 3.11+, as a note in its traceback)."""
    machine: str                # the machine's class name
    method: str                 # "apply", "apply_batch", "snapshot", "digest" or "restore"
    offset: Optional[int]       # the record (apply), the batch's first record (apply_batch),
                                # or the checkpoint's offset (snapshot, digest, restore)
    where: str                  # e.g. "at record offset 650"
    replayer: Optional[str]     # the replayer's name (None: ephemeral)

    def __str__(self) -> str:
        who = "" if self.replayer is None else f" (replayer {self.replayer!r})"
        return f"{self.machine}.{self.method}() raised {self.where}{who}"


def machine_call(exc: BaseException) -> Optional[MachineCall]:
    """The MachineCall of an exception raised by a replay machine's method, else None."""
    call = getattr(exc, "tidelog_machine_call", None)
    return call if isinstance(call, MachineCall) else None


def blame(exc: BaseException, machine: Any, method: str, offset: Optional[int], where: str,
          replayer: Optional[str]) -> None:
    """Mark `exc`, raised by machine.<method>, with the method and the record offset; the
    exception itself propagates unchanged (its type is the machine's business)."""
    if machine_call(exc) is not None or isinstance(exc, KeyboardInterrupt):
        return                              # said already (innermost call), or not its doing
    call = MachineCall(type(machine).__name__, method, offset, where, replayer)
    try:
        exc.tidelog_machine_call = call      # type: ignore[attr-defined]  # the mark itself
    except (AttributeError, TypeError):     # an exception type without a __dict__
        return
    if hasattr(exc, "add_note"):
        exc.add_note(f"tidelog: {call}")
