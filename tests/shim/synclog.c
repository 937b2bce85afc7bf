/* LD_PRELOAD interposer for tidelog's durability tests (Linux).
 *
 * Records what reached stable storage, independently of the engine's own bookkeeping: after every
 * successful fsync/fdatasync of a regular file it copies the file's content to
 * $SYNCLOG_DIR/files/<name>; after an fsync of a directory it writes the directory's listing to
 * $SYNCLOG_DIR/dirlist; msync(MS_SYNC) is treated as a sync of the file behind the mapping.
 * A power-loss image is then built from these copies (tests/powerloss.py).
 *
 * SYNCLOG_FAIL_AT=N makes the N-th sync call (1-based, counted over fsync/fdatasync/msync) and every
 * later one fail with EIO (SYNCLOG_FAIL_ERRNO overrides the errno) without syncing anything.
 * SYNCLOG_FALLOC_FAIL_AT=N makes the N-th posix_fallocate of a segment file (a path holding ".seg")
 * and every later one fail with ENOSPC: a full disk when a segment is created. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long calls = 0;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_msync)(void *, size_t, int);
static int (*real_fallocate)(int, off_t, off_t);
static long falloc_calls = 0;

static void init(void) {
    if (!real_fsync) real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (!real_fdatasync) real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (!real_msync) real_msync = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "msync");
}

/* 0: go on and sync; -1: fail this call with errno set */
static int inject(void) {
    const char *at = getenv("SYNCLOG_FAIL_AT");
    long n = __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST);
    if (at && n >= atol(at)) {
        const char *e = getenv("SYNCLOG_FAIL_ERRNO");
        errno = e ? atoi(e) : EIO;
        return -1;
    }
    return 0;
}

static void copy_fd(int fd, const char *name) {
    const char *dir = getenv("SYNCLOG_DIR");
    char dst[PATH_MAX], tmp[PATH_MAX];
    char buf[1 << 16];
    if (!dir) return;
    snprintf(dst, sizeof dst, "%s/files/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/files/.%s.tmp", dir, name);
    /* read through a new descriptor: the synced one may be write-only */
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int in = open(link, O_RDONLY | O_CLOEXEC);
    if (in < 0) abort();
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    /* a record of what was synced that is incomplete (the test machine's disk is full) would
       look like lost data: stop the writer loudly instead (the test checks how it ended) */
    if (out < 0) abort();
    off_t pos = 0;
    ssize_t n;
    while ((n = pread(in, buf, sizeof buf, pos)) > 0) {
        if (write(out, buf, (size_t)n) != n) abort();
        pos += n;
    }
    close(in);
    if (n < 0 || close(out) != 0 || rename(tmp, dst) != 0) abort();
}

static void record(int fd) {
    struct stat st;
    char link[64], path[PATH_MAX];
    const char *dir = getenv("SYNCLOG_DIR");
    if (!dir || fstat(fd, &st) != 0) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = 0;
    pthread_mutex_lock(&lock);
    if (S_ISREG(st.st_mode)) {
        const char *base = strrchr(path, '/');
        copy_fd(fd, base ? base + 1 : path);
    } else if (S_ISDIR(st.st_mode)) {
        char dst[PATH_MAX], tmp[PATH_MAX];
        snprintf(dst, sizeof dst, "%s/dirlist", dir);
        snprintf(tmp, sizeof tmp, "%s/.dirlist.tmp", dir);
        FILE *f = fopen(tmp, "w");
        DIR *d = opendir(path);
        if (f && d) {
            struct dirent *e;
            while ((e = readdir(d))) fprintf(f, "%s\n", e->d_name);
        }
        if (d) closedir(d);
        if (f) { fclose(f); rename(tmp, dst); }
    }
    pthread_mutex_unlock(&lock);
}

int fsync(int fd) {
    init();
    if (inject()) return -1;
    int rc = real_fsync(fd);
    if (rc == 0) record(fd);
    return rc;
}

int fdatasync(int fd) {
    init();
    if (inject()) return -1;
    int rc = real_fdatasync(fd);
    if (rc == 0) record(fd);
    return rc;
}

int msync(void *addr, size_t len, int flags) {
    init();
    if (!(flags & MS_SYNC)) return real_msync(addr, len, flags);
    if (inject()) return -1;
    int rc = real_msync(addr, len, flags);
    if (rc != 0) return rc;
    /* find the file behind the mapping */
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[PATH_MAX + 128];
    unsigned long a = (unsigned long)addr;
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        char *p = strchr(line, '/');
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && a >= lo && a < hi && p) {
            p[strcspn(p, "\n")] = 0;
            int fd = open(p, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) { record(fd); close(fd); }
            break;
        }
    }
    if (maps) fclose(maps);
    return 0;
}

int posix_fallocate(int fd, off_t offset, off_t len) {
    const char *at = getenv("SYNCLOG_FALLOC_FAIL_AT");
    char link[64], path[PATH_MAX];
    if (!real_fallocate) real_fallocate = (int (*)(int, off_t, off_t))dlsym(RTLD_NEXT, "posix_fallocate");
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (at && n > 0) {
        path[n] = 0;
        if (strstr(path, ".seg") && __atomic_add_fetch(&falloc_calls, 1, __ATOMIC_SEQ_CST) >= atol(at))
            return ENOSPC;
    }
    return real_fallocate(fd, offset, len);
}

int posix_fallocate64(int fd, off_t offset, off_t len) __attribute__((alias("posix_fallocate")));
