"""What a replayer's checkpoint is on disk, and the digest of a state.

Owns the stored format in the positions environment (see tidelog.replay's docstring, "Storage"):
the names of the LMDB databases, the checkpoint header (`HEADER`, `MAGIC`, `FORMAT`, the kinds),
the snapshot's key, the digest keys (name NUL big-endian offset, so a name's digests sort by
offset), `Checkpoint` (a decoded header), and how a machine's state is digested (its own digest()
or blake2b of its snapshot, folded to DIGEST_SIZE bytes). Writes nothing itself: every function
here reads or builds values inside a transaction its caller holds. Nothing here releases the GIL.

Types: `txn` and `db` are py-lmdb's Transaction and database handle, typed Any as
tidelog.lmdbenv hands them out; a `machine` is the user's object (Any: any class with the
methods the contract names, checked at run time by machine.check_machine).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple, Optional, Union, cast

from tidelog.errors import TidelogError

DIGEST_SIZE = 16               # bytes of blake2b: an accidental collision is out of reach
CHECKPOINTS_DB = "checkpoints"
DIGESTS_DB = "digests"
VIEW_DB_PREFIX = "view:"
HEADER = struct.Struct("<4sBBHqqqqq16s")   # magic, format, kind, length of replica_of,
                                            # position, verified through, last agreement,
                                            # commit time ns, checkpoint_every, digest; then
                                            # replica_of (utf-8)
SNAPSHOT_SUFFIX = b"\0snapshot"   # names hold no NUL: no name's key looks like this
MAGIC = b"TLRP"
FORMAT = 1
KIND_SNAPSHOT, KIND_VIEW = 0, 1
KIND_NAMES = {KIND_SNAPSHOT: "snapshot machine", KIND_VIEW: "LmdbView"}
NO_DIGEST = bytes(DIGEST_SIZE)
OFFSET = struct.Struct(">q")    # big-endian, so a name's digests sort by offset


def as_bytes(value: Any, what: str) -> bytes:
    # value: what a machine's snapshot() or digest() returned (anything: checked here)
    if isinstance(value, bytes):
        return value
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError(f"{what}: expected bytes, not {type(value).__name__}") from None
    if "O" in view.format:      # Python object pointers (a numpy object array): not state
        raise TypeError(f"{what}: expected bytes, not a buffer of Python objects "
                        f"({type(value).__name__} of format {view.format!r})")
    return bytes(view)


def digest_of(machine: Any, view: bool, snap: Optional[bytes] = None, txn: Any = None) -> bytes:
    """The digest of a machine's state: its digest() when it has one, else blake2b of snap."""
    if view:
        d = machine.digest(txn)
    else:
        custom = getattr(machine, "digest", None)
        if custom is not None:
            d = custom()
        else:
            # a snapshot machine without digest(): its callers always pass its snapshot
            return hashlib.blake2b(cast(bytes, snap), digest_size=DIGEST_SIZE).digest()
    d = as_bytes(d, "digest()")
    if len(d) != DIGEST_SIZE:      # any length is fine: fold it to the stored size
        d = hashlib.blake2b(d, digest_size=DIGEST_SIZE).digest()
    return d


class Checkpoint(NamedTuple):
    """A replayer's stored checkpoint, as replayers(log) lists them."""
    kind: str                   # "snapshot" or "view"
    position: int
    time_ns: int                # when it was committed (ns since the epoch)
    checkpoint_every: int
    digest: Optional[bytes]     # of the state at `position` (None: digests=False)
    replica_of: Optional[str]
    agreed: Optional[int]       # a replica's last offset of agreement with replica_of
    verified: int               # ... and how far it has compared (-1: not yet)


def unpack_header(raw: Union[bytes, memoryview, None]) -> Checkpoint:
    """The Checkpoint of a stored header."""
    if raw is None or len(raw) < HEADER.size:
        raise TidelogError("replayer checkpoint: truncated header")
    magic, fmt, kind, rlen, pos, verified, agreed, t, every, digest = HEADER.unpack_from(raw)
    if magic != MAGIC or fmt != FORMAT or kind not in KIND_NAMES:
        raise TidelogError(f"replayer checkpoint: unknown format (magic {magic!r}, format {fmt}, "
                           f"kind {kind}); written by a newer tidelog?")
    ref = bytes(raw[HEADER.size:HEADER.size + rlen]).decode("utf-8") if rlen else None
    return Checkpoint("view" if kind == KIND_VIEW else "snapshot", pos, t, every,
                      None if digest == NO_DIGEST else bytes(digest), ref,
                      None if agreed < 0 else agreed, verified)


def digest_key(prefix: bytes, offset: int) -> bytes:
    return prefix + OFFSET.pack(offset)


def stored_digests(txn: Any, db: Any, prefix: bytes, start: int) -> Iterator[tuple[int, bytes]]:
    """(offset, digest) of the name whose digest keys start with `prefix`, from offset `start`."""
    cur = txn.cursor(db=db)
    if not cur.set_range(digest_key(prefix, max(start, 0))):
        return
    n = len(prefix)
    for k, v in cur.iternext():
        if not k.startswith(prefix) or len(k) != n + 8:
            return
        yield OFFSET.unpack_from(k, n)[0], v
