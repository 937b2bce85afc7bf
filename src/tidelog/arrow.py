"""The log as Arrow: `read_arrow` (a cursor's next records as a pyarrow.Table) and `scan_arrow` (a
pyarrow.RecordBatchReader over a range of offsets), for pandas, Polars, DuckDB and Parquet.

Owns no state: every table is made from the core's batch buffers (`_core.batch_columns`), one
Arrow chunk per frame of the log (a run of single appends makes one chunk). The key and value
buffers of a frame written by `append_batch` are the mapping itself (zero-copy); the Arrow
buffers hold memoryviews that keep the mapping alive, so a table outlives `Log.close()` and the
retention of its segment. Single appends are not columnar on disk (a frame header lies between
two values): their values and keys are copied, once per run. pyarrow is imported on first use
(the `tidelog[arrow]` extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from tidelog import _args, _core
from tidelog.errors import CorruptLogError

if TYPE_CHECKING:
    from tidelog.cursor import Cursor

__all__ = ["require", "read_arrow", "scan_arrow", "schema", "batch_table", "value_arrow_type"]

READ_BYTES = 1 << 30      # value bytes per read_batch: a gathered run stays below Arrow's 2 GiB
BATCH_RECORDS = 65536     # scan_arrow's records per read by default
INT32_MAX = 2**31 - 1     # Arrow binary offsets are int32


def require(module: str, extra: str) -> Any:
    """Import `module`, or ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed: pip install 'tidelog[{extra}]'") from exc


def _pa() -> Any:
    return require("pyarrow", "arrow")


def value_arrow_type(value_type: object) -> tuple[Any, int, Optional[np.dtype[Any]]]:
    """(Arrow type, value size in bytes, numpy structured dtype or None) for `value_type`: an
    Arrow fixed-width type (numbers, dates and times, fixed_size_binary, fixed_size_list of
    those) or a numpy dtype (anything numpy.dtype() takes, structured ones included)."""
    pa = _pa()
    if isinstance(value_type, pa.DataType):
        if pa.types.is_fixed_size_list(value_type) and value_type.list_size == 0:
            # (pyarrow divides by the list size: a table of these ends the interpreter, SIGFPE)
            raise ValueError(f"value_type: {value_type} has lists of length 0")
        size = _fixed_size(pa, value_type)
        if size is None:
            raise ValueError(f"value_type: {value_type} is not a fixed-width Arrow type "
                             f"(numbers, timestamps, fixed_size_binary, fixed_size_list)")
        return value_type, size, None
    try:
        dt = np.dtype(value_type)      # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(f"value_type: expected an Arrow type or a numpy dtype, not "
                        f"{value_type!r}") from exc
    if dt.itemsize == 0:
        raise ValueError(f"value_type: zero-sized dtype {dt}")
    if dt.names is not None:
        fields = []
        for name in dt.names:
            sub = dt.fields[name][0]
            fields.append(pa.field(name, _numpy_field_type(pa, sub, f"value_type field {name!r}")))
        return pa.struct(fields), dt.itemsize, dt
    return _numpy_field_type(pa, dt, "value_type"), dt.itemsize, None


def _numpy_field_type(pa: Any, dt: np.dtype[Any], what: str) -> Any:
    if dt.names is not None:
        raise ValueError(f"{what}: nested structured dtypes are not supported ({dt})")
    if dt.byteorder == ">" or (dt.subdtype is None and dt.byteorder not in "=|<"):
        raise ValueError(f"{what}: {dt} is big-endian; values are read as stored (use '<')")
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        n = int(np.prod(shape))
        if n == 0:          # a fixed_size_list of 0: pyarrow divides by it (SIGFPE)
            raise ValueError(f"{what}: {dt} has a sub-array of 0 items")
        return pa.list_(_numpy_field_type(pa, base, what), n)
    if dt.kind == "V" or dt.kind == "S":
        return pa.binary(dt.itemsize)
    if dt.kind == "b":
        raise ValueError(f"{what}: numpy bool is one byte, Arrow's is one bit: use uint8")
    try:
        t = pa.from_numpy_dtype(dt)
    except (pa.ArrowNotImplementedError, NotImplementedError, TypeError) as exc:
        raise ValueError(f"{what}: {dt} has no fixed-width Arrow type") from exc
    if _fixed_size(pa, t) != dt.itemsize:
        raise ValueError(f"{what}: {dt} has no fixed-width Arrow type")
    return t


def _fixed_size(pa: Any, t: Any) -> Optional[int]:
    """Bytes per value of a fixed-width Arrow type, None for any other."""
    if pa.types.is_fixed_size_binary(t):
        return int(t.byte_width)
    if pa.types.is_fixed_size_list(t):
        inner = _fixed_size(pa, t.value_type)
        return None if inner is None or pa.types.is_fixed_size_list(t.value_type) \
            else inner * t.list_size
    if pa.types.is_boolean(t) or pa.types.is_null(t) or pa.types.is_dictionary(t):
        return None
    try:
        width = t.bit_width
    except ValueError:
        return None
    if width % 8 or not (pa.types.is_integer(t) or pa.types.is_floating(t) or
                         pa.types.is_temporal(t) or pa.types.is_decimal(t)):
        return None
    return int(width // 8)


def schema(value_type: object = None, headers: bool = False) -> Any:
    """The schema of tables and batches read from a log."""
    pa = _pa()
    vt = pa.binary() if value_type is None else value_arrow_type(value_type)[0]
    fields = [pa.field("offset", pa.int64(), nullable=False),
              pa.field("timestamp", pa.timestamp("ns", "UTC"), nullable=False),
              pa.field("key", pa.binary()),
              pa.field("value", vt, nullable=False)]
    if headers:
        fields.append(pa.field("headers", _headers_type(pa), nullable=False))
    return pa.schema(fields)


def _headers_type(pa: Any) -> Any:
    return pa.list_(pa.struct([pa.field("name", pa.string(), nullable=False),
                               pa.field("value", pa.binary(), nullable=False)]))


def _buf(pa: Any, obj: Any) -> Any:
    return pa.py_buffer(obj)


def _binary(pa: Any, n: int, start: int, offsets: Any, data: Any, validity: Any = None) -> Any:
    """A binary array over u32 offsets (from `start`) and data, zero-copy."""
    offs = np.frombuffer(offsets, np.uint32)
    if int(offs[start + n]) > INT32_MAX:
        raise ValueError("a frame holds more than 2 GiB of values: too large for Arrow binary")
    return pa.Array.from_buffers(pa.binary(), n, [None if validity is None else _buf(pa, validity),
                                                  _buf(pa, offsets), _buf(pa, data)],
                                 null_count=-1, offset=start)


def _value_array(pa: Any, part: dict[str, Any], typed: Optional[tuple[Any, int, Any]]) -> Any:
    n, start = part["length"], part["start"]
    if typed is None:
        if "value_offsets" in part:
            return _binary(pa, n, start, part["value_offsets"], part["values"])
        size = part["value_size"]
        if (start + n) * size > INT32_MAX:
            raise ValueError("a frame holds more than 2 GiB of values: too large for Arrow binary")
        made = np.arange(start, start + n + 1, dtype=np.int32) * np.int32(size)
        return pa.Array.from_buffers(pa.binary(), n, [None, _buf(pa, made),
                                                      _buf(pa, part["values"])])
    atype, size, struct_dt = typed
    if "value_offsets" in part:
        offs = np.frombuffer(part["value_offsets"], np.uint32)[start:start + n + 1]
        sizes = np.diff(offs)
        if n and (sizes.min() != size or sizes.max() != size):
            raise ValueError(f"value_type: every value must be {size} bytes for {atype}; "
                             f"sizes range {sizes.min()}..{sizes.max()} "
                             f"(offsets {part['offset']}..{part['offset'] + n - 1})")
        first = int(offs[0]) if n else 0
    else:
        if part["value_size"] != size:
            raise ValueError(f"value_type: every value must be {size} bytes for {atype}; "
                             f"they are {part['value_size']} bytes "
                             f"(offsets {part['offset']}..{part['offset'] + n - 1})")
        first = start * size
    region = memoryview(part["values"]).cast("B")[first:first + n * size]
    if struct_dt is not None:       # Arrow keeps struct fields column by column: one copy each
        rows = np.frombuffer(region, struct_dt, count=n)
        return pa.StructArray.from_arrays(
            [_typed(pa, atype.field(i).type, np.ascontiguousarray(rows[name]), n)
             for i, name in enumerate(struct_dt.names)], fields=list(atype))
    return _typed(pa, atype, region, n)


def _typed(pa: Any, atype: Any, data: Any, n: int) -> Any:
    """An array of n fixed-width values of `atype` over `data`, zero-copy."""
    if pa.types.is_fixed_size_list(atype):
        inner = _typed(pa, atype.value_type, data, n * atype.list_size)
        return pa.FixedSizeListArray.from_arrays(inner, type=atype)
    return pa.Array.from_buffers(atype, n, [None, _buf(pa, data)])


def _key_array(pa: Any, part: dict[str, Any]) -> Any:
    n, start = part["length"], part["start"]
    if "keys" not in part:
        return pa.nulls(n, pa.binary())
    return _binary(pa, n, start, part["key_offsets"], part["keys"], part.get("key_validity"))


def _header_array(pa: Any, part: dict[str, Any]) -> Any:
    n, start = part["length"], part["start"]
    if "header_index" not in part:
        return pa.array([[]] * n, _headers_type(pa))
    hidx = np.frombuffer(part["header_index"], np.uint32)
    h = int(hidx[-1])                  # H: the header entries of the whole frame
    names = pa.Array.from_buffers(pa.string(), h, [None, _buf(pa, part["header_name_offsets"]),
                                                  _buf(pa, part["header_names"])])
    try:
        names.validate(full=True)       # UTF-8, as FORMAT.md says (the CRC does not tell)
    except pa.ArrowInvalid as exc:
        raise CorruptLogError(f"header names of offsets {part['offset']}.. are not UTF-8: "
                              f"{exc}") from None
    values = pa.Array.from_buffers(pa.binary(), h, [None, _buf(pa, part["header_value_offsets"]),
                                                   _buf(pa, part["header_values"])])
    pairs = pa.StructArray.from_arrays([names, values], fields=list(_headers_type(pa).value_type))
    whole = pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), len(hidx),
                                                           [None, _buf(pa, part["header_index"])]),
                                     pairs, type=_headers_type(pa))
    return whole.slice(start, n)


def part_batch(pa: Any, part: dict[str, Any], sch: Any,
               typed: Optional[tuple[Any, int, Any]]) -> Any:
    """One pyarrow.RecordBatch of a part (see _core.batch_columns)."""
    n = part["length"]
    cols = [pa.array(np.arange(part["offset"], part["offset"] + n, dtype=np.int64)),
            pa.Array.from_buffers(pa.timestamp("ns", "UTC"), n,
                                  [None, _buf(pa, part["timestamps"])]),
            _key_array(pa, part),
            _value_array(pa, part, typed)]
    if len(sch) > 4:
        cols.append(_header_array(pa, part))
    return pa.RecordBatch.from_arrays(cols, schema=sch)


def batch_table(batch: Any, value_type: object = None, headers: Optional[bool] = None) -> Any:
    """A tidelog RecordBatch as a pyarrow.Table, one chunk per frame (a run of single appends:
    one chunk). `headers` None: a headers column when some record has headers."""
    return _tables([batch], value_type, headers)


def _tables(batches: list[Any], value_type: object, headers: Optional[bool]) -> Any:
    pa = _pa()
    typed = None if value_type is None else value_arrow_type(value_type)
    parts = [p for b in batches for p in _core.batch_columns(b)]
    if headers is None:
        headers = any("header_index" in p for p in parts)
    sch = schema(value_type, headers)
    return pa.Table.from_batches([part_batch(pa, p, sch, typed) for p in parts], schema=sch)


def read_arrow(cursor: Cursor, max_records: Optional[int] = None, value_type: object = None,
               headers: Optional[bool] = None) -> Any:
    """The body of Cursor.read_arrow: read batches until `max_records` (None: the end as of the
    call) or the end, and make one table of them."""
    if value_type is not None:
        value_arrow_type(value_type)        # a bad value_type fails before anything is read
    else:
        _pa()
    if max_records is None:
        left = max(0, cursor.log.end_offset - cursor.position)
    else:
        left = _args.count(max_records, "max_records")
    batches: list[Any] = []
    while left > 0:
        try:
            b = cursor.read_batch(min(left, BATCH_RECORDS * 16), READ_BYTES)
        except CorruptLogError:
            if not batches:
                raise
            break               # as read_batch: what is good first, the next read raises
        if not len(b):
            break
        batches.append(b)
        left -= len(b)
    return _tables(batches, value_type, headers)


def scan_arrow(cursor: Cursor, stop: Optional[int] = None, batch_records: int = BATCH_RECORDS,
               value_type: object = None, headers: bool = False, close: bool = False) -> Any:
    """The body of Cursor.scan_arrow and Log.scan_arrow: a RecordBatchReader from the cursor's
    position to `stop` (None: the end, or the durable end for a durable-only cursor, as of the
    call); `close`: close the cursor when the reader is done (Log.scan_arrow's own cursor)."""
    pa = _pa()
    batch_records = _args.count(batch_records, "batch_records")
    typed = None if value_type is None else value_arrow_type(value_type)
    if not isinstance(headers, bool):
        raise TypeError(f"headers: expected a bool, not {type(headers).__name__}")
    sch = schema(value_type, headers)
    log = cursor.log
    if stop is None:
        stop = log.durable_offset if cursor.durable_only else log.end_offset
    else:
        if isinstance(stop, str):
            raise TypeError("stop: expected an int offset or None, not str")
        stop = _args.offset(stop, "stop")
    return pa.RecordBatchReader.from_batches(
        sch, _scan(pa, cursor, stop, batch_records, sch, typed, close))


def _scan(pa: Any, cur: Cursor, stop: int, batch_records: int, sch: Any,
          typed: Optional[tuple[Any, int, Any]], close: bool) -> Iterator[Any]:
    try:
        while cur.position < stop:
            b = cur.read_batch(min(batch_records, stop - cur.position), READ_BYTES)
            if not len(b):
                return
            for part in _core.batch_columns(b):
                yield part_batch(pa, part, sch, typed)
    finally:
        if close:
            cur.close()
