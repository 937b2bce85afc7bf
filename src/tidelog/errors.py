"""The exception hierarchy: every tidelog error derives from TidelogError."""

from __future__ import annotations

from typing import Any

__all__ = ["TidelogError", "LogLockedError", "OffsetOutOfRangeError", "CorruptLogError",
           "LogClosedError", "LogFailedError", "FormatVersionError", "LogFullError",
           "NotALogError", "LogNotFoundError", "ReplicaDivergedError", "LogForkedError",
           "MissingCodecError"]


class TidelogError(Exception):
    """Base of every tidelog error."""


class LogLockedError(TidelogError):
    """Another writer (in this or another process) has the log open."""


class OffsetOutOfRangeError(TidelogError, IndexError):
    """An offset outside [start_offset, end_offset)."""


class CorruptLogError(TidelogError):
    """Damage on disk: `.path`, `.position` (byte) and `.offset` say where, when known."""

    def __init__(self, message: str, *, path: str | None = None, position: int | None = None,
                 offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.position = position
        self.offset = offset


class LogClosedError(TidelogError, ValueError):
    """An operation on a closed log."""


class LogFailedError(TidelogError):
    """A sync failed: the writer is stopped for good (fail-stop); reopen to recover."""


class LogForkedError(TidelogError):
    """A writer Log used in a fork() child of the process that opened it: the log belongs to
    the parent; the child opens the log itself (readonly=True to read)."""


class FormatVersionError(TidelogError):
    """The log was written by a newer tidelog format version."""


class LogFullError(TidelogError, OSError):
    """No space left on the device (ENOSPC)."""


class NotALogError(TidelogError, NotADirectoryError):
    """The path is a file, or a directory that holds something other than a tidelog log."""


class MissingCodecError(TidelogError, ImportError):
    """The log's frames (or the `compression=` asked for) need a codec whose package is not
    installed; the message names the extra to install (``tidelog[zstd]``, ``tidelog[lz4]``)."""


class LogNotFoundError(TidelogError, FileNotFoundError):
    """No log at the path (open with readonly=True or create=False never creates one)."""


class ReplicaDivergedError(TidelogError):
    """Two replicas of a state machine reached different states after the same records.

    `.offset` is the first checkpoint offset whose digests differ (the state after applying every
    record below it); `.since` the last checkpoint offset where they agreed (None: none compared
    before), so the offending record lies in [since, offset); `.record` that record's offset when
    a record-by-record re-run pinned it down, else None. `.name` and `.reference` name the two
    replicas, `.digest` and `.expected` are their digests at `.offset`; `.report` is the
    DeterminismReport when verify_determinism raised it."""

    def __init__(self, message: str, *, offset: int | None = None, since: int | None = None,
                 record: int | None = None, name: str | None = None,
                 reference: str | None = None, digest: bytes | None = None,
                 expected: bytes | None = None, report: Any = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.since = since
        self.record = record
        self.name = name
        self.reference = reference
        self.digest = digest
        self.expected = expected
        self.report = report
