/* Small portable helpers for the Cython core: atomics and OS calls that differ between systems. */
#ifndef TIDELOG_SYS_H
#define TIDELOG_SYS_H
#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <sys/mman.h>

static inline void tl_store_u32_release(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
static inline uint32_t tl_load_u32_acquire(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
static inline void tl_store_i64_release(void *p, int64_t v) { __atomic_store_n((int64_t *)p, v, __ATOMIC_RELEASE); }
static inline int64_t tl_load_i64_acquire(const void *p) { return __atomic_load_n((const int64_t *)p, __ATOMIC_ACQUIRE); }

static inline int64_t tl_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* fdatasync where it exists (macOS: fcntl F_FULLFSYNC, which is what makes data durable there). */
static inline int tl_datasync(int fd) {
#if defined(__APPLE__)
    if (fcntl(fd, F_FULLFSYNC) == 0) return 0;
    return fsync(fd);
#else
    return fdatasync(fd);
#endif
}

/* posix_fallocate returns an error number instead of setting errno; macOS has none. */
static inline int tl_preallocate(int fd, int64_t size) {
#if defined(__APPLE__)
    fstore_t st = {F_ALLOCATECONTIG, F_PEOFPOSMODE, 0, size, 0};
    if (fcntl(fd, F_PREALLOCATE, &st) == -1) {
        st.fst_flags = F_ALLOCATEALL;
        if (fcntl(fd, F_PREALLOCATE, &st) == -1) return errno;
    }
    if (ftruncate(fd, size) == -1) return errno;
    return 0;
#else
    int rc;
    do { rc = posix_fallocate(fd, 0, size); } while (rc == EINTR);
    return rc;
#endif
}

/* Fault in [addr, addr+length) (page-aligned) ahead of the writer, so its stores do not trap.
 * *how: 0 = not known yet; 1 = MADV_POPULATE_WRITE works (Linux >= 5.14);
 * 2 = read each page instead (maps it; the first store still takes a cheaper fault). */
#if defined(__linux__) && !defined(MADV_POPULATE_WRITE)
#define MADV_POPULATE_WRITE 23
#endif
static inline int tl_prefault(void *addr, size_t length, int *how) {
#if defined(__linux__)
    if (*how <= 1) {
        if (madvise(addr, length, MADV_POPULATE_WRITE) == 0) { *how = 1; return 0; }
        if (errno != EINVAL) return -1;
        *how = 2;
    }
#else
    *how = 2;
#endif
    {
        volatile const char *p = (volatile const char *)addr;
        char sink = 0;
        for (size_t i = 0; i < length; i += 4096) sink ^= p[i];
        (void)sink;
    }
    return 0;
}
#endif
