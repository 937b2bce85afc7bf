/* Small portable helpers for the Cython core: atomics and OS calls that differ between systems. */
#ifndef TIDELOG_SYS_H
#define TIDELOG_SYS_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <stdint.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#if defined(__linux__)
#include <linux/falloc.h>
#endif

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

/* Zero [offset, offset+length) of a file, keeping its blocks allocated; -1 where unsupported. */
static inline int tl_zero_range(int fd, int64_t offset, int64_t length) {
#if defined(__linux__) && defined(FALLOC_FL_ZERO_RANGE)
    int rc;
    do { rc = fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length); } while (rc != 0 && errno == EINTR);
    return rc;
#else
    (void)fd; (void)offset; (void)length;
    return -1;
#endif
}
#endif
