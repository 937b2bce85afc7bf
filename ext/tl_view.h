/* Zero-copy views: one memoryview per record, cheaply.
 *
 * A memoryview made from a buffer exporter costs three allocations (the managed buffer, the
 * view, and the exporter's buffer request). A memoryview made from another memoryview shares
 * the base's managed buffer: one allocation, the same thing slicing does. tl_subview makes such
 * a view of the base (PyMemoryView_FromObject on a memoryview) and points its Py_buffer
 * (PyMemoryView_GET_BUFFER) at the record before anyone else can see it, as CPython's own
 * slicing does: a 1-D, read-only, C-contiguous range of unsigned bytes inside the base. The base
 * keeps the exporter (the mapping) alive for as long as any view of it lives.
 * p and n must lie inside the base's buffer; the caller guarantees it. */
#ifndef TL_VIEW_H
#define TL_VIEW_H
#include <Python.h>

static inline PyObject *tl_subview(PyObject *base, const char *p, Py_ssize_t n) {
#if defined(PYPY_VERSION)
    Py_ssize_t at = p - (const char *)PyMemoryView_GET_BUFFER(base)->buf;
    return PySequence_GetSlice(base, at, at + n);
#else
    PyObject *v = PyMemoryView_FromObject(base);
    Py_buffer *b;
    if (v == NULL)
        return NULL;
    b = PyMemoryView_GET_BUFFER(v);
    b->buf = (void *)p;
    b->len = n;
    b->shape[0] = n;
    return v;
#endif
}

#endif
