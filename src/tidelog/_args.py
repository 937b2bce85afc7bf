"""Argument checks shared by the whole public API (Log, Cursor, positions, Replayer, and the
core's read / read_batch / truncate_before / timestamps): one function per kind of argument.

Each returns the value in canonical form (a Python int or float) or raises TypeError (wrong
kind) / ValueError (right kind, bad value) with a message that names the argument. Integers are
accepted through operator.index, so numpy integers work wherever an int does; bool is refused
everywhere (True is not offset 1). Every number is bounded so that what follows (int64 fields,
struct packing, nanosecond arithmetic, thread timeouts) cannot overflow.

Pure Python, no state, no imports from the rest of tidelog: the core imports it too.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Literal, SupportsIndex, cast, overload

__all__ = ["INT64_MAX", "INT64_MIN", "MAX_SECONDS", "integer", "offset", "count", "timeout",
           "seconds"]

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
# the longest duration accepted (about 146 years): its nanoseconds, added to a monotonic or
# wall-clock time in ns (< 2**61 until the year 2043), still fit in an int64, and it is below
# threading.TIMEOUT_MAX
MAX_SECONDS = float(1 << 62) / 1e9


def _is_bool(value: object) -> bool:
    """bool, or numpy's bool scalar (which numpy < 2 lets through operator.index, with a
    DeprecationWarning)."""
    return isinstance(value, bool) or (type(value).__name__ in ("bool_", "bool")
                                       and type(value).__module__ == "numpy")


def integer(value: object, name: str) -> int:
    """Any integer (int, numpy integer, anything with __index__) except bool, as an int."""
    if type(value) is int:
        return value
    if _is_bool(value):
        raise TypeError(f"{name}: expected an int, not bool")
    try:
        return operator.index(cast(SupportsIndex, value))
    except TypeError:
        raise TypeError(f"{name}: expected an int, not {type(value).__name__}") from None


def offset(value: object, name: str = "offset") -> int:
    """An offset (or a timestamp in ns): an integer in the int64 range."""
    value = integer(value, name)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name}: {value} is outside the int64 range")
    return value


def count(value: object, name: str, minimum: int = 1, maximum: int = INT64_MAX) -> int:
    """A count (records, bytes, ...): an integer in [minimum, maximum]."""
    value = integer(value, name)
    if value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, not {value}")
    if value > maximum:
        raise ValueError(f"{name}: must be at most {maximum}, not {value}")
    return value


def _number(value: object, name: str, what: str) -> float:
    if _is_bool(value):
        raise TypeError(f"{name}: expected {what}, not bool")
    if not isinstance(value, numbers.Real):      # int, float, numpy numbers, Fraction
        try:
            value = operator.index(cast(SupportsIndex, value))
        except TypeError:
            raise TypeError(f"{name}: expected {what}, not {type(value).__name__}") from None
    try:
        f = float(value)
    except OverflowError:
        raise ValueError(f"{name}: {value} seconds is too large (at most {MAX_SECONDS:.0f})") \
            from None
    if math.isnan(f):
        raise ValueError(f"{name}: must be a number of seconds, not nan")
    return f


@overload
def seconds(value: None, name: str, *, allow_none: Literal[True],
            allow_zero: bool = False) -> None: ...
@overload
def seconds(value: object, name: str, *, allow_none: Literal[True],
            allow_zero: bool = False) -> float | None: ...
@overload
def seconds(value: object, name: str, *, allow_none: Literal[False] = False,
            allow_zero: bool = False) -> float: ...
def seconds(value: object, name: str, *, allow_none: bool = False,
            allow_zero: bool = False) -> float | None:
    """A duration in seconds (int or float; numpy numbers too): positive (or >= 0 with
    allow_zero), finite and at most MAX_SECONDS. None passes through when allow_none."""
    if value is None and allow_none:
        return None
    what = "a number of seconds" + (" or None" if allow_none else "")
    f = _number(value, name, what)
    if f < 0 or (f == 0 and not allow_zero):
        raise ValueError(f"{name}: must be {'non-negative' if allow_zero else 'positive'}, "
                         f"not {value!r}")
    if f > MAX_SECONDS:
        raise ValueError(f"{name}: {value!r} seconds is too large (at most {MAX_SECONDS:.0f})")
    return f


def timeout(value: object, name: str = "timeout") -> float | None:
    """A timeout: None (no limit) or a non-negative, finite number of seconds."""
    return seconds(value, name, allow_none=True, allow_zero=True)
