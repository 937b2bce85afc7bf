/* The pretoucher: a native thread that takes the page faults off the writer.

   The first store into each page of a fresh segment mapping faults (a page-cache page is found or
   made and ext4 marks it for writing): about 0.9 us per 4 KiB page on the project's VM, 30 ns of
   every 100-byte record. This thread runs ahead of the writer and asks the kernel to do that work
   for the next `window` bytes with madvise(MADV_POPULATE_WRITE) (Linux 5.14), which maps the
   pages writable without changing a byte of them, so the writer's stores find them ready. The
   pages it touches beyond the end are zeros (allocated ahead of the writer, ext/prealloc.pxi),
   which the format reads as "no frame here", and they stay zeros until the writer fills them.
   It never touches a page beyond what is allocated: its target's size is the allocated part,
   moved on by tl_toucher_extend when the writer allocates another step (a page of the mapping
   past the end of the file would fail, or SIGBUS a store).

   Everything here is a hint: the writer never waits for this thread except to change its target
   (mu is held while a chunk is populated, so a mapping is never let go of mid-call), and the thread
   reads the writer's position without synchronising (a stale value only makes it populate a
   little early or late). The writer asks for pages only where it stores through the mapping
   (single appends, small batches): runs written with pwrite take no faults here. Populated pages are dirty, so a sync writes them; the writer turns the
   thread off when syncs are frequent (see LogCore._pretouch).

   The thread is woken only for a writer fast enough to gain from it: one that wrote the last
   window / 2 bytes in less than `slow_ns`. A slower writer's own faults cost it little (at
   64 MB/s, about 1.4 % of its time), while waking a third thread for a burst of populating on
   a machine whose CPUs the writer and its followers keep busy preempts one of them: a
   cross-process follower of one 100-byte append every 20 us saw its p99 go from ~30 to
   100-400 us. */
#ifndef TIDELOG_TOUCHER_H
#define TIDELOG_TOUCHER_H
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "tl_sys.h"
#include "tl_flusher.h"          /* tl_fork_gen */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;          /* held while populating; a target change takes it */
    int fork_gen;                /* tl_fork_gen when started: another value means a fork child */
    int stop;                    /* atomic */
    uint32_t seq;                /* futex word: bumped to wake the thread */
    size_t want;                 /* atomic: populate up to here (the writer moves it on) */
    const size_t *wpos;          /* the writer's position in the target: read as a hint */
    char *base;                  /* under mu: the mapping to populate, NULL: none */
    size_t size;                 /* under mu */
    size_t front;                /* under mu: populated up to here */
    size_t window;               /* the writer asks for this many bytes ahead of it */
    size_t chunk;                /* bytes per madvise call */
    size_t page;                 /* the page size: madvise ranges start at page boundaries */
    int64_t slow_ns;             /* the writer: wake the thread only if window / 2 took less */
    int64_t kicked_at;           /* the writer: monotonic ns it last looked at its rate */
    size_t asked;                /* the writer: it looks again at this position */
    int64_t populated;           /* atomic: bytes populated (statistics, tests) */
    int err;                     /* atomic: errno of the last failed madvise, 0 */
} tl_toucher;

/* The next chunk to populate, or 0 when there is none (under mu). */
static size_t tl_toucher_due(tl_toucher *t) {
    size_t w, lim, n;
    size_t size = __atomic_load_n(&t->size, __ATOMIC_ACQUIRE);   /* tl_toucher_extend grows it */
    if (t->base == NULL || t->front >= size) return 0;
    w = __atomic_load_n(t->wpos, __ATOMIC_RELAXED);
    if (t->front < w) t->front = (w + t->page - 1) / t->page * t->page;  /* behind: skip ahead */
    lim = __atomic_load_n(&t->want, __ATOMIC_SEQ_CST);
    lim = (lim + t->page - 1) / t->page * t->page;           /* whole pages: front stays aligned */
    if (lim > size) lim = size;
    if (t->front >= lim) return 0;
    n = lim - t->front;
    return n < t->chunk ? n : t->chunk;
}

static void *tl_toucher_main(void *arg) {
    tl_toucher *t = (tl_toucher *)arg;
    size_t n;
    uint32_t seq;
    pthread_mutex_lock(&t->mu);
    while (!__atomic_load_n(&t->stop, __ATOMIC_SEQ_CST)) {
        tl_native_pause(1);
        seq = __atomic_load_n(&t->seq, __ATOMIC_SEQ_CST);    /* before looking for work: a
                                                                kick after this wakes the wait */
        /* stop again after seq (as in tl_flusher_main): a stop between the two was lost */
        if (__atomic_load_n(&t->stop, __ATOMIC_SEQ_CST)) break;
        n = tl_toucher_due(t);
        if (n) {
            if (madvise(t->base + t->front, n, MADV_POPULATE_WRITE) != 0) {
                /* EINVAL: the kernel predates it; anything else (a hole that cannot be filled
                   on a full disk, a signal): leave this target to the writer */
                __atomic_store_n(&t->err, errno, __ATOMIC_SEQ_CST);
                t->front = (size_t)-1;
            } else {
                t->front += n;
                __atomic_add_fetch(&t->populated, (int64_t)n, __ATOMIC_RELAXED);
            }
            pthread_mutex_unlock(&t->mu);    /* let a target change in between chunks */
            pthread_mutex_lock(&t->mu);
            continue;
        }
        if (__atomic_load_n(&t->err, __ATOMIC_SEQ_CST) == EINVAL) break;
        pthread_mutex_unlock(&t->mu);
        tl_futex_wait(&t->seq, seq, -1);             /* (stop bumps seq and wakes it) */
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* The writer stored into the mapping up to pos: keep the pages ahead of it coming. Costs a
   load and a compare per call; every window / 2 bytes a clock read, and a wake-up if those
   bytes came faster than slow_ns. (Runs written with pwrite do not call this: they take no
   page faults in this process, and the thread would only compete.) */
static inline void tl_toucher_kick(tl_toucher *t, size_t pos) {
    int64_t now;
    int fast;
    if (pos + t->window / 2 > t->asked) {
        now = tl_mono_ns();
        fast = now - t->kicked_at < t->slow_ns;
        t->kicked_at = now;
        t->asked = pos + t->window;
        if (fast) {
            __atomic_store_n(&t->want, t->asked, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&t->seq, 1, __ATOMIC_SEQ_CST);
            tl_futex_wake(&t->seq);
        }
    }
}

/* A running toucher with no target, or NULL (not Linux, out of memory, no thread: the writer
   does without). */
static tl_toucher *tl_toucher_start(const size_t *wpos, size_t window, size_t chunk,
                                    int64_t min_rate) {
#if defined(__linux__)
    tl_toucher *t = (tl_toucher *)calloc(1, sizeof(tl_toucher));
    long page = sysconf(_SC_PAGESIZE);
    if (!t) return NULL;
    t->page = page > 0 ? (size_t)page : 4096;
    chunk = (chunk + t->page - 1) / t->page * t->page;
    pthread_mutex_init(&t->mu, NULL);
    t->wpos = wpos;
    t->window = window;
    t->chunk = chunk;
    t->slow_ns = min_rate > 0 ? (int64_t)((double)(window / 2) * 1e9 / (double)min_rate) : INT64_MAX;
    t->fork_gen = tl_fork_gen;
    {
        /* it only calls madvise and futex: a small stack (one thread per log that appends) */
        pthread_attr_t attr;
        int rc;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        rc = pthread_create(&t->thread, &attr, tl_toucher_main, t);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            pthread_mutex_destroy(&t->mu);
            free(t);
            return NULL;
        }
    }
    return t;
#else
    (void)wpos; (void)window; (void)chunk; (void)min_rate;
    return NULL;
#endif
}

/* Populate ahead in base[0:size) from now on (NULL: stop touching the old target). Returns when
   the thread no longer uses the previous target. Only whole pages are touched. */
static void tl_toucher_target(tl_toucher *t, char *base, size_t size) {
    if (t->fork_gen != tl_fork_gen) return;      /* a fork child's copy: no thread */
    pthread_mutex_lock(&t->mu);
    t->base = base;
    __atomic_store_n(&t->size, size / t->page * t->page, __ATOMIC_RELEASE);
    t->front = 0;
    __atomic_store_n(&t->want, 0, __ATOMIC_SEQ_CST);   /* until the writer's next kick */
    t->asked = 0;
    pthread_mutex_unlock(&t->mu);
}

/* The target base[0:size) grew (its file was allocated further): populate up to the new size.
   No lock: the thread reads the size atomically, and a larger one is only ever safe to use
   (the file is allocated that far before this is called). A call for another base is ignored. */
static void tl_toucher_extend(tl_toucher *t, char *base, size_t size) {
    if (t->fork_gen != tl_fork_gen) return;
    if (__atomic_load_n(&t->base, __ATOMIC_ACQUIRE) != base) return;
    __atomic_store_n(&t->size, size / t->page * t->page, __ATOMIC_RELEASE);
}

/* Stop the thread (after the chunk in progress) and free it. In a fork child only the memory. */
static void tl_toucher_free(tl_toucher *t) {
    if (!t) return;
    if (t->fork_gen == tl_fork_gen) {
        __atomic_store_n(&t->stop, 1, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&t->seq, 1, __ATOMIC_SEQ_CST);
        tl_futex_wake(&t->seq);
        pthread_join(t->thread, NULL);
        pthread_mutex_destroy(&t->mu);
    }
    free(t);
}

static inline int64_t tl_toucher_populated(tl_toucher *t) {
    return __atomic_load_n(&t->populated, __ATOMIC_RELAXED);
}
static inline int tl_toucher_err(tl_toucher *t) { return __atomic_load_n(&t->err, __ATOMIC_SEQ_CST); }
#endif
