# cython: language_level=3, embedsignature=True, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, freethreading_compatible=False
# (freethreading_compatible=False: a free-threaded interpreter turns the GIL back on when it
# imports this module; the core relies on the GIL and is not proven safe without it)
"""tidelog's core: segments, frames, indexes, the writer and the readers.

No Python-API decisions here (argument names, defaults and docs live in src/tidelog/);
this module does the per-record work and the system calls. The format is docs/FORMAT.md.
"""
cimport cython
from libc.stdint cimport int64_t, int32_t, uint32_t, uint64_t, uint8_t
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, free, calloc, realloc
from libc.errno cimport errno
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBuffer_FillInfo,
                             PyBUF_SIMPLE, PyBUF_FULL_RO, PyBuffer_ToContiguous, PyObject_CheckBuffer)
from cpython.bytes cimport PyBytes_Check, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.memoryview cimport (PyMemoryView_FromObject, PyMemoryView_Check,
                                 PyMemoryView_GET_BUFFER)
from cpython.object cimport PyObject_TypeCheck, PyTypeObject
from cpython.long cimport PyLong_Check, PyLong_CheckExact, PyLong_AsLongLongAndOverflow
from cpython.ref cimport PyObject
from cpython.exc cimport PyErr_CheckSignals
from posix.unistd cimport getpid

cdef extern from "Python.h":
    # the same macros on borrowed references, for loops over a list's items without refcounting
    PyObject** PySequence_Fast_ITEMS(object seq)
    bint PyBytes_CheckExact_p "PyBytes_CheckExact"(PyObject* o)
    char* PyBytes_AS_STRING_p "PyBytes_AS_STRING"(PyObject* o)
    Py_ssize_t PyBytes_GET_SIZE_p "PyBytes_GET_SIZE"(PyObject* o)
    Py_buffer* PyMemoryView_GET_BUFFER(object mv)
    # (GCC / clang, the compilers tidelog builds with): a hint to start loading p's cache line
    void tl_prefetch "__builtin_prefetch"(const void* p) nogil

from includes.sys cimport *

import os
import re
import errno as _errno
import threading
import warnings
import numpy as np

from tidelog.errors import (TidelogError, LogLockedError, OffsetOutOfRangeError, CorruptLogError,
                            LogClosedError, LogFailedError, FormatVersionError, LogFullError,
                            NotALogError, LogForkedError, LogNotFoundError)
from tidelog import _args       # the shared argument checks (numpy integers, bool refused, bounds)

include "frame.pxi"
include "segment.pxi"
include "control.pxi"
include "logcore.pxi"
include "segset.pxi"
include "recovery.pxi"
include "batchargs.pxi"
include "appender.pxi"
include "headers.pxi"
include "compression.pxi"
include "durability.pxi"
include "retention.pxi"
include "lookup.pxi"
include "reader.pxi"
include "cursor.pxi"
include "columns.pxi"
include "prealloc.pxi"


tl_flusher_init_fork_handler()
tl_crc32c_hw()      # choose the CRC32C implementation (and build its tables) once, at import


def _set_native_pause_ns(int64_t flusher, int64_t pretoucher):
    """Tests only: make the native flusher / pretoucher threads pause this many ns between their
    stop check and their futex word (the window where a stop was once lost). 0 turns it off."""
    tl_native_pause_ns[0] = flusher
    tl_native_pause_ns[1] = pretoucher


def crc32c(data, uint32_t crc=0):
    """CRC32C of a bytes-like object, continuing from `crc` (hardware where available)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            crc = tl_crc32c(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return crc


def frame_crc32c(uint32_t length, data):
    """The CRC a frame of `length` bytes carries, over `data` (its bytes from 8 on)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        crc = tl_crc32c_frame(length, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return crc


def crc32c_portable(data, uint32_t crc=0):
    """CRC32C with the table implementation only (tests compare it with the hardware one)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        crc = tl_crc32c_sw(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return crc


def crc32c_hardware():
    """True when CRC32C uses a CPU instruction on this machine."""
    return bool(tl_crc32c_hw())


def crc32c_implementation():
    """Which CRC32C runs here: "crc32" (the instruction), "crc32+clmul" (the instruction, short
    inputs in three chains combined by carry-less multiply), "crc32+vpclmul" (that, and inputs
    of 2 KiB or more folded by 256-bit carry-less multiplies alongside three crc32 chains) or
    "table"."""
    return {1: "crc32", 2: "table", 3: "crc32+clmul", 4: "crc32+vpclmul"}[tl_crc32c_mode()]


FORMAT_VERSION_ = FORMAT_VERSION
SEGMENT_HEADER_SIZE_ = SEGMENT_HEADER_SIZE
MAX_SEGMENT_BYTES_ = MAX_SEGMENT_BYTES
FRAME_HEADER_SIZE_ = FRAME_HEADER_SIZE
IDX_STRIDE_ = IDX_STRIDE
TIX_STRIDE_ = TIX_STRIDE
