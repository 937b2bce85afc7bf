# extern declarations only: the OS and C helpers the core calls.
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "crc32c.h" nogil:
    uint32_t tl_crc32c(uint32_t crc, const void *buf, size_t length)
    uint32_t tl_crc32c_u32(uint32_t v)
    uint32_t tl_crc32c_frame(uint32_t length, const void *buf, size_t n)
    uint32_t tl_crc32c_sw(uint32_t crc, const void *buf, size_t length)
    int tl_crc32c_hw()
    int tl_crc32c_mode()

cdef extern from "tl_sys.h" nogil:
    int64_t tl_native_pause_ns[2]     # tests only (see tl_sys.h)
    void tl_store_u32_release(void *p, uint32_t v)
    uint32_t tl_load_u32_acquire(const void *p)
    void tl_store_i64_release(void *p, int64_t v)
    int64_t tl_load_i64_acquire(const void *p)
    int64_t tl_now_ns()
    int64_t tl_mono_ns()
    void tl_sleep_ns(int64_t ns)
    void tl_store_i64_seqcst(void *p, int64_t v)
    void tl_store_u32_seqcst(void *p, uint32_t v)
    uint32_t tl_load_u32_seqcst(const void *p)
    int64_t tl_load_i64_seqcst(const void *p)
    uint32_t tl_xchg_u32(void *p, uint32_t v)
    uint32_t tl_add_u32(void *p, uint32_t v)
    void tl_cpu_relax()
    int tl_futex_wait(void *addr, uint32_t val, int64_t timeout_ns)
    int tl_futex_wake(void *addr)
    int tl_datasync(int fd)
    int tl_preallocate(int fd, int64_t size)
    int tl_zero_range(int fd, int64_t offset, int64_t length)

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int msync(void *addr, size_t length, int flags)
    void *MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_SHARED, MS_SYNC, MS_ASYNC

cdef extern from "<sys/file.h>" nogil:
    int flock(int fd, int operation)
    int LOCK_EX, LOCK_NB, LOCK_UN

cdef extern from "<unistd.h>" nogil:
    int fsync(int fd)
    ctypedef long off_t
    ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)

cdef extern from "<errno.h>" nogil:
    int EINTR, EIO, EAGAIN, ETIMEDOUT

cdef extern from "tl_flusher.h" nogil:
    ctypedef struct tl_flusher:
        int unsafe_no_sync
        int64_t last_sync_at
        int64_t syncs
        int64_t persists
    int TL_OWNER_PYTHON
    tl_flusher* tl_flusher_new(int64_t* durable, const int64_t* written, int64_t* durable_bytes,
                               int* wstate, char* ctl, size_t ctl_size, int end_field,
                               int durable_field, int wake_durable, int sync_data,
                               int64_t interval_ns, int64_t soft, int64_t persist_ns)
    void tl_flusher_kick(tl_flusher* f)
    void tl_flusher_note_durable(tl_flusher* f)
    int tl_flusher_start(tl_flusher* f)
    void tl_flusher_free(tl_flusher* f)
    void tl_flusher_set_fd(tl_flusher* f, int fd)
    int tl_flusher_fd(tl_flusher* f)
    int tl_flusher_active(tl_flusher* f)
    int tl_flusher_forked(tl_flusher* f)
    void tl_flusher_init_fork_handler()
    int tl_fork_gen                # bumped in a fork() child (pthread_atfork): whose object is it
    int tl_flusher_err(tl_flusher* f)
    int tl_owner_try(tl_flusher* f, int who)
    void tl_owner_release(tl_flusher* f)

cdef extern from "tl_toucher.h" nogil:
    ctypedef struct tl_toucher:
        pass
    tl_toucher* tl_toucher_start(const size_t* wpos, size_t window, size_t chunk, int64_t min_rate)
    void tl_toucher_target(tl_toucher* t, char* base, size_t size)
    void tl_toucher_kick(tl_toucher* t, size_t pos)
    void tl_toucher_free(tl_toucher* t)
    int64_t tl_toucher_populated(tl_toucher* t)
    int tl_toucher_err(tl_toucher* t)

cdef extern from "tl_view.h":
    object tl_subview(object base, const char* p, Py_ssize_t n)
    void tl_toucher_extend(tl_toucher* t, char* base, size_t size)

cdef extern from "tl_prealloc.h" nogil:
    int tl_grow_file(int fd, int64_t start, int64_t end)
    int tl_grow_path(const char* path, int64_t start, int64_t end)
    int64_t tl_file_size(const char* path, uint64_t* ino)
    int64_t tl_allocated_end(int fd, int64_t size)
    int tl_clear_extents(int fd, int64_t start, int64_t end)
    int tl_next_data(int fd, int64_t start, int64_t size, int64_t* dstart, int64_t* dend)
    int TL_PREALLOC_STEPS
