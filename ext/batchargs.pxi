# append's and append_batch's Python arguments as C: a value's or key's buffer (get_buffer:
# contiguous, or a bytes copy; never an array of Python objects - holds_objects), a timestamp
# (to_timestamp), a column of int64 (int64_list / int64_column: timestamps=, int_headers=) and
# value_offsets= (packed_offsets). Pure functions of their arguments: own no state, write no
# LogCore field, never release the GIL. The appender (appender.pxi) calls them.

cdef Py_buffer* grow_bufs(Py_buffer* p, Py_ssize_t* cap) except NULL:
    """Room for more held buffers (only non-bytes elements of a batch need one)."""
    cdef Py_ssize_t n = max(16, cap[0] * 2)
    cdef Py_buffer* q = <Py_buffer*>realloc(p, n * sizeof(Py_buffer))
    if q == NULL:
        raise MemoryError()
    cap[0] = n
    return q


cdef type NDARRAY = np.ndarray     # (holds_objects: a type check, no isinstance call)


cdef bint holds_objects(object obj) except -1:
    """obj is a numpy array holding Python objects (a field of them too), or a memoryview of
    one: its buffer is the objects' addresses, not bytes of theirs (was: written to the log as
    a value's, key's or header's bytes; append_batch's array path refused one already)."""
    cdef PyObject* base
    if PyMemoryView_Check(obj):
        # its exporter (a view of a view names the exporter too), read from the C struct: the
        # attribute lookup (.obj) cost ~100 instructions per memoryview value
        base = <PyObject*>PyMemoryView_GET_BUFFER(obj).obj
        if base == NULL:
            return False
        obj = <object>base
    if type(obj) is bytearray or type(obj) is bytes:
        return False                # (the usual exporters: no walk of their types' MRO)
    return PyObject_TypeCheck(obj, <PyTypeObject*>NDARRAY) and obj.dtype.hasobject


cdef object get_buffer(object obj, Py_buffer* view, str name):
    """Fill view with obj's contiguous buffer and return None; or return a bytes copy of a
    non-contiguous buffer; TypeError naming the argument for anything else."""
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"{name}: expected a bytes-like object (bytes, bytearray, memoryview, "
                        f"numpy array), not {type(obj).__name__}")
    if holds_objects(obj):
        raise TypeError(f"{name}: an array of Python objects is not bytes-like")
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
        return None
    except (BufferError, ValueError):     # not contiguous (memoryview / numpy say it differently)
        return memoryview(obj).tobytes()


cdef int64_t to_timestamp(object t, str name) except? -1:
    if not PyLong_CheckExact(t):
        try:
            t = _args.integer(t, name)      # numpy integers; never a bool
        except TypeError:
            raise TypeError(f"{name}: expected an int (ns since the epoch), not "
                            f"{type(t).__name__}") from None
    try:
        return t
    except OverflowError:
        raise ValueError(f"{name}: {t} is outside the int64 range") from None


cdef object int64_list(object seq, Py_ssize_t n):
    """An exact list or tuple of n exact ints, each in the int64 range, as an int64 array; else
    None (the caller converts it with numpy, and words any error). numpy's conversion of a list
    cost ~450 instructions per int; this loop ~15. The array is made before the length is
    checked: making it (and the memoryview on it) may run a collection, whose gc.callbacks hook
    can empty the list (was: seq[i] past its end, unchecked: segfault); from the check on no
    Python code runs and nothing is allocated, so nothing can change the list under the loop."""
    cdef Py_ssize_t i
    cdef int overflow = 0
    cdef long long v
    cdef int64_t[::1] out
    if type(seq) is not list and type(seq) is not tuple:
        return None
    arr = np.empty(n, dtype=np.int64)
    out = arr
    if len(seq) != n:
        return None
    for i in range(n):
        item = seq[i]
        if not PyLong_CheckExact(item):
            return None
        v = PyLong_AsLongLongAndOverflow(item, &overflow)
        if overflow:
            return None
        out[i] = v
    return arr


cdef object int64_column(object seq, Py_ssize_t n, str arg, str noun, str what):
    """`seq` (append_batch's timestamps=, a column of int_headers=) as a contiguous int64 array
    of n: int64_list's, or numpy's conversion, checked; errors name `arg` ("timestamps: 3
    timestamps for 4 values" - `noun` - "expected a sequence of ints" - `what`)."""
    arr = int64_list(seq, n)
    if arr is not None:
        return arr
    arr = np.asarray(seq)
    if arr.ndim != 1 or (arr.dtype.kind not in "iu" and arr.size):
        # ints of which one is beyond int64 convert to objects or to floats: name it (was:
        # "expected a sequence of ints", of a list of ints; only on this failure path)
        if arr.ndim == 1:
            for i, x in enumerate(arr if arr.dtype.hasobject else seq):
                if type(x) is int and not -0x8000000000000000 <= x <= 0x7FFFFFFFFFFFFFFF:
                    raise ValueError(f"{arg}[{i}]: {x} is beyond the int64 range")
        raise TypeError(f"{arg}: expected a sequence of {what}")
    if len(arr) != n:
        raise ValueError(f"{arg}: {len(arr)} {noun} for {n} values")
    if arr.dtype.kind == "u" and n and arr.max() > 0x7FFFFFFFFFFFFFFF:
        raise ValueError(f"{arg}: beyond the int64 range")
    return np.ascontiguousarray(arr, dtype=np.int64)


cdef object packed_offsets(object value_offsets):
    """append_batch's value_offsets as a contiguous int64 array of n + 1 >= 1 (checked against
    the buffer by the caller); TypeError / ValueError naming the argument. Bytes (bytes,
    bytearray, a memoryview of bytes) are refused: read as one offset per byte they would name
    other records without an error (e.g. int64 offsets packed in a bytearray)."""
    if isinstance(value_offsets, (bytes, bytearray)) or (
            isinstance(value_offsets, memoryview) and value_offsets.format in ("B", "b", "c")):
        raise TypeError(f"value_offsets: {type(value_offsets).__name__} (bytes, one offset per "
                        f"byte?): pass ints, or an int64 array (numpy.frombuffer(b, "
                        f"numpy.int64) for int64 offsets in bytes)")
    arr = int64_list(value_offsets, len(value_offsets)) if type(value_offsets) in (list, tuple) \
        else None
    if arr is None:
        try:
            arr = np.asarray(value_offsets)
        except (TypeError, ValueError):
            raise TypeError(f"value_offsets: expected a sequence of ints, not "
                            f"{type(value_offsets).__name__}") from None
        if arr.ndim != 1 or (arr.dtype.kind not in "iu" and arr.size):
            raise TypeError("value_offsets: expected a sequence of ints (int64)")
        if arr.dtype.kind == "u" and arr.size and arr.max() > 0x7FFFFFFFFFFFFFFF:
            raise ValueError("value_offsets: beyond the int64 range")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
    if len(arr) < 1:
        raise ValueError("value_offsets: at least one offset (n values take n + 1)")
    return arr
