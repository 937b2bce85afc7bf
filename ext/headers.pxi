# Record headers (FORMAT.md §2, columns C5..C9; issue 14): the checks of `headers=` arguments
# (pack_headers: one record's headers packed into a bytes object the appender's Item points
# to), the header columns of a frame (hdr_cols_bytes, put_headers, frame_write_hdr: the
# single form with headers) and their decoding for readers (frame_headers). Writes no LogCore
# field. put_headers / frame_write_hdr run without the GIL inside the appender's framing (they
# touch no Python object); the rest holds the GIL.
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_AsUTF8AndSize
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from collections.abc import Mapping as _Mapping

cdef enum:
    MAX_RECORD_HEADERS = 1 << 24     # headers of one record (a u32 column; a sane bound)


cdef str headers_arg(Py_ssize_t idx):
    """The argument's name in an error: `headers` (idx < 0: append) or `headers[idx]`
    (append_batch), made only when an error is raised (an f-string per record cost ~60 ns)."""
    return "headers" if idx < 0 else f"headers[{idx}]"


cdef object pack_headers(object h, Py_ssize_t idx, Item* it, const IntCol* cols=NULL,
                         Py_ssize_t m=0):
    """One record's headers - a mapping {str: bytes-like} or an iterable of (str, bytes-like)
    pairs (names may repeat; order kept) - checked and packed as: u32 name lengths[hn], u32
    value lengths[hn], the names (UTF-8), the values. Sets it.h/hn/hnb/hvb and returns the bytes
    object it.h points into (the caller keeps it alive); None for no headers (None or empty).
    idx: the record's index in an append_batch, -1 for append (for errors: headers_arg).
    cols[0..m): append_batch's int_headers (int_header_cols), whose row idx follows the
    record's own headers, each as a header of its column's name and the int in decimal ASCII."""
    cdef Py_ssize_t n, j
    cdef tuple pairs
    cdef str name
    it.h = NULL
    it.hn = 0
    it.hnb = 0
    it.hvb = 0
    if h is None:
        if m == 0:
            return None
        pairs = ()
    # pairs: a tuple, the caller's or a copy. A pair's __len__ (a list subclass), a mapping's
    # items or a collection's gc.callbacks hook runs Python code, which could shrink the
    # caller's list under the unchecked pairs[j] below - or a list copy of it, found with
    # gc.get_referrers / gc.get_objects; no Python code can change a tuple
    # the common forms first: the Mapping ABC check runs Python code (abc.__instancecheck__,
    # ~1 us: most of an append_batch of small records with headers when it came first)
    elif type(h) is tuple:
        pairs = <tuple>h
    elif type(h) is list:
        # an exact list of exact pairs packs from the list itself (pack_exact runs no Python
        # code, so nothing can change the list under it): the copy cost ~35 ns a record. The
        # int columns' headers count too (was: n alone, so a list of 2**24 pairs with an
        # int_headers column packed 2**24 + 1 headers, past the format's bound)
        n = PyList_GET_SIZE(h)
        if 0 < n and n + m <= MAX_RECORD_HEADERS:
            blob = pack_exact(h, n, idx, it, cols, m)
            if blob is not None:
                return blob
        pairs = tuple(h)
    elif type(h) is dict:
        pairs = tuple((<dict>h).items())
    elif isinstance(h, _Mapping):
        pairs = tuple(h.items())
    elif isinstance(h, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{headers_arg(idx)}: expected a dict {{str: bytes}} or a list of "
                        f"(str, bytes) pairs, not {type(h).__name__}")
    else:
        try:
            pairs = tuple(h)                  # (a list or tuple subclass too: see above)
        except TypeError:
            raise TypeError(f"{headers_arg(idx)}: expected a dict {{str: bytes}} or a list of "
                            f"(str, bytes) pairs, not {type(h).__name__}") from None
    n = len(pairs)
    if n + m == 0:
        return None
    if n + m > MAX_RECORD_HEADERS:
        raise ValueError(f"{headers_arg(idx)}: {n + m} headers; at most {MAX_RECORD_HEADERS} "
                         f"per record")
    blob = pack_exact(pairs, n, idx, it, cols, m)
    if blob is not None:
        return blob
    name = headers_arg(idx)
    names = []
    vals = []
    cdef size_t nb = 0, vb = 0
    cdef char* out
    cdef size_t q
    for j in range(n):
        pair = pairs[j]
        if type(pair) is not tuple and not isinstance(pair, (tuple, list)):
            raise TypeError(f"{name}[{j}]: expected a (str, bytes) pair, not "
                            f"{type(pair).__name__}")
        if len(pair) != 2:
            raise ValueError(f"{name}[{j}]: expected a (str, bytes) pair, not {len(pair)} items")
        hname, hval = pair
        if not isinstance(hname, str):
            raise TypeError(f"{name}[{j}]: header name: expected str, not {type(hname).__name__}")
        try:
            bname = (<str>hname).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name}[{j}]: header name {hname!r} is not valid UTF-8 "
                             f"(a lone surrogate)") from None
        if type(hval) is not bytes:
            if isinstance(hval, str) or not PyObject_CheckBuffer(hval) or holds_objects(hval):
                raise TypeError(f"{name}[{j}]: header {hname!r}: value: expected a bytes-like "
                                f"object, not {type(hval).__name__}")
            hval = memoryview(hval).tobytes()
        names.append(bname)
        vals.append(hval)
        nb += <size_t>PyBytes_GET_SIZE(bname)
        vb += <size_t>PyBytes_GET_SIZE(hval)
        if nb + vb + 8 * <size_t>j > <size_t>(0xFFFFFFFF - 4096):
            raise ValueError(f"{name}: headers larger than a record can be")
    for j in range(m):
        bname = PyBytes_FromStringAndSize(cols[j].name, <Py_ssize_t>cols[j].nlen)
        hval = b"%d" % cols[j].vals[idx]
        names.append(bname)
        vals.append(hval)
        nb += <size_t>PyBytes_GET_SIZE(bname)
        vb += <size_t>PyBytes_GET_SIZE(hval)
    n += m
    if nb + vb + 8 * <size_t>n > <size_t>(0xFFFFFFFF - 4096):
        raise ValueError(f"{name}: headers larger than a record can be")
    # the layout above, written in place (struct.pack and a join per record were most of
    # an append_batch of records with headers)
    blob = PyBytes_FromStringAndSize(NULL, 8 * n + <Py_ssize_t>(nb + vb))
    out = PyBytes_AS_STRING(blob)
    q = 8 * <size_t>n
    for j in range(n):
        bname = names[j]
        wr_u32(out + 4 * <size_t>j, <uint32_t>PyBytes_GET_SIZE(bname))
        memcpy(out + q, PyBytes_AS_STRING(bname), <size_t>PyBytes_GET_SIZE(bname))
        q += <size_t>PyBytes_GET_SIZE(bname)
    for j in range(n):
        hval = vals[j]
        wr_u32(out + 4 * (<size_t>n + j), <uint32_t>PyBytes_GET_SIZE(hval))
        memcpy(out + q, PyBytes_AS_STRING(hval), <size_t>PyBytes_GET_SIZE(hval))
        q += <size_t>PyBytes_GET_SIZE(hval)
    it.h = PyBytes_AS_STRING(blob)
    it.hn = <uint32_t>n
    it.hnb = nb
    it.hvb = vb
    return blob


cdef object pack_exact(object pairs, Py_ssize_t n, Py_ssize_t idx, Item* it,
                       const IntCol* cols, Py_ssize_t m):
    """pack_headers for the common form - every pair an exact tuple of an exact str and exact
    bytes - with no object per header: the sizes in one pass, the copies in a second. `pairs`
    (n of them) is an exact tuple or an exact list, the pairs are tuples, and their names and
    values are immutable; nothing here runs Python code (no GC-tracked allocation, so no
    gc.callbacks hook either), so nothing can change a list under the passes. None when a pair
    is of another form or a name is not valid UTF-8: the general path checks it and says why.
    The m int columns' headers (cols, row idx) follow the pairs."""
    cdef Py_ssize_t j, ln, t = n + m
    cdef size_t nb = 0, vb = 0, q, dl
    cdef object pair
    cdef const char* src
    cdef char* out
    cdef PyObject** items = PySequence_Fast_ITEMS(pairs)
    for j in range(n):
        pair = <object>items[j]
        if type(pair) is not tuple or PyTuple_GET_SIZE(pair) != 2:
            return None
        hname = <object>PyTuple_GET_ITEM(pair, 0)
        hval = <object>PyTuple_GET_ITEM(pair, 1)
        if type(hname) is not str or type(hval) is not bytes:
            return None
        try:
            PyUnicode_AsUTF8AndSize(hname, &ln)      # (kept in the str: the second pass's)
        except UnicodeEncodeError:
            return None
        nb += <size_t>ln
        vb += <size_t>PyBytes_GET_SIZE(hval)
        if nb + vb + 8 * <size_t>j > <size_t>(0xFFFFFFFF - 4096):
            raise ValueError(f"{headers_arg(idx)}: headers larger than a record can be")
    for j in range(m):
        nb += cols[j].nlen
        vb += dec_len(cols[j].vals[idx])
    if nb + vb + 8 * <size_t>t > <size_t>(0xFFFFFFFF - 4096):
        raise ValueError(f"{headers_arg(idx)}: headers larger than a record can be")
    blob = PyBytes_FromStringAndSize(NULL, 8 * t + <Py_ssize_t>(nb + vb))
    out = PyBytes_AS_STRING(blob)
    q = 8 * <size_t>t
    for j in range(n):
        pair = <object>items[j]
        src = PyUnicode_AsUTF8AndSize(<object>PyTuple_GET_ITEM(pair, 0), &ln)
        wr_u32(out + 4 * <size_t>j, <uint32_t>ln)
        memcpy(out + q, src, <size_t>ln)
        q += <size_t>ln
    for j in range(m):
        wr_u32(out + 4 * <size_t>(n + j), <uint32_t>cols[j].nlen)
        memcpy(out + q, cols[j].name, cols[j].nlen)
        q += cols[j].nlen
    for j in range(n):
        hval = <object>PyTuple_GET_ITEM(<object>items[j], 1)
        wr_u32(out + 4 * (<size_t>t + j), <uint32_t>PyBytes_GET_SIZE(hval))
        memcpy(out + q, PyBytes_AS_STRING(hval), <size_t>PyBytes_GET_SIZE(hval))
        q += <size_t>PyBytes_GET_SIZE(hval)
    for j in range(m):
        dl = dec_put(out + q, cols[j].vals[idx])
        wr_u32(out + 4 * (<size_t>t + n + j), <uint32_t>dl)
        q += dl
    it.h = PyBytes_AS_STRING(blob)
    it.hn = <uint32_t>t
    it.hnb = nb
    it.hvb = vb
    return blob


@cython.cdivision(True)
def header_marks(list raw not None, str name not None):
    """Many records' headers at a glance, for a bridge that reads them from a client library
    (`raw`: per record None or a list of (str, bytes-or-None) tuples, as confluent-kafka's
    Message.headers() gives them): a bitmask, 1 if some value is None, 2 if some header is
    named `name`; 3 when a record's headers are of another form (the caller looks closer).
    Runs no Python code: a bridge's per-batch check in C, where its passes in Python cost
    ~0.25 us a message."""
    cdef Py_ssize_t i, j
    cdef int marks = 0
    cdef object h, pair, hname
    for i in range(PyList_GET_SIZE(raw)):
        h = <object>PyList_GET_ITEM(raw, i)
        if h is None:
            continue
        if type(h) is not list:
            return 3
        for j in range(PyList_GET_SIZE(h)):
            pair = <object>PyList_GET_ITEM(h, j)
            if type(pair) is not tuple or PyTuple_GET_SIZE(pair) != 2:
                return 3
            hname = <object>PyTuple_GET_ITEM(pair, 0)
            if type(hname) is not str:
                return 3
            if <object>PyTuple_GET_ITEM(pair, 1) is None:
                marks |= 1
            if (<str>hname) == name:
                marks |= 2
    return marks


cdef inline size_t dec_len(int64_t v) noexcept nogil:
    """Characters of v in decimal ASCII (a '-' for a negative one)."""
    cdef uint64_t u = (<uint64_t>0 - <uint64_t>v) if v < 0 else <uint64_t>v
    cdef size_t n = 2 if v < 0 else 1
    while u >= 10:
        u = u / 10
        n += 1
    return n


@cython.cdivision(True)
cdef inline size_t dec_put(char* out, int64_t v) noexcept nogil:
    """v in decimal ASCII at out (dec_len(v) characters); returns that length."""
    cdef size_t n = dec_len(v), i = n
    cdef uint64_t u = (<uint64_t>0 - <uint64_t>v) if v < 0 else <uint64_t>v
    while True:
        i -= 1
        out[i] = <char>(48 + <int>(u % 10))
        u = u / 10
        if u == 0:
            break
    if v < 0:
        out[0] = 45        # '-'
    return n


cdef Py_ssize_t int_header_cols(object int_headers, Py_ssize_t n, list keep,
                                IntCol** out) except -1:
    """append_batch's `int_headers` - a mapping {str: a sequence of n ints} - checked; *out
    gets a calloc'd IntCol per column (the caller frees it), pointing into bytes and int64
    arrays put in `keep`. Returns the number of columns. Each adds to every record of the batch
    a header of the column's name whose value is the record's int in decimal ASCII, after the
    record's own headers, in the mapping's order (a source position per record, say, with no
    Python object per record: a (name, b"%d" % i) pair each cost ~0.35 us in Python)."""
    cdef Py_ssize_t m, c
    cdef const int64_t[::1] col
    if isinstance(int_headers, (str, bytes, bytearray, memoryview)) or \
            not isinstance(int_headers, _Mapping):
        raise TypeError(f"int_headers: expected a dict {{str: a sequence of ints}}, not "
                        f"{type(int_headers).__name__}")
    items = tuple(dict(int_headers).items())     # (a copy: no Python code changes it below)
    m = len(items)
    if m == 0:
        return 0
    if m > MAX_RECORD_HEADERS:
        raise ValueError(f"int_headers: {m} columns; at most {MAX_RECORD_HEADERS}")
    out[0] = <IntCol*>calloc(<size_t>m, sizeof(IntCol))
    if out[0] == NULL:
        raise MemoryError()
    for c in range(m):
        hname, ints = items[c]
        if not isinstance(hname, str):
            raise TypeError(f"int_headers: header name: expected str, not "
                            f"{type(hname).__name__}")
        try:
            bname = (<str>hname).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"int_headers: header name {hname!r} is not valid UTF-8 "
                             f"(a lone surrogate)") from None
        if isinstance(ints, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"int_headers[{hname!r}]: expected a sequence of ints, not "
                            f"{type(ints).__name__}")
        arr = int64_column(ints, n, f"int_headers[{hname!r}]", "ints", "ints")  # appender.pxi
        keep.append(bname)
        keep.append(arr)
        out[0][c].name = PyBytes_AS_STRING(bname)
        out[0][c].nlen = <size_t>PyBytes_GET_SIZE(bname)
        if n:
            col = arr
            out[0][c].vals = &col[0]
    return m


cdef inline size_t hdr_cols_bytes(size_t k, size_t hn, size_t hnb, size_t hvb) noexcept nogil:
    """Bytes of columns C5..C9 for k records with hn headers of hnb name and hvb value bytes."""
    return (align8(4 * (k + 1)) + 2 * align8(4 * (hn + 1)) + align8(hnb) + align8(hvb))


cdef size_t put_headers(char* f, size_t p, Item* it, Py_ssize_t k) noexcept nogil:
    """Columns C5..C9 of records it[0..k) at f + p (8-aligned), zero-padded; returns the
    position after them."""
    cdef Py_ssize_t i
    cdef uint32_t j, acc = 0, nacc = 0, vacc = 0, nl, vl
    cdef size_t hn = 0, nb = 0, vb = 0, c6, c7, c8, c9, end, q
    cdef const char* src
    cdef const char* nsrc
    cdef const char* vsrc
    for i in range(k):
        hn += it[i].hn
        nb += it[i].hnb
        vb += it[i].hvb
    wr_u32(f + p, 0)
    for i in range(k):
        acc += it[i].hn
        wr_u32(f + p + 4 * (i + 1), acc)
    q = p + 4 * (<size_t>k + 1)
    put_zero_to8(f, q)
    c6 = align8(q)
    c7 = c6 + align8(4 * (hn + 1))
    c8 = c7 + align8(4 * (hn + 1))
    c9 = c8 + align8(nb)
    end = c9 + align8(vb)
    put_zero_to8(f, c6 + 4 * (hn + 1))
    put_zero_to8(f, c7 + 4 * (hn + 1))
    put_zero_to8(f, c8 + nb)
    put_zero_to8(f, c9 + vb)
    wr_u32(f + c6, 0)
    wr_u32(f + c7, 0)
    acc = 0
    for i in range(k):
        src = it[i].h
        nsrc = src + 8 * <size_t>it[i].hn
        vsrc = nsrc + it[i].hnb
        for j in range(it[i].hn):
            nl = rd_u32(src + 4 * <size_t>j)
            vl = rd_u32(src + 4 * (<size_t>it[i].hn + j))
            memcpy(f + c8 + nacc, nsrc, nl)
            memcpy(f + c9 + vacc, vsrc, vl)
            nsrc += nl
            vsrc += vl
            nacc += nl
            vacc += vl
            acc += 1
            wr_u32(f + c6 + 4 * <size_t>acc, nacc)
            wr_u32(f + c7 + 4 * <size_t>acc, vacc)
    return end


cdef uint32_t frame_write_hdr(char* f, int64_t offset, Item* it, uint16_t more,
                              bint publish) noexcept nogil:
    """frame_write for a record with headers: a single-form frame with HEADERS (header, C5..C9,
    key area, value). Returns its length."""
    cdef size_t p
    cdef uint32_t length
    wr_i64(f + 8, offset)
    wr_i64(f + 16, it.ts)
    wr_i32(f + 24, it.klen)
    wr_u32(f + 28, <uint32_t>(single_attrs(it.klen) | ATTR_HEADERS | more))   # vpad 0
    p = put_headers(f, FRAME_HEADER_SIZE, it, 1)
    if it.klen >= 0:
        if it.klen > 0:
            memcpy(f + p, it.k, <size_t>it.klen)
        put_zero_to8(f, p + <size_t>it.klen)
        p += key_area(it.klen)
    if it.vlen:
        memcpy(f + p, it.v, it.vlen)
    length = <uint32_t>(p + it.vlen)
    put_zero_to8(f, length)
    wr_u32(f + 4, frame_crc(f, length))
    if publish:
        tl_store_u32_release(f, length)
    else:
        wr_u32(f, 0)
    return length


cdef object frame_headers(const char* f, const FrameLayout* L, uint32_t i):
    """The headers of record i of a verified frame: a list of (str, bytes), in order (empty
    without HEADERS). Names the writer checked are UTF-8; a forged frame's invalid bytes decode
    with U+FFFD (the frame passed its CRC: what it holds is handed out, never a crash)."""
    cdef uint32_t a, b, h, n0, n1, v0, v1
    out = []
    if not (L.attrs & ATTR_HEADERS):
        return out
    a = rd_u32(f + L.c_hidx + 4 * <size_t>i)
    b = rd_u32(f + L.c_hidx + 4 * <size_t>i + 4)
    for h in range(a, b):
        n0 = rd_u32(f + L.c_hnoff + 4 * <size_t>h)
        n1 = rd_u32(f + L.c_hnoff + 4 * <size_t>h + 4)
        v0 = rd_u32(f + L.c_hvoff + 4 * <size_t>h)
        v1 = rd_u32(f + L.c_hvoff + 4 * <size_t>h + 4)
        out.append((PyUnicode_DecodeUTF8(f + L.c_hname + n0, n1 - n0, "replace"),
                    PyBytes_FromStringAndSize(f + L.c_hval + v0, v1 - v0)))
    return out
