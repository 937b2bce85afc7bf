# Columns: the buffers of a RecordBatch, part by part, for tidelog.arrow (Arrow arrays are made
# there; the core never imports pyarrow). A frame part's buffers are memoryviews of its frame's
# columns in the mapping (zero-copy: each view keeps the mapping alive, as Record.value does); a
# run of single-form frames is not columnar (a frame header lies between two values), so its
# values and keys are gathered here into new arrays, one copy per run. The batch's frames were
# verified (rules 1-5) when it was read. Writes no LogCore field; never releases the GIL.
#
# A part's bytes are found through part_base() alone: a compressed frame's part points at its
# inflated copy (reader.pxi's part_at/part_mv), so its columns are views of that buffer.


cdef inline object part_view(RecordBatch b, _Part p, size_t at, size_t n):
    """A read-only memoryview of n bytes at position `at` of p's frame (keeps its owner alive)."""
    return tl_subview(part_mv(b._mv, p) if p.frame else b._mv, part_base(b, p) + at,
                      <Py_ssize_t>n)


cdef inline const char* part_base(RecordBatch b, _Part p) noexcept:
    """The start of p's frame in memory (a run part: the batch's base address; a compressed
    frame's part: its inflated copy, which the part keeps)."""
    return part_at(b._addr, p) if p.frame else b._addr


cdef dict frame_part_columns(RecordBatch b, _Part p):
    cdef const char* f = part_base(b, p)
    cdef const FrameLayout* L = &p.L
    cdef size_t n = L.count, vbytes = L.length - L.c_values, kb
    d = {"offset": b._first + p.start, "length": p.n, "start": p.a,
         "values": part_view(b, p, L.c_values, vbytes)}
    if L.c_ts:
        d["timestamps"] = np.frombuffer(part_view(b, p, L.c_ts + 8 * <size_t>p.a, 8 * <size_t>p.n),
                                        np.int64)
    else:
        d["timestamps"] = np.full(p.n, L.ts, np.int64)
    if L.attrs & ATTR_UNIFORM:
        d["value_size"] = L.usize
    else:
        d["value_offsets"] = part_view(b, p, L.c_voff, 4 * (n + 1))
    if L.attrs & ATTR_KEYS:
        if L.attrs & ATTR_MULTI:
            kb = rd_u32(f + L.c_koff + 4 * n)
            d["key_offsets"] = part_view(b, p, L.c_koff, 4 * (n + 1))
        else:
            kb = <size_t>L.klen1
            d["key_offsets"] = np.array([0, L.klen1], np.uint32)
        d["keys"] = part_view(b, p, L.c_keys, kb)
        if L.attrs & ATTR_KEY_NULLS:
            d["key_validity"] = part_view(b, p, L.c_kvalid, (n + 7) >> 3)
    if L.attrs & ATTR_HEADERS:
        d["header_index"] = part_view(b, p, L.c_hidx, 4 * (n + 1))
        d["header_name_offsets"] = part_view(b, p, L.c_hnoff, 4 * (<size_t>L.nheaders + 1))
        d["header_value_offsets"] = part_view(b, p, L.c_hvoff, 4 * (<size_t>L.nheaders + 1))
        d["header_names"] = part_view(b, p, L.c_hname,
                                      rd_u32(f + L.c_hnoff + 4 * <size_t>L.nheaders))
        d["header_values"] = part_view(b, p, L.c_hval,
                                       rd_u32(f + L.c_hvoff + 4 * <size_t>L.nheaders))
    return d


cdef dict run_part_columns(RecordBatch b, _Part p):
    """A run of single-form frames (no headers, vpad 0: the key lies just before the value):
    values and keys gathered into new arrays, with u32 offsets made for them."""
    cdef Py_ssize_t i, n = p.n
    cdef uint64_t vtotal = 0, ktotal = 0
    cdef int32_t kl
    cdef bint any_key = False, all_keys = True
    cdef const char* base = part_base(b, p)
    for i in range(n):
        vtotal += p.vlen[i]
        kl = p.klen[i]
        if kl >= 0:
            ktotal += <uint32_t>kl
            any_key = True
        else:
            all_keys = False
    if vtotal > 0xFFFFFFFF or ktotal > 0xFFFFFFFF:
        raise ValueError(f"a run of {n} records holds more than 4 GiB: read fewer at a time")
    values = np.empty(vtotal, np.uint8)
    voffs = np.empty(n + 1, np.uint32)
    cdef uint8_t[::1] vd = values
    cdef uint32_t[::1] vo = voffs
    cdef uint32_t at = 0
    vo[0] = 0
    for i in range(n):
        if p.vlen[i]:
            memcpy(&vd[at], base + p.vpos[i], p.vlen[i])
        at += p.vlen[i]
        vo[i + 1] = at
    d = {"offset": b._first + p.start, "length": n, "start": 0, "values": values,
         "value_offsets": voffs, "timestamps": p.ts_a}
    if not any_key:
        return d
    keys = np.empty(ktotal, np.uint8)
    koffs = np.empty(n + 1, np.uint32)
    cdef uint8_t[::1] kd = keys
    cdef uint32_t[::1] ko = koffs
    at = 0
    ko[0] = 0
    for i in range(n):
        kl = p.klen[i]
        if kl > 0:
            memcpy(&kd[at], base + p.vpos[i] - key_area(kl), <size_t>kl)
            at += <uint32_t>kl
        ko[i + 1] = at
    d["keys"] = keys
    d["key_offsets"] = koffs
    if not all_keys:
        d["key_validity"] = np.packbits(p.klen_a >= 0, bitorder="little")
    return d


cdef dict list_header_columns(dict d, list hs):
    """Header columns (as frame_part_columns gives them) made from lists of (str, bytes) per
    record: the headers of an unpickled batch, which has no frame columns to point into."""
    hidx = [0]
    noffs = [0]
    voffs = [0]
    names = []
    vals = []
    for h in hs:
        for name, val in (h or ()):
            bn = (<str>name).encode("utf-8", "replace")     # (a pickle's str: maybe not UTF-8)
            names.append(bn)
            vals.append(val)
            noffs.append(noffs[len(noffs) - 1] + len(bn))
            voffs.append(voffs[len(voffs) - 1] + len(val))
        hidx.append(len(names))
    if noffs[len(noffs) - 1] > 0xFFFFFFFF or voffs[len(voffs) - 1] > 0xFFFFFFFF:
        raise ValueError("headers of more than 4 GiB in one batch: read fewer at a time")
    d["header_index"] = np.array(hidx, np.uint32)
    d["header_name_offsets"] = np.array(noffs, np.uint32)
    d["header_value_offsets"] = np.array(voffs, np.uint32)
    d["header_names"] = np.frombuffer(b"".join(names), np.uint8)
    d["header_values"] = np.frombuffer(b"".join(vals), np.uint8)
    return d


def batch_columns(RecordBatch batch not None):
    """The buffers of `batch`, one dict per part (a frame's records, or a run of single appends),
    in order, for building Arrow arrays (tidelog.arrow). Keys:

    - ``offset``, ``length``: the part's first offset and record count;
    - ``start``: the index of its first record in the columns below (Arrow's array offset: they
      cover the whole frame);
    - ``timestamps``: int64 numpy array of ``length`` (a view of the frame's column when it has one);
    - ``values``: the value bytes; ``value_offsets`` (u32 x count+1, Arrow binary offsets) or,
      for a frame whose values have one size, ``value_size``;
    - ``keys``, ``key_offsets`` (u32) and ``key_validity`` (Arrow's bitmap) when some record has a
      key (no ``key_validity``: every record has one);
    - ``header_index``, ``header_name_offsets``, ``header_value_offsets``, ``header_names``,
      ``header_values`` (FORMAT.md C5..C9) when the frame has headers.

    Buffers of a frame are read-only memoryviews of the mapping (zero-copy; they keep it alive
    after the log is closed); those of a run of single-form frames are new numpy arrays."""
    cdef _Part p
    out = [frame_part_columns(batch, p) if p.frame else run_part_columns(batch, p)
           for p in batch._parts]
    if batch._hdrs is not None and any(batch._hdrs):
        # an unpickled batch (one run part): its headers are lists, not frame columns
        for p, d in zip(batch._parts, out):
            list_header_columns(d, batch._hdrs[p.start:p.start + p.n])
    return out
