/* The writer's durability thread: a native thread that never needs the GIL. Every writer has
   one (ext/durability.pxi, start_flusher); it does two jobs.

   1. "batch" mode only (`sync_data`): every interval it makes the records published so far
      durable with one fdatasync of the active segment, then advances the writer's durable
      offset and publishes it in the control page (waking followers of the durable offset). It
      also starts a sync before the interval is up when the writer is `soft` bytes ahead of what
      is durable (the writer wakes it; see pressure() in durability.pxi, which makes appenders wait at
      twice that). It handles only the steady state, where the active segment is the only file
      with unsynced data: after a roll (two files and a directory entry to sync) the writer sets
      `fd` to -1 and its Python code syncs instead, then hands `fd` back.

   2. Every mode: it persists the durable checkpoint. A sync (its own or the writer's Python
      one) only stores the new durable offset in the control page; this thread msyncs the page
      within `persist_ns` of the first such change and at most once per `persist_ns`, also when
      the writer has gone quiet. Recovery treats damage below the persisted checkpoint as
      corruption and above it as a torn tail, so it must never get ahead of synced data: only
      a completed sync stores it.

   The writer's Python sync path and this thread exclude each other through `owner` (0 free,
   1 Python leader, 2 this thread); only the owner writes the durable offset. A failed sync or
   msync is never retried: `err` keeps its errno, the thread stops, and the writer reports
   LogFailedError from then on (fail-stop). The thread sleeps on the futex word `kick`; it
   sets `idle` first, so a writer wakes it with a syscall only when it sleeps. */
#ifndef TIDELOG_FLUSHER_H
#define TIDELOG_FLUSHER_H
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "tl_sys.h"

#define TL_OWNER_FREE 0
#define TL_OWNER_PYTHON 1
#define TL_OWNER_NATIVE 2

/* Bumped in the child by fork(): a flusher started before belongs to the parent. */
static volatile int tl_fork_gen = 0;
static void tl_on_fork_child(void) { tl_fork_gen++; }
static inline void tl_flusher_init_fork_handler(void) {
    static int done = 0;
    if (!done) {
        pthread_atfork(NULL, NULL, tl_on_fork_child);
        done = 1;
    }
}

typedef struct {
    pthread_t thread;
    int started;
    int fork_gen;                /* tl_fork_gen when started: another value means a fork child */
    int stop;                    /* atomic */
    uint32_t kick;               /* futex word: bumped to wake the thread */
    int idle;                    /* atomic: the thread is about to sleep on kick */
    int sync_data;               /* "batch" mode: job 1 */
    int owner;                   /* atomic: who is syncing */
    int fd;                      /* atomic: the only file to sync, or -1 (Python syncs) */
    int err;                     /* atomic: errno of the failed sync, 0 */
    int unsafe_no_sync;          /* tests' negative control: acknowledge without syncing */
    int64_t *durable;            /* the writer's durable offset */
    const int64_t *written;      /* the writer's count of frame bytes written (monotonic) */
    int64_t *durable_bytes;      /* ... of which durable: the count when the last sync began */
    int64_t soft;                /* a sync starts early this many bytes behind (<= 0: never) */
    int *wstate;                 /* the writer's state: set to 3 (failed) when a sync fails */
    char *ctl;                   /* control page */
    int end_field, durable_field, wake_durable;   /* control page layout */
    size_t ctl_size;
    int64_t interval_ns;
    int64_t persist_ns;          /* the checkpoint is msynced within / at most once per this */
    int pending;                 /* atomic: the checkpoint moved since the last msync */
    int64_t persisted_at;        /* monotonic ns of the last msync (this thread) */
    int64_t last_sync_at;        /* monotonic ns a sync last started (statistics, tests) */
    int64_t syncs;               /* successful syncs */
    int64_t persists;            /* checkpoint msyncs (statistics, tests) */
} tl_flusher;

static inline int tl_owner_try(tl_flusher *f, int who) {
    int expected = TL_OWNER_FREE;
    return __atomic_compare_exchange_n(&f->owner, &expected, who, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

static inline void tl_owner_release(tl_flusher *f) {
    __atomic_store_n(&f->owner, TL_OWNER_FREE, __ATOMIC_SEQ_CST);
}

static inline void tl_flusher_wake_durable(tl_flusher *f) {
    char *w = f->ctl + f->wake_durable;
    tl_xchg_u32(w + 4, 0);
    tl_add_u32(w, 1);
    tl_futex_wake(w);
}

/* Wake the thread (a syscall only when it sleeps). */
static inline void tl_flusher_kick(tl_flusher *f) {
    tl_add_u32(&f->kick, 1);
    if (__atomic_load_n(&f->idle, __ATOMIC_SEQ_CST)) tl_futex_wake(&f->kick);
}

/* A sync stored a new durable offset in the control page: have it persisted. */
static inline void tl_flusher_note_durable(tl_flusher *f) {
    if (!__atomic_exchange_n(&f->pending, 1, __ATOMIC_SEQ_CST)) tl_flusher_kick(f);
}

static void tl_flusher_failed(tl_flusher *f, int err) {
    __atomic_store_n(&f->err, err ? err : EIO, __ATOMIC_SEQ_CST);
    __atomic_store_n(f->wstate, 3, __ATOMIC_SEQ_CST);     /* appends stop at once */
    tl_flusher_wake_durable(f);                            /* waiters see the failure */
}

/* One round of job 1: 1 synced, 0 nothing to do or not ours now, -1 failed (err set). */
static int tl_flusher_round(tl_flusher *f) {
    int fd, rc;
    int64_t target, bytes;
    if (__atomic_load_n(&f->err, __ATOMIC_SEQ_CST)) return -1;
    fd = __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST);
    if (fd < 0) return 0;
    if (tl_load_i64_acquire(f->ctl + f->end_field) <= __atomic_load_n(f->durable, __ATOMIC_SEQ_CST))
        return 0;
    if (!tl_owner_try(f, TL_OWNER_NATIVE)) return 0;
    /* the target is read after the file; a roll stores fd = -1 before any record goes into the
       new segment, so a target covering such a record is caught by the second look at fd.
       The byte count is read before the target: it never counts bytes the target misses. */
    fd = __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST);
    bytes = __atomic_load_n(f->written, __ATOMIC_SEQ_CST);
    target = tl_load_i64_seqcst(f->ctl + f->end_field);
    if (fd < 0 || __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST) != fd ||
            target <= __atomic_load_n(f->durable, __ATOMIC_SEQ_CST)) {
        tl_owner_release(f);
        return 0;
    }
    f->last_sync_at = tl_mono_ns();
    rc = f->unsafe_no_sync ? 0 : tl_datasync(fd);
    if (rc != 0) {
        tl_flusher_failed(f, errno);
        tl_owner_release(f);
        return -1;
    }
    if (bytes > __atomic_load_n(f->durable_bytes, __ATOMIC_SEQ_CST))
        __atomic_store_n(f->durable_bytes, bytes, __ATOMIC_SEQ_CST);
    __atomic_store_n(f->durable, target, __ATOMIC_SEQ_CST);
    tl_store_i64_seqcst(f->ctl + f->durable_field, target);
    f->syncs++;
    tl_owner_release(f);
    if (tl_load_u32_seqcst(f->ctl + f->wake_durable + 4)) tl_flusher_wake_durable(f);
    __atomic_store_n(&f->pending, 1, __ATOMIC_SEQ_CST);
    return 1;
}

/* Job 2: msync the control page (whatever durable offset it holds came after a sync).
   0, or -1 (err set). */
static int tl_flusher_persist(tl_flusher *f, int64_t now) {
    __atomic_store_n(&f->pending, 0, __ATOMIC_SEQ_CST);   /* a later change sets it again */
    if (msync(f->ctl, f->ctl_size, MS_SYNC) != 0) {
        tl_flusher_failed(f, errno);
        return -1;
    }
    f->persisted_at = now;
    f->persists++;
    return 0;
}

static inline int64_t tl_flusher_behind(tl_flusher *f) {
    return __atomic_load_n(f->written, __ATOMIC_SEQ_CST) -
           __atomic_load_n(f->durable_bytes, __ATOMIC_SEQ_CST);
}

static void *tl_flusher_main(void *arg) {
    tl_flusher *f = (tl_flusher *)arg;
    int64_t now, due = tl_mono_ns() + f->interval_ns, wait, w;
    uint32_t seq;
    int early = 1;              /* may start a sync early (not after one found nothing to do) */
    int r;
    while (!__atomic_load_n(&f->stop, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&f->idle, 1, __ATOMIC_SEQ_CST);
        tl_native_pause(0);
        seq = __atomic_load_n(&f->kick, __ATOMIC_SEQ_CST);    /* before looking for work: a
                                                                 kick after this ends the wait */
        /* stop is looked at again after seq: tl_flusher_free stores stop before it bumps kick,
           so a bump this seq already holds comes with a stop seen here; a later one ends the
           wait. (Looked at only before seq, a stop landing in between slept forever.) */
        if (__atomic_load_n(&f->stop, __ATOMIC_SEQ_CST)) break;
        if (__atomic_load_n(&f->err, __ATOMIC_SEQ_CST)) break;
        now = tl_mono_ns();
        if (__atomic_load_n(&f->pending, __ATOMIC_SEQ_CST) && now - f->persisted_at >= f->persist_ns) {
            __atomic_store_n(&f->idle, 0, __ATOMIC_SEQ_CST);
            if (tl_flusher_persist(f, now) < 0) break;
            continue;
        }
        if (f->sync_data && (now >= due ||
                             (early && f->soft > 0 && tl_flusher_behind(f) >= f->soft))) {
            __atomic_store_n(&f->idle, 0, __ATOMIC_SEQ_CST);
            due = now + f->interval_ns;
            r = tl_flusher_round(f);
            if (r < 0) break;
            early = r > 0;
            continue;
        }
        wait = f->sync_data ? due - now : -1;
        if (__atomic_load_n(&f->pending, __ATOMIC_SEQ_CST)) {
            w = f->persisted_at + f->persist_ns - now;
            if (wait < 0 || w < wait) wait = w;
        }
        tl_futex_wait(&f->kick, seq, wait);
        __atomic_store_n(&f->idle, 0, __ATOMIC_SEQ_CST);
        early = 1;
    }
    __atomic_store_n(&f->idle, 0, __ATOMIC_SEQ_CST);
    return NULL;
}

/* A flusher, not yet running (fd = -1). NULL when out of memory. */
static tl_flusher *tl_flusher_new(int64_t *durable, const int64_t *written, int64_t *durable_bytes,
                                  int *wstate, char *ctl, size_t ctl_size, int end_field,
                                  int durable_field, int wake_durable, int sync_data,
                                  int64_t interval_ns, int64_t soft, int64_t persist_ns) {
    tl_flusher *f = (tl_flusher *)calloc(1, sizeof(tl_flusher));
    if (!f) return NULL;
    f->fd = -1;
    f->durable = durable;
    f->written = written;
    f->durable_bytes = durable_bytes;
    f->wstate = wstate;
    f->ctl = ctl;
    f->ctl_size = ctl_size;
    f->end_field = end_field;
    f->durable_field = durable_field;
    f->wake_durable = wake_durable;
    f->sync_data = sync_data;
    f->interval_ns = interval_ns;
    f->soft = soft;
    f->persist_ns = persist_ns;
    f->persisted_at = tl_mono_ns();      /* the writer's open just persisted the page */
    return f;
}

/* 0, or an errno value. */
static int tl_flusher_start(tl_flusher *f) {
    int rc = pthread_create(&f->thread, NULL, tl_flusher_main, f);
    if (rc == 0) {
        f->started = 1;
        f->fork_gen = tl_fork_gen;
    }
    return rc;
}

/* Stop the thread (waiting for a sync in progress; a pending checkpoint is left to the caller:
   close() persists the page itself, a simulated crash must not) and free it. In a child made by
   fork() the thread does not exist: only the memory goes. */
static void tl_flusher_free(tl_flusher *f) {
    if (!f) return;
    if (f->started && f->fork_gen == tl_fork_gen) {
        __atomic_store_n(&f->stop, 1, __ATOMIC_SEQ_CST);
        tl_add_u32(&f->kick, 1);
        tl_futex_wake(&f->kick);
        pthread_join(f->thread, NULL);
    }
    free(f);
}

static inline void tl_flusher_set_fd(tl_flusher *f, int fd) {
    __atomic_store_n(&f->fd, f->sync_data ? fd : -1, __ATOMIC_SEQ_CST);
}
/* The thread runs in this process (not a fork child's copy) and has a file to sync. */
static inline int tl_flusher_active(tl_flusher *f) {
    return f->fork_gen == tl_fork_gen && __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST) >= 0;
}
static inline int tl_flusher_forked(tl_flusher *f) { return f->started && f->fork_gen != tl_fork_gen; }
static inline int tl_flusher_fd(tl_flusher *f) { return __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST); }
static inline int tl_flusher_err(tl_flusher *f) { return __atomic_load_n(&f->err, __ATOMIC_SEQ_CST); }
static inline int tl_flusher_owner(tl_flusher *f) { return __atomic_load_n(&f->owner, __ATOMIC_SEQ_CST); }
#endif
