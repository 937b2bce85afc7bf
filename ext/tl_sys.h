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
#include <linux/futex.h>
#include <sys/syscall.h>
#include <limits.h>
#endif

static inline void tl_store_u32_release(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELEASE); }
static inline uint32_t tl_load_u32_acquire(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
static inline void tl_store_i64_release(void *p, int64_t v) { __atomic_store_n((int64_t *)p, v, __ATOMIC_RELEASE); }
static inline int64_t tl_load_i64_acquire(const void *p) { return __atomic_load_n((const int64_t *)p, __ATOMIC_ACQUIRE); }

/* Sequentially consistent operations for the cross-process wake-up protocol (docs/FORMAT.md §1):
   a publisher stores end_offset then loads the sleepers flag; a sleeper stores the flag then loads
   end_offset; with one total order at least one of them sees the other's store. */
static inline void tl_store_i64_seqcst(void *p, int64_t v) { __atomic_store_n((int64_t *)p, v, __ATOMIC_SEQ_CST); }
static inline void tl_store_u32_seqcst(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t tl_load_u32_seqcst(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_SEQ_CST); }
static inline int64_t tl_load_i64_seqcst(const void *p) { return __atomic_load_n((const int64_t *)p, __ATOMIC_SEQ_CST); }
static inline uint32_t tl_xchg_u32(void *p, uint32_t v) { return __atomic_exchange_n((uint32_t *)p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t tl_add_u32(void *p, uint32_t v) { return __atomic_add_fetch((uint32_t *)p, v, __ATOMIC_SEQ_CST); }
static inline void tl_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Sleep until *addr != val, a wake-up, or timeout_ns (< 0: none) passes. A futex on a shared
   file mapping works across processes (the kernel keys it by file and offset). Elsewhere: a
   short sleep (the caller loops), i.e. polling at 1 ms. Returns 0, or -1 with errno set. */
static inline int tl_futex_wait(void *addr, uint32_t val, int64_t timeout_ns) {
#if defined(__linux__)
    struct timespec ts, *tp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tp = &ts;
    }
    return (int)syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, tp, NULL, 0);
#else
    struct timespec ts = {0, 1000000};
    if (__atomic_load_n((uint32_t *)addr, __ATOMIC_SEQ_CST) != val) return 0;
    if (timeout_ns >= 0 && timeout_ns < 1000000) ts.tv_nsec = (long)timeout_ns;
    return nanosleep(&ts, NULL);
#endif
}

static inline int tl_futex_wake(void *addr) {
#if defined(__linux__)
    return (int)syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
#else
    (void)addr;
    return 0;
#endif
}

static inline void tl_sleep_ns(int64_t ns) {
    struct timespec ts;
    if (ns <= 0) return;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    nanosleep(&ts, NULL);
}

/* Tests only: a native thread pauses this long between checking for stop and reading its futex
   word, where a stop used to be lost (tests/test_native_threads.py); [0] the flusher, [1] the
   pretoucher. 0 in normal use; set through _core._set_native_pause_ns. */
static int64_t tl_native_pause_ns[2] = {0, 0};
static inline void tl_native_pause(int which) {
    int64_t ns = __atomic_load_n(&tl_native_pause_ns[which], __ATOMIC_RELAXED);
    if (ns > 0) tl_sleep_ns(ns);
}

static inline int64_t tl_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

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
