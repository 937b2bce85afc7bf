"""tidelog: an embedded, append-only, memory-mapped log with zero-copy reads."""

from tidelog.errors import (TidelogError, LogLockedError, OffsetOutOfRangeError, CorruptLogError,
                            LogClosedError, LogFailedError, FormatVersionError, LogFullError,
                            NotALogError, ReplicaDivergedError, LogForkedError,
                            LogNotFoundError, MissingCodecError)
from tidelog.log import Log, open
from tidelog.cursor import Cursor, Record, RecordBatch
from tidelog.replay import Replayer, LmdbView, DeterminismReport, verify_determinism
from tidelog.tools import verify, repair, salvage

__version__: str = "0.1.0"

__all__ = ["open", "Log", "Cursor", "Record", "RecordBatch", "TidelogError", "LogLockedError",
           "OffsetOutOfRangeError", "CorruptLogError", "LogClosedError", "LogFailedError",
           "FormatVersionError", "LogFullError", "NotALogError", "LogNotFoundError",
           "ReplicaDivergedError", "LogForkedError", "MissingCodecError", "Replayer", "LmdbView", "DeterminismReport",
           "verify_determinism", "verify", "repair", "salvage", "__version__"]
