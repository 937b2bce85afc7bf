"""The exception hierarchy: every tidelog error derives from TidelogError."""

__all__ = ["TidelogError", "LogLockedError", "OffsetOutOfRangeError", "CorruptLogError",
           "LogClosedError", "LogFailedError", "FormatVersionError", "LogFullError",
           "NotALogError"]


class TidelogError(Exception):
    """Base of every tidelog error."""


class LogLockedError(TidelogError):
    """Another writer (in this or another process) has the log open."""


class OffsetOutOfRangeError(TidelogError, IndexError):
    """An offset outside [start_offset, end_offset)."""


class CorruptLogError(TidelogError):
    """Damage on disk: `.path`, `.position` (byte) and `.offset` say where, when known."""

    def __init__(self, message, *, path=None, position=None, offset=None):
        super().__init__(message)
        self.path = path
        self.position = position
        self.offset = offset


class LogClosedError(TidelogError, ValueError):
    """An operation on a closed log."""


class LogFailedError(TidelogError):
    """A sync failed: the writer is stopped for good (fail-stop); reopen to recover."""


class FormatVersionError(TidelogError):
    """The log was written by a newer tidelog format version."""


class LogFullError(TidelogError, OSError):
    """No space left on the device (ENOSPC)."""


class NotALogError(TidelogError, NotADirectoryError):
    """The path is a file, or a directory that holds something other than a tidelog log."""
