/* Allocation ahead in steps: a segment (and its .idx/.tix) is allocated on disk only a step or
   so ahead of the writer (ext/prealloc.pxi decides how far), never written through a mapping
   beyond what is allocated. Growing a file is one fallocate of the new range: on a full disk it
   fails with ENOSPC before any byte is written, never a SIGBUS on a later store. */
#ifndef TIDELOG_PREALLOC_H
#define TIDELOG_PREALLOC_H
#include "tl_sys.h"
#include <sys/stat.h>

/* Allocate [from, to) of fd, the file size becoming at least `to`. 0, or an errno value. A
   failure may leave part of the range allocated (and the size grown over it): zeros, harmless. */
static inline int tl_grow_file(int fd, int64_t from, int64_t to) {
    if (to <= from) return 0;
#if defined(__APPLE__)
    {
        struct stat st;
        fstore_t fs = {F_ALLOCATECONTIG, F_PEOFPOSMODE, 0, 0, 0};
        if (fstat(fd, &st) != 0) return errno;
        if (st.st_size >= to) return 0;
        fs.fst_length = to - st.st_size;
        if (fcntl(fd, F_PREALLOCATE, &fs) == -1) {
            fs.fst_flags = F_ALLOCATEALL;
            if (fcntl(fd, F_PREALLOCATE, &fs) == -1) return errno;
        }
        if (ftruncate(fd, to) == -1) return errno;
        return 0;
    }
#else
    {
        int rc;
        do { rc = posix_fallocate(fd, from, to - from); } while (rc == EINTR);
        return rc;
    }
#endif
}

/* tl_grow_file on the file at path (opened and closed here). 0, or an errno value. */
static inline int tl_grow_path(const char *path, int64_t from, int64_t to) {
    int fd, rc;
    if (to <= from) return 0;
    do { fd = open(path, O_RDWR | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    if (fd < 0) return errno;
    rc = tl_grow_file(fd, from, to);
    close(fd);
    return rc;
}

/* Where the allocated prefix of fd ends: the first hole at or after 0 (SEEK_HOLE), at most
   size; size where holes cannot be found (then everything counts as allocated). */
static inline int64_t tl_allocated_end(int fd, int64_t size) {
#if defined(SEEK_HOLE)
    off_t h = lseek(fd, 0, SEEK_HOLE);
    if (h >= 0 && (int64_t)h < size) return (int64_t)h;
#else
    (void)fd;
#endif
    return size;
}

/* Clear every byte of fd in [from, to) that lies in an allocated extent (found with SEEK_DATA:
   past the allocated prefix, a punched file or one whose middle blocks never reached the disk
   before a power loss may still hold old frames after a hole): zeroed in place, its blocks
   kept (FALLOC_FL_ZERO_RANGE, else pwrite of zeros; never through a mapping, where a hole may
   fault, and never punched: a reader's view of such a page must not become a hole). The holes
   are left alone (they read as zeros and stay unallocated). 0, or an errno value. */
static inline int tl_clear_extents(int fd, int64_t from, int64_t to) {
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
    static const char zeros[65536];
    int64_t d, h, a;
    ssize_t w;
    while (from < to) {
        d = (int64_t)lseek(fd, (off_t)from, SEEK_DATA);
        if (d < 0) return errno == ENXIO ? 0 : errno;          /* ENXIO: no data past from */
        if (d >= to) return 0;
        h = (int64_t)lseek(fd, (off_t)d, SEEK_HOLE);
        if (h < 0) return errno;
        if (h > to) h = to;
        if (tl_zero_range(fd, d, h - d) == 0) {
            from = h;
            continue;
        }
        for (a = d; a < h; a += w) {
            w = pwrite(fd, zeros, (size_t)(h - a < 65536 ? h - a : 65536), (off_t)a);
            if (w < 0) {
                if (errno == EINTR) { w = 0; continue; }
                return errno;
            }
        }
        from = h;
    }
#else
    (void)fd; (void)from; (void)to;
#endif
    return 0;
}

/* The allocated run of fd at or after `from` (below size): 1 with [*start, *end) set, or 0 when
   none is left. Where holes cannot be found, [from, size). A reader that must look at every
   byte of a file (salvage) reads only these: through a mapping, a hole faults in a page (on
   tmpfs it takes memory, and on a full one it is a SIGBUS). */
static inline int tl_next_data(int fd, int64_t from, int64_t size, int64_t *start, int64_t *end) {
    if (from >= size) return 0;
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
    {
        off_t d = lseek(fd, (off_t)from, SEEK_DATA), h;
        if (d < 0 && errno == ENXIO) return 0;
        if (d >= 0) {
            if ((int64_t)d >= size) return 0;
            h = lseek(fd, d, SEEK_HOLE);
            *start = (int64_t)d;
            *end = (h < 0 || (int64_t)h > size) ? size : (int64_t)h;
            return 1;
        }
    }
#endif
    *start = from;
    *end = size;
    return 1;
}

/* Whether files are allocated in steps here: on macOS F_PREALLOCATE only extends a file, so a
   segment is allocated whole when created (as before). */
#if defined(__APPLE__)
#define TL_PREALLOC_STEPS 0
#else
#define TL_PREALLOC_STEPS 1
#endif

/* The size of the file at path (its inode in *ino), or -1 (errno set). Takes no lock and
   allocates nothing: callable with the GIL held where no other thread may run. */
static inline int64_t tl_file_size(const char *path, uint64_t *ino) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    if (ino) *ino = (uint64_t)st.st_ino;
    return (int64_t)st.st_size;
}
#endif
