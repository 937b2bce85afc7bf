# cython: language_level=3, embedsignature=True
"""tidelog.bridge._rdkc: a Kafka ingest's reading loop in C, on librdkafka's C API, with no
confluent-kafka Message per message (each cost ~0.8 us to make and ~0.3 us more to read its
headers: most of an ingest's time at 100 B values).

Owns: the librdkafka function pointers (`_lib`, written once by `load()`, under the GIL, and
only read afterwards), and per Consumer one rd_kafka_t consumer handle with its consumer queue, its
last reported error and its pump (`_State`), which only its own methods and its pump write.

librdkafka is not a build dependency: the few prototypes and the message struct used here are
declared below (rd_kafka_message_t is public and stable across librdkafka 1.x and 2.x), and the
functions are looked up at run time in the librdkafka that confluent-kafka has already loaded:
dlopen(RTLD_NOLOAD) of confluent_kafka.cimpl's own file, then dlsym through that handle, which
searches what cimpl loaded (the same library, so the same protocol behaviour and the same
configuration keys). Where that is not possible (confluent-kafka missing, a symbol missing, a
librdkafka version outside 2.x) `load()` says why and the bridge reads through confluent-kafka
instead.

GIL: released only around calls that wait (take()'s wait for messages, the watermark query,
assign()/close() stopping the pump, rd_kafka_consumer_close / rd_kafka_destroy); those touch no
Python object. A Consumer has a thread of its own, the pump (C only, never holding the GIL): it
takes messages off librdkafka's consumer queue (rd_kafka_consume_batch_queue), parses their
headers and puts them in a ring, and destroys those take() is done with, so that librdkafka's own
per-message costs (its serving of the queue, header parsing, frees) run beside the caller's
thread, which makes the Python objects; the ring, the hand-back list and the error are guarded by
_State.lock, held only for copies of pointers. assign() and close() stop and join the pump (and
drop what it held) before they touch the assignment or the handle. librdkafka calls back into
this module only with C functions: the log callback (from its own threads: drops every line,
librdkafka must never write to stderr) and the error callback (from inside the pump's consume
call, or close()'s: it copies code and text into _State under its lock). A Consumer is used by
one thread at a time (a bridge's own): `busy` is set while a call has the GIL released, and by
take() until the messages it made columns of are given back (a finalizer run by a collection
meanwhile may call in), and another call on it meanwhile (close() included) raises instead of
sharing its buffer or stopping the pump under it. A process made by fork() must not touch its parent's handle (its threads, the
pump's too, are not there, and the lock may have been held): every method checks the pid, and a
child's close() and dealloc leave the handle, the lock and the messages alone.
"""

import os

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.list cimport PyList_Append
from cpython.long cimport PyLong_FromLongLong
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset, strlen, strncpy
from posix.unistd cimport getpid, pid_t

cdef extern from "<dlfcn.h>" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    int dlclose(void *handle)
    int RTLD_NOW
    int RTLD_NOLOAD

cdef extern from "<errno.h>" nogil:
    int ETIMEDOUT

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_t:
        pass
    ctypedef void *(*start_f)(void *) noexcept nogil
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_create(pthread_t *t, const void *attr, start_f run, void *arg)
    int pthread_join(pthread_t t, void **ret)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_REALTIME

cdef extern from "<pthread.h>" nogil:
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *t)


# ------------------------------------------------------------------ librdkafka's C API (rdkafka.h)

ctypedef struct rd_kafka_message_t:      # public, stable layout (rdkafka.h)
    int err                             # rd_kafka_resp_err_t
    void *rkt
    int32_t partition
    void *payload
    size_t len
    void *key
    size_t key_len
    int64_t offset
    void *_private

cdef enum:
    RD_KAFKA_CONSUMER = 1
    RD_KAFKA_CONF_OK = 0
    ERR_NOENT = -156                    # RD_KAFKA_RESP_ERR__NOENT
    ERR_PARTITION_EOF = -191            # RD_KAFKA_RESP_ERR__PARTITION_EOF
    ERR_AUTO_OFFSET_RESET = -140        # RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET
    ERRSTR = 512
    MAX_TAKE = 4096                     # messages per take(), at most
    RING = 8192                         # messages the pump holds for take(), at most
    PUMP_CHUNK = 512                    # messages the pump takes from librdkafka at a time
    PUMP_WAIT_MS = 100                  # how long it waits for one (a stop wakes it sooner)

cdef size_t RING_BYTES = 32 << 20       # the ring's values and keys, about, at most: once taken
                                        # off librdkafka's queue, its queued.max.messages.kbytes
                                        # no longer counts them (8192 x 1 MB would be 8 GB)

cdef int64_t MS_MAX = 9223372036854        # ms whose ns still fit in an int64

ctypedef void (*error_cb_t)(void *rk, int err, const char *reason, void *opaque) noexcept nogil
ctypedef void (*log_cb_t)(const void *rk, int level, const char *fac,
                          const char *buf) noexcept nogil

ctypedef int (*version_f)() noexcept nogil
ctypedef const char *(*err2str_f)(int err) noexcept nogil
ctypedef void *(*conf_new_f)() noexcept nogil
ctypedef int (*conf_set_f)(void *conf, const char *name, const char *value, char *errstr,
                           size_t errstr_size) noexcept nogil
ctypedef void (*conf_destroy_f)(void *conf) noexcept nogil
ctypedef void (*conf_set_error_cb_f)(void *conf, error_cb_t cb) noexcept nogil
ctypedef void (*conf_set_log_cb_f)(void *conf, log_cb_t cb) noexcept nogil
ctypedef void (*conf_set_opaque_f)(void *conf, void *opaque) noexcept nogil
ctypedef void *(*new_f)(int type, void *conf, char *errstr, size_t errstr_size) noexcept nogil
ctypedef void (*destroy_f)(void *rk) noexcept nogil
ctypedef int (*consumer_close_f)(void *rk) noexcept nogil
ctypedef int (*poll_set_consumer_f)(void *rk) noexcept nogil
ctypedef void *(*queue_get_consumer_f)(void *rk) noexcept nogil
ctypedef void (*queue_destroy_f)(void *rkqu) noexcept nogil
ctypedef void (*queue_yield_f)(void *rkqu) noexcept nogil
ctypedef Py_ssize_t (*consume_batch_queue_f)(void *rkqu, int timeout_ms,
                                             rd_kafka_message_t **msgs,
                                             size_t size) noexcept nogil
ctypedef void (*message_destroy_f)(rd_kafka_message_t *m) noexcept nogil
ctypedef int64_t (*message_timestamp_f)(const rd_kafka_message_t *m, int *tstype) noexcept nogil
ctypedef int (*message_headers_f)(const rd_kafka_message_t *m, void **hdrs) noexcept nogil
ctypedef int (*header_get_all_f)(const void *hdrs, size_t idx, const char **name,
                                 const void **value, size_t *size) noexcept nogil
ctypedef void *(*tpl_new_f)(int size) noexcept nogil
ctypedef void *(*tpl_add_f)(void *tpl, const char *topic, int32_t partition) noexcept nogil
ctypedef int (*tpl_set_offset_f)(void *tpl, const char *topic, int32_t partition,
                                 int64_t offset) noexcept nogil
ctypedef void (*tpl_destroy_f)(void *tpl) noexcept nogil
ctypedef int (*assign_f)(void *rk, const void *tpl) noexcept nogil
ctypedef int (*query_wm_f)(void *rk, const char *topic, int32_t partition, int64_t *lo,
                           int64_t *hi, int timeout_ms) noexcept nogil
ctypedef int (*get_wm_f)(void *rk, const char *topic, int32_t partition, int64_t *lo,
                         int64_t *hi) noexcept nogil

ctypedef struct Lib:
    version_f version
    err2str_f err2str
    err2str_f err2name
    conf_new_f conf_new
    conf_set_f conf_set
    conf_destroy_f conf_destroy
    conf_set_error_cb_f conf_set_error_cb
    conf_set_log_cb_f conf_set_log_cb
    conf_set_opaque_f conf_set_opaque
    new_f new
    destroy_f destroy
    consumer_close_f consumer_close
    poll_set_consumer_f poll_set_consumer
    queue_get_consumer_f queue_get_consumer
    queue_destroy_f queue_destroy
    consume_batch_queue_f consume_batch_queue
    message_destroy_f message_destroy
    message_timestamp_f message_timestamp
    message_headers_f message_headers
    header_get_all_f header_get_all
    tpl_new_f tpl_new
    tpl_add_f tpl_add
    tpl_set_offset_f tpl_set_offset
    tpl_destroy_f tpl_destroy
    assign_f assign
    query_wm_f query_watermark_offsets
    get_wm_f get_watermark_offsets
    queue_yield_f queue_yield

cdef Lib _lib
cdef bint _loaded = False
cdef object _why_not = None            # why load() failed (str), once it did

_SYMBOLS = (
    ("version", "rd_kafka_version"), ("err2str", "rd_kafka_err2str"),
    ("err2name", "rd_kafka_err2name"), ("conf_new", "rd_kafka_conf_new"),
    ("conf_set", "rd_kafka_conf_set"), ("conf_destroy", "rd_kafka_conf_destroy"),
    ("conf_set_error_cb", "rd_kafka_conf_set_error_cb"),
    ("conf_set_log_cb", "rd_kafka_conf_set_log_cb"),
    ("conf_set_opaque", "rd_kafka_conf_set_opaque"), ("new", "rd_kafka_new"),
    ("destroy", "rd_kafka_destroy"), ("consumer_close", "rd_kafka_consumer_close"),
    ("poll_set_consumer", "rd_kafka_poll_set_consumer"),
    ("queue_get_consumer", "rd_kafka_queue_get_consumer"),
    ("queue_destroy", "rd_kafka_queue_destroy"),
    ("consume_batch_queue", "rd_kafka_consume_batch_queue"),
    ("message_destroy", "rd_kafka_message_destroy"),
    ("message_timestamp", "rd_kafka_message_timestamp"),
    ("message_headers", "rd_kafka_message_headers"),
    ("header_get_all", "rd_kafka_header_get_all"),
    ("tpl_new", "rd_kafka_topic_partition_list_new"),
    ("tpl_add", "rd_kafka_topic_partition_list_add"),
    ("tpl_set_offset", "rd_kafka_topic_partition_list_set_offset"),
    ("tpl_destroy", "rd_kafka_topic_partition_list_destroy"),
    ("assign", "rd_kafka_assign"),
    ("query_watermark_offsets", "rd_kafka_query_watermark_offsets"),
    ("get_watermark_offsets", "rd_kafka_get_watermark_offsets"),
    ("queue_yield", "rd_kafka_queue_yield"),
)


def _library_path():
    """The file of confluent-kafka's own extension module (its librdkafka is among what that
    one loaded: dlsym through its handle finds the functions there, whichever librdkafka it
    was built against, the wheel's bundled one or a system one)."""
    from confluent_kafka import cimpl
    return getattr(cimpl, "__file__", None)


cdef int _fill(void *handle) except -1:
    cdef void **slots = <void **>&_lib
    cdef void *f
    cdef int i
    for i, (_, sym) in enumerate(_SYMBOLS):
        f = dlsym(handle, sym.encode())
        if f == NULL:
            raise LookupError(f"librdkafka has no {sym}")
        slots[i] = f
    return 0


def load():
    """Make the C API usable: None when it is, else why not (a str, said once and kept)."""
    global _loaded, _why_not
    if _loaded:
        return None
    if _why_not is not None:
        return _why_not
    if sizeof(Lib) != len(_SYMBOLS) * sizeof(void *):
        _why_not = "the function table does not match its symbol list"
        return _why_not
    cdef bytes fpath = None
    try:
        path = _library_path()
        if path is not None:
            fpath = os.fsencode(path)
    except ImportError as e:
        _why_not = f"confluent-kafka is not installed ({e})"
        return _why_not
    except Exception as e:          # (a broken or odd install: the fallback reads through it)
        _why_not = f"confluent_kafka.cimpl's file cannot be found ({type(e).__name__}: {e})"
        return _why_not
    if path is None:
        _why_not = "confluent_kafka.cimpl has no file"
        return _why_not
    # (RTLD_NOLOAD: the handle of what is loaded already, never a second copy)
    cdef void *handle = dlopen(fpath, RTLD_NOW | RTLD_NOLOAD)
    if handle == NULL:
        _why_not = f"{path} cannot be opened (dlopen RTLD_NOLOAD)"
        return _why_not
    try:
        _fill(handle)
    except LookupError as e:
        _why_not = str(e)
        return _why_not
    # (the handle stays open: the library is confluent-kafka's, loaded for the process's life)
    cdef int v = _lib.version()
    if not (0x02000000 <= v < 0x03000000):
        _why_not = f"librdkafka version 0x{v:08x} is not a 2.x one"
        return _why_not
    _loaded = True
    return None


# ------------------------------------------------------------------ callbacks (C only)

ctypedef struct _State:
    # under `lock`: error_cb runs on the pump's thread, last_error() on the caller's
    pthread_mutex_t lock
    pthread_cond_t ready        # take(): messages came
    pthread_cond_t room         # the pump: room in the ring, messages to destroy, or stop
    int err                     # the last error error_cb reported (0: none)
    char text[ERRSTR]           # its text, NUL-terminated
    # the pump: a thread of ours that takes librdkafka's messages off the consumer queue and
    # parses their headers (librdkafka's costs per message, off the caller's thread), into a
    # ring take() pops under `lock`; take() hands the messages it made columns of back on
    # `dead`, which the pump destroys (their frees off the caller's thread too)
    pthread_t thread
    bint running                # the thread was started and not yet joined
    bint stop                   # asked to end
    void *rkqu
    rd_kafka_message_t **ring   # RING pointers, circular: from head, count of them
    Py_ssize_t head
    Py_ssize_t count
    rd_kafka_message_t **dead   # RING pointers to destroy, ndead of them
    rd_kafka_message_t **spare  # the pump's own: swapped with dead to destroy outside lock
    Py_ssize_t ndead
    size_t bytes                # the ring's messages' values and keys
    size_t mean                 # the last chunk's bytes per message (a first guess: 1 MiB)
    size_t cap                  # RING_BYTES, or less (the consumer's queued.max.messages.kbytes)


cdef void _drop_log(const void *rk, int level, const char *fac, const char *buf) noexcept nogil:
    pass


cdef void _note_error(void *rk, int err, const char *reason, void *opaque) noexcept nogil:
    # (from inside a librdkafka call that serves the queue: the pump's, or close()'s; neither
    # holds st.lock meanwhile)
    cdef _State *st = <_State *>opaque
    if st == NULL:
        return
    pthread_mutex_lock(&st.lock)
    st.err = err
    if reason == NULL:
        st.text[0] = 0
    else:
        strncpy(st.text, reason, ERRSTR - 1)
        st.text[ERRSTR - 1] = 0
    pthread_mutex_unlock(&st.lock)


cdef void *_pump(void *arg) noexcept nogil:
    """The pump's thread: until asked to stop, messages from librdkafka into the ring (never
    more than RING), their headers parsed; the messages take() is done with, destroyed."""
    cdef _State *p = <_State *>arg
    cdef rd_kafka_message_t *got_[PUMP_CHUNK]
    cdef rd_kafka_message_t **swap
    cdef Py_ssize_t got, more, i, nd, chunk
    cdef size_t size
    cdef bint full
    cdef void *hdrs
    while True:
        pthread_mutex_lock(&p.lock)
        while (not p.stop and p.ndead == 0 and
               (p.count > RING - PUMP_CHUNK or p.bytes >= p.cap)):
            pthread_cond_wait(&p.room, &p.lock)
        if p.stop:
            pthread_mutex_unlock(&p.lock)
            return NULL
        swap = p.dead
        p.dead = p.spare
        p.spare = swap
        nd = p.ndead
        p.ndead = 0
        full = p.count > RING - PUMP_CHUNK or p.bytes >= p.cap
        # as many as the cap leaves room for, at the last chunk's mean size
        chunk = (p.cap - p.bytes) // p.mean if not full else 0
        if chunk > PUMP_CHUNK:
            chunk = PUMP_CHUNK
        elif chunk < 1:
            chunk = 1
        pthread_mutex_unlock(&p.lock)
        for i in range(nd):
            _lib.message_destroy(p.spare[i])
        if full:
            continue
        # the first message waited for, the rest taken as they are (a wait for a whole chunk
        # would hold back what came: a following ingest's latency)
        got = _lib.consume_batch_queue(p.rkqu, PUMP_WAIT_MS, got_, 1)
        if got == 1 and chunk > 1:
            more = _lib.consume_batch_queue(p.rkqu, 0, got_ + 1, chunk - 1)
            if more > 0:
                got += more
        if got <= 0:
            continue
        size = 0
        for i in range(got):
            size += _size(got_[i])
            if got_[i].err == 0:
                _lib.message_headers(got_[i], &hdrs)      # (parsed now, kept in the message)
        pthread_mutex_lock(&p.lock)
        for i in range(got):
            p.ring[(p.head + p.count + i) % RING] = got_[i]
        p.count += got
        p.bytes += size
        p.mean = size // got + 64
        pthread_cond_signal(&p.ready)
        pthread_mutex_unlock(&p.lock)


cdef inline size_t _size(const rd_kafka_message_t *m) noexcept nogil:
    """What a message weighs in the ring: its value and key (an error's text)."""
    return m.len + (m.key_len if m.key != NULL else 0)


cdef void _pump_stop(_State *p) noexcept nogil:
    """Stop the pump and drop what it holds (messages of the position read so far)."""
    cdef bint running
    cdef Py_ssize_t i
    pthread_mutex_lock(&p.lock)
    running = p.running
    p.stop = True
    pthread_cond_broadcast(&p.room)
    pthread_mutex_unlock(&p.lock)
    if running:
        _lib.queue_yield(p.rkqu)             # (wakes a wait of the pump in librdkafka)
        pthread_join(p.thread, NULL)
    pthread_mutex_lock(&p.lock)
    p.running = False
    for i in range(p.count):
        _lib.message_destroy(p.ring[(p.head + i) % RING])
    for i in range(p.ndead):
        _lib.message_destroy(p.dead[i])
    p.head = p.count = p.ndead = p.bytes = 0
    pthread_mutex_unlock(&p.lock)


cdef bint _pump_take(_State *p, rd_kafka_message_t **buf, Py_ssize_t n, Py_ssize_t need,
                     int ms, Py_ssize_t *got) noexcept nogil:
    """Up to n messages of the ring into buf, waiting up to ms for `need` of them (the pump
    started if it is not running). False: the pump's thread could not be started."""
    cdef timespec deadline
    cdef Py_ssize_t i, k
    cdef int64_t ns
    pthread_mutex_lock(&p.lock)
    if not p.running:
        p.stop = False
        if pthread_create(&p.thread, NULL, _pump, p) != 0:
            pthread_mutex_unlock(&p.lock)
            return False
        p.running = True
    if p.count < need and ms > 0:
        clock_gettime(CLOCK_REALTIME, &deadline)
        ns = deadline.tv_nsec + <int64_t>(ms % 1000) * 1000000
        deadline.tv_sec += ms // 1000 + ns // 1000000000
        deadline.tv_nsec = ns % 1000000000
        # (a ring holding its bytes' worth gets no more until some are taken)
        while p.count < need and p.bytes < p.cap:
            if pthread_cond_timedwait(&p.ready, &p.lock, &deadline) == ETIMEDOUT:
                break
    k = p.count if p.count < n else n
    for i in range(k):
        buf[i] = p.ring[(p.head + i) % RING]
        p.bytes -= _size(buf[i])
    p.head = (p.head + k) % RING
    p.count -= k
    pthread_cond_signal(&p.room)
    pthread_mutex_unlock(&p.lock)
    got[0] = k
    return True


cdef void _pump_give_back(_State *p, rd_kafka_message_t **buf, Py_ssize_t n) noexcept nogil:
    """Messages take() is done with: for the pump to destroy (here when its list is full)."""
    cdef Py_ssize_t i
    pthread_mutex_lock(&p.lock)
    if p.running and p.ndead + n <= RING:
        for i in range(n):
            p.dead[p.ndead + i] = buf[i]
        p.ndead += n
        pthread_cond_signal(&p.room)
        n = 0
    pthread_mutex_unlock(&p.lock)
    for i in range(n):
        _lib.message_destroy(buf[i])


class UnreadableHeader(Exception):
    """A message has a header whose name is not UTF-8 text: args (offset,)."""


cdef int _cut(bytearray b, Py_ssize_t size) except -1:
    """take()'s packed columns cut back to `size` bytes, never grown: Python code a collection
    ran during take() may have shrunk them (was: grown back, uninitialized - bytes of freed
    objects in the caller's bytearray); the bytes cut are zeroed first, in case the resize
    is refused (a buffer exported meanwhile: BufferError, the bytearray left as it is)."""
    cdef Py_ssize_t have = PyByteArray_GET_SIZE(b)
    if have > size:
        memset(PyByteArray_AS_STRING(b) + size, 0, have - size)
        PyByteArray_Resize(b, size)
    return 0


cdef inline str _text(const char *s):
    return "" if s == NULL else s[:strlen(s)].decode("utf-8", "replace")


cdef inline int _ms(double timeout) noexcept nogil:
    """A timeout in s as librdkafka's ms: 0 for a negative one (or NaN), at most an hour."""
    if not (timeout > 0):
        return 0
    if timeout > 3600:
        return 3600000
    return <int>(timeout * 1000)


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class Consumer:
    """One partition's reader: an rd_kafka_t consumer made from string settings (the same the
    confluent-kafka Consumer of the bridge gets, less its Python callbacks)."""
    cdef void *rk
    cdef void *rkqu
    cdef _State *state
    cdef pid_t pid
    cdef bytes topic
    cdef const char *ctopic              # topic's bytes (kept alive by it)
    cdef int32_t partition
    cdef rd_kafka_message_t **buf         # take()'s messages (MAX_TAKE pointers)
    cdef bint closed
    cdef bint busy                        # a call waits in librdkafka (GIL released)
    cdef Py_ssize_t _vat, _taken          # _fill's progress (packed values: bytes, messages)

    def __cinit__(self):
        self.rk = NULL
        self.rkqu = NULL
        self.buf = NULL
        self.closed = True
        self.buf = <rd_kafka_message_t **>malloc(MAX_TAKE * sizeof(rd_kafka_message_t *))
        if self.buf == NULL:
            raise MemoryError()
        cdef _State *st = <_State *>calloc(1, sizeof(_State))
        if st == NULL:
            raise MemoryError()
        st.ring = <rd_kafka_message_t **>malloc(RING * sizeof(rd_kafka_message_t *))
        st.dead = <rd_kafka_message_t **>malloc(RING * sizeof(rd_kafka_message_t *))
        st.spare = <rd_kafka_message_t **>malloc(RING * sizeof(rd_kafka_message_t *))
        if (st.ring == NULL or st.dead == NULL or st.spare == NULL or
                pthread_mutex_init(&st.lock, NULL) != 0):
            free(st.ring)
            free(st.dead)
            free(st.spare)
            free(st)
            raise MemoryError()
        pthread_cond_init(&st.ready, NULL)
        pthread_cond_init(&st.room, NULL)
        st.mean = 1 << 20
        st.cap = RING_BYTES
        self.state = st

    def __init__(self, dict settings not None, str topic not None, int partition):
        """`settings`: name -> str value (librdkafka's configuration keys). ValueError for a
        setting librdkafka refuses (its text), RuntimeError when load() failed."""
        if not _loaded and load() is not None:
            raise RuntimeError(f"librdkafka's C API is not available: {load()}")
        if self.rk != NULL:
            raise RuntimeError("Consumer already made")
        cdef char errstr[ERRSTR]
        cdef void *conf = _lib.conf_new()
        cdef bytes k, v
        errstr[0] = 0
        try:
            for name, value in settings.items():
                if type(name) is not str or type(value) is not str:
                    raise TypeError(f"setting {name!r}: names and values are str")
                k = name.encode()
                v = value.encode()
                if b"\0" in k or b"\0" in v:
                    raise ValueError(f"setting {name!r}: a NUL character")
                if _lib.conf_set(conf, k, v, errstr, ERRSTR) != RD_KAFKA_CONF_OK:
                    raise ValueError(_text(errstr))
                if name == "queued.max.messages.kbytes" and value.strip().isdigit():
                    self.state.cap = min(RING_BYTES, int(value) * 1024)
        except BaseException:
            _lib.conf_destroy(conf)
            raise
        _lib.conf_set_log_cb(conf, _drop_log)
        _lib.conf_set_error_cb(conf, _note_error)
        _lib.conf_set_opaque(conf, self.state)
        self.rk = _lib.new(RD_KAFKA_CONSUMER, conf, errstr, ERRSTR)
        if self.rk == NULL:
            _lib.conf_destroy(conf)          # (rd_kafka_new owns it only when it succeeds)
            raise ValueError(_text(errstr))
        self.pid = getpid()
        self.closed = False
        _lib.poll_set_consumer(self.rk)
        self.rkqu = _lib.queue_get_consumer(self.rk)
        self.state.rkqu = self.rkqu
        self.topic = topic.encode()
        if b"\0" in self.topic:
            self.close()
            raise ValueError("a topic name with a NUL character")
        self.ctopic = self.topic
        self.partition = partition

    cdef int _check(self) except -1:
        if self.closed:
            raise ValueError("the Kafka consumer is closed")
        if getpid() != self.pid:
            raise RuntimeError("the Kafka consumer belongs to the parent process (fork)")
        if self.busy:
            raise RuntimeError("the Kafka consumer is in use by another thread")
        return 0

    def assign(self, int64_t offset):
        """Read the partition from `offset` on (again: a new position)."""
        self._check()
        # (busy: another thread's close() meanwhile would destroy the handle under it)
        self.busy = True
        with nogil:
            _pump_stop(self.state)           # (what it holds is of the old position)
        self.busy = False
        cdef void *tpl = _lib.tpl_new(1)
        _lib.tpl_add(tpl, self.topic, self.partition)
        _lib.tpl_set_offset(tpl, self.topic, self.partition, offset)
        cdef int err = _lib.assign(self.rk, tpl)
        _lib.tpl_destroy(tpl)
        if err:
            raise RuntimeError(_text(_lib.err2str(err)))

    def watermarks(self, double timeout):
        """(low, high) as the cluster says now. RuntimeError(text) when it does not answer."""
        self._check()
        cdef int64_t lo = -1, hi = -1
        cdef int ms = _ms(timeout)
        cdef int err
        self.busy = True
        with nogil:
            err = _lib.query_watermark_offsets(self.rk, self.ctopic, self.partition, &lo, &hi, ms)
        self.busy = False
        if err:
            raise RuntimeError(_text(_lib.err2str(err)))
        return lo, hi

    def cached_watermarks(self):
        """(low, high) as the last fetch reported them (-1: not known yet)."""
        self._check()
        cdef int64_t lo = -1, hi = -1
        if _lib.get_watermark_offsets(self.rk, self.topic, self.partition, &lo, &hi):
            return -1, -1
        return lo, hi

    def last_error(self):
        """(name, text) of the last error librdkafka reported through error_cb, or None."""
        self._check()
        cdef int err
        cdef char text[ERRSTR]
        pthread_mutex_lock(&self.state.lock)
        err = self.state.err
        memcpy(text, self.state.text, ERRSTR)
        pthread_mutex_unlock(&self.state.lock)
        if err == 0:
            return None
        return _text(_lib.err2name(err)), _text(text)

    def take(self, Py_ssize_t n, double timeout, bint whole, list offsets not None,
             object values not None, list keys not None, list stamps not None,
             list headers not None, bytearray ends=None):
        """Up to `n` messages, appended column by column to the lists given: offsets (int),
        values (bytes; a null value b""), keys (bytes or None), stamps (ns: ms * 10**6, now
        where a message has none), headers (None, or a list of (str, bytes) pairs, a null
        value b""). With `ends` (a bytearray) `values` is a bytearray too: each value is
        appended to it, back to back (no object per value), and its end in it to `ends` as
        a native int64 (append_batch's value_offsets, less the first).
        `whole`: wait up to `timeout` s for all n; else for the first only, then
        take what has come. Returns (taken, value bytes, marked, events): `marked` if a header
        is named TIMESTAMP (the caller takes it back), events a list of (error name, text,
        offset) for what came among the messages; after an _AUTO_OFFSET_RESET or another
        error (not _PARTITION_EOF) no message is taken. UnreadableHeader(offset) for a header
        name that is not UTF-8, with the messages before it taken."""
        self._check()
        if ends is not None and type(values) is not bytearray:
            raise TypeError("values: a bytearray with ends")
        if ends is None and type(values) is not list:
            raise TypeError("values: a list (a bytearray with ends)")
        if n < 1:
            n = 1
        elif n > MAX_TAKE:
            n = MAX_TAKE
        cdef int ms = _ms(timeout)
        cdef Py_ssize_t got = 0
        cdef Py_ssize_t need = n if whole else 1
        cdef bint ok
        cdef rd_kafka_message_t **buf = self.buf
        # (busy until the messages are given back: a finalizer run by a collection while the
        # columns are made must not take into buf or close the handle under them)
        self.busy = True
        try:
            with nogil:
                ok = _pump_take(self.state, buf, n, need, ms, &got)
            if not ok:
                raise RuntimeError("cannot start the Kafka reading thread")
            try:
                return self._columns(got, offsets, values, keys, stamps, headers, ends)
            finally:
                with nogil:
                    _pump_give_back(self.state, buf, got)
        finally:
            self.busy = False

    cdef tuple _columns(self, Py_ssize_t got, list offsets, object values, list keys,
                        list stamps, list headers, bytearray ends):
        cdef Py_ssize_t i, v0 = 0, e0 = 0, need = 0
        # packed (ends given): values and ends grown once to hold every message taken, and
        # cut back (finally) to what was made: messages after an error, or after a header
        # name that is not text, are not
        if ends is not None:
            v0 = PyByteArray_GET_SIZE(values)
            e0 = PyByteArray_GET_SIZE(ends)
            for i in range(got):
                if self.buf[i].err == 0 and self.buf[i].payload != NULL:
                    need += <Py_ssize_t>self.buf[i].len
            PyByteArray_Resize(values, v0 + need)
            try:
                PyByteArray_Resize(ends, e0 + got * 8)
            except BaseException:
                PyByteArray_Resize(values, v0)
                raise
        try:
            return self._fill(got, offsets, values, keys, stamps, headers, ends, v0, e0)
        finally:
            if ends is not None:
                # (cut to what _fill made: the sizes it left in _vat / _taken)
                _cut(values, v0 + self._vat)
                _cut(ends, e0 + self._taken * 8)

    cdef tuple _fill(self, Py_ssize_t got, list offsets, object values, list keys,
                     list stamps, list headers, bytearray ends, Py_ssize_t v0, Py_ssize_t e0):
        cdef rd_kafka_message_t *m
        cdef Py_ssize_t i, taken = 0
        cdef size_t nbytes = 0, j, size
        cdef int tstype, err
        cdef int64_t ms
        cdef bint marked = False, stop = False
        cdef void *hdrs
        cdef Py_ssize_t hlen_name
        cdef const char *hname
        cdef const void *hval
        cdef size_t hlen
        cdef list events = []
        cdef list hl
        cdef object name, val
        cdef str last = None             # the last header name decoded, and its UTF-8
        cdef const char *last_utf8 = NULL
        cdef Py_ssize_t last_len = -1
        cdef Py_ssize_t vat = 0
        cdef int64_t end
        self._vat = 0
        self._taken = 0
        for i in range(got):
            m = self.buf[i]
            if m.err:
                if m.payload != NULL:
                    text = PyUnicode_DecodeUTF8(<const char *>m.payload, m.len, "replace")
                else:
                    text = _text(_lib.err2str(m.err))
                events.append((_text(_lib.err2name(m.err)), text, m.offset))
                if m.err != ERR_PARTITION_EOF:
                    break
                continue
            # headers first: a name that is not text refuses the message before any column
            if _lib.message_headers(m, &hdrs) == 0:
                hl = []
                j = 0
                while _lib.header_get_all(hdrs, j, &hname, &hval, &hlen) == 0:
                    hlen_name = strlen(hname)
                    # the last name made is made again (most messages of a topic have the
                    # same headers): its str kept, not decoded per message
                    if (hlen_name == last_len and last_len >= 0 and
                            memcmp(hname, last_utf8, hlen_name) == 0):
                        name = last
                    else:
                        try:
                            name = PyUnicode_DecodeUTF8(hname, hlen_name, NULL)
                        except UnicodeDecodeError:
                            raise UnreadableHeader(m.offset) from None
                        last = name
                        last_utf8 = PyUnicode_AsUTF8AndSize(last, &last_len)
                    # (base.TIMESTAMP_HEADER: the mirrors' stamp below 1 ms)
                    if hlen_name == 17 and memcmp(hname, b"tidelog-timestamp", 17) == 0:
                        marked = True
                    val = (PyBytes_FromStringAndSize(<const char *>hval, hlen)
                           if hval != NULL else b"")
                    hl.append((name, val))
                    j += 1
                h = hl
            else:
                h = None
            # (sizes checked again, before any column: Python code a collection ran meanwhile
            # may have resized them)
            if ends is not None and (
                    PyByteArray_GET_SIZE(values) < v0 + vat + <Py_ssize_t>m.len or
                    PyByteArray_GET_SIZE(ends) < e0 + (taken + 1) * 8):
                raise RuntimeError("take(): values or ends changed size meanwhile")
            PyList_Append(offsets, PyLong_FromLongLong(m.offset))
            if ends is not None:
                if m.payload != NULL:
                    memcpy(PyByteArray_AS_STRING(values) + v0 + vat, m.payload, m.len)
                    vat += m.len
                    nbytes += m.len
                end = v0 + vat
                memcpy(PyByteArray_AS_STRING(ends) + e0 + taken * 8, &end, 8)
            elif m.payload == NULL:
                PyList_Append(values, b"")
            else:
                PyList_Append(values, PyBytes_FromStringAndSize(<const char *>m.payload, m.len))
                nbytes += m.len
            if m.key == NULL:
                PyList_Append(keys, None)
            else:
                PyList_Append(keys, PyBytes_FromStringAndSize(<const char *>m.key, m.key_len))
            ms = _lib.message_timestamp(m, &tstype)
            if tstype == 0:                      # RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
                PyList_Append(stamps, PyLong_FromLongLong(_now_ns()))
            elif ms > MS_MAX or ms < -MS_MAX:    # (ns past int64: append_batch refuses it)
                PyList_Append(stamps, PyLong_FromLongLong(ms) * 1000000)
            else:
                PyList_Append(stamps, PyLong_FromLongLong(ms * 1000000))
            PyList_Append(headers, h)
            taken += 1
            self._vat = vat
            self._taken = taken
        return taken, nbytes, marked, events

    def close(self):
        """Leave the partition and free the handle (again: nothing)."""
        if self.closed:
            return
        if self.busy and getpid() == self.pid:
            raise RuntimeError("the Kafka consumer is in use by another thread")
        self.closed = True
        if getpid() != self.pid:
            self.rk = NULL                 # the parent's: its threads are not in this process
            self.rkqu = NULL
            return
        cdef void *rk = self.rk
        cdef void *rkqu = self.rkqu
        self.rk = NULL
        self.rkqu = NULL
        with nogil:
            _pump_stop(self.state)
            if rkqu != NULL:
                _lib.queue_destroy(rkqu)
            _lib.consumer_close(rk)
            _lib.destroy(rk)

    def __dealloc__(self):
        cdef void *rk = self.rk
        cdef void *rkqu = self.rkqu
        self.rk = NULL
        self.rkqu = NULL
        cdef _State *st = self.state
        cdef bint mine = self.pid == 0 or getpid() == self.pid
        if not self.closed and rk != NULL and mine:
            with nogil:
                _pump_stop(st)
                if rkqu != NULL:
                    _lib.queue_destroy(rkqu)
                _lib.consumer_close(rk)
                _lib.destroy(rk)
        # (a child leaks its parent's handle and the messages its pump held, whose threads
        # are not in it: nothing calls back; its lock may have been held at the fork)
        if st != NULL:
            if mine:
                pthread_cond_destroy(&st.ready)
                pthread_cond_destroy(&st.room)
                pthread_mutex_destroy(&st.lock)
            free(st.ring)
            free(st.dead)
            free(st.spare)
            free(st)
        free(self.buf)
