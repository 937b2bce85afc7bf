"""Replay driver: turn a log into state exactly once, and check that replicas agree.

A *machine* is a deterministic state machine: the same records applied in the same order give the
same state (no clocks, no randomness, no I/O in `apply`). Two kinds:

- a snapshot machine, any object with ``apply(record)``, ``snapshot() -> bytes`` and
  ``restore(snapshot)`` (optionally ``apply_batch(batch)``, which then gets whole
  `RecordBatch`es: one call per up to 65536 records, for numpy folds; and ``digest() -> bytes``
  to replace the default digest, blake2b of the snapshot);
- an `LmdbView`, a materialized view whose state is key/values in an LMDB database:
  ``apply(record, txn)`` (optionally ``apply_batch(batch, txn)``, ``digest(txn)``) writes through
  `txn`, the very write transaction that commits the position, so there is no snapshot blob.

`Replayer` reads durable records only (``offset < log.durable_offset``), so a checkpoint never
covers a record that a power loss could take back.

Storage: the log's positions environment (``<log>/positions``, LMDB with sync on, shared with
named cursors), one write transaction per checkpoint::

    positions     name -> position   (so log.positions() and log.lag() list replayers)
    checkpoints   name -> header (format, kind, position, digest, replica progress)
                  name NUL "snapshot" -> the snapshot (none for a view)
    digests       name NUL offset (8 bytes, big-endian) -> digest of the state at that offset
    view:<name>   an LmdbView's key/values

Exactly once. The state (snapshot, or the view's writes) and the position that produced it commit
in one transaction; LMDB makes the commit atomic and durable. A crash at any moment leaves the
last committed pair; a new Replayer of the same name restores it and resumes at its position, so
every record's effect is in the state exactly once. A view's writes since the last checkpoint sit
in an open write transaction that a crash aborts. Two live replayers of one name would undo that
guarantee, so each checkpoint (and each view transaction) first checks that the stored checkpoint
is still the one this replayer restored or wrote, and raises `TidelogError` otherwise.

Side effects outside the state (e-mails, HTTP calls, another database) cannot join the LMDB
transaction, so they happen at least once, and are made idempotent by keying them on the record's
offset (with the replayer's name: ``f"{name}:{record.offset}"``), which names the same effect in
every replay of the record:

- pass the key to a receiver that deduplicates on it (an idempotency key, an upsert keyed on it);
- or keep an outbox: an LmdbView's `apply` writes the pending effect into its view under the
  offset (committed exactly once, with the position), and a separate sender delivers the outbox
  entries in order and deletes each after the receiver acknowledged it; a crash between delivery
  and deletion redelivers with the same key, which the receiver drops.

Never perform the effect inside `apply` itself: `apply` runs again for every record after the
last checkpoint when a replayer resumes, and in every replica.

Checkpoints fall at offsets that are multiples of `checkpoint_every` (plus where `run` returns,
where `checkpoint_interval` elapses, and, for views, where a following replayer is caught up), so
two replicas with the same `checkpoint_every` checkpoint at the same offsets. Each checkpoint
records a digest of the state there. A replayer declared ``replica_of="other"`` compares its
digests with the other's at every common offset, in order, as each checkpoint commits, and raises
`ReplicaDivergedError` naming the first offset where they differ (the checkpoint is not stored).
`verify_determinism(log, factory)` runs two fresh replicas side by side without storing anything
and reports the first difference, down to the record when a record-by-record re-run shows it.

Layout: checkpoint.py (the stored format and state digests), machine.py (the machine contract
and blame), replayer.py (Replayer: the run loop, checkpoints, fencing), compare.py (replica
comparison), store.py (list, read and forget replayers from outside), determinism.py
(verify_determinism).
"""

from tidelog.replay.checkpoint import (  # noqa: F401  (the names tidelog.replay always had)
    CHECKPOINTS_DB, DIGEST_SIZE, DIGESTS_DB, FORMAT, HEADER, KIND_NAMES, KIND_SNAPSHOT,
    KIND_VIEW, MAGIC, NO_DIGEST, OFFSET, SNAPSHOT_SUFFIX, VIEW_DB_PREFIX, Checkpoint)
from tidelog.replay.machine import LmdbView, MachineCall, machine_call
from tidelog.replay.replayer import (  # noqa: F401
    BATCH_RECORDS, CHUNK_RECORDS, IDLE_WAIT, PROGRESS_EVERY, Replayer)
from tidelog.replay.compare import check_replica
from tidelog.replay.store import delete_replayer, read_view, replayers
from tidelog.replay.determinism import DeterminismReport, verify_determinism

__all__ = ["Replayer", "LmdbView", "verify_determinism", "DeterminismReport", "Checkpoint",
           "check_replica", "delete_replayer", "read_view", "replayers", "MachineCall",
           "machine_call"]
