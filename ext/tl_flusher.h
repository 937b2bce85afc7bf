/* The "batch" durability flusher: a native thread that never needs the GIL.

   Every interval it makes the records published so far durable with one fdatasync of the active
   segment, then advances the writer's durable offset and publishes it in the control page (waking
   followers of the durable offset). It handles only the steady state, where the active segment is
   the only file with unsynced data: after a roll (two files and a directory entry to sync) the
   writer sets `fd` to -1 and its Python code syncs instead, then hands `fd` back.

   The writer's Python sync path and this thread exclude each other through `owner` (0 free,
   1 Python leader, 2 this thread); only the owner writes the durable offset. A failed sync is
   never retried: `err` keeps its errno, the thread stops, and the writer reports LogFailedError
   from then on (fail-stop). */
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
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started;
    int fork_gen;                /* tl_fork_gen when started: another value means a fork child */
    int stop;                    /* under mu */
    int owner;                   /* atomic: who is syncing */
    int fd;                      /* atomic: the only file to sync, or -1 (Python syncs) */
    int err;                     /* atomic: errno of the failed sync, 0 */
    int unsafe_no_sync;          /* tests' negative control: acknowledge without syncing */
    int64_t *durable;            /* the writer's durable offset */
    int *wstate;                 /* the writer's state: set to 3 (failed) when a sync fails */
    char *ctl;                   /* control page */
    int end_field, durable_field, wake_durable;   /* control page layout */
    size_t ctl_size;
    int64_t interval_ns;
    int64_t persist_ns;          /* the control page's checkpoint is msynced at most this often */
    int64_t persisted_at;        /* monotonic ns */
    int64_t last_sync_at;        /* monotonic ns a sync last started (statistics, tests) */
    int64_t syncs;               /* successful syncs */
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

/* One round: 1 synced, 0 nothing to do or not ours now, -1 failed (err set). */
static int tl_flusher_round(tl_flusher *f) {
    int fd, rc;
    int64_t target, now;
    if (__atomic_load_n(&f->err, __ATOMIC_SEQ_CST)) return -1;
    fd = __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST);
    if (fd < 0) return 0;
    if (tl_load_i64_acquire(f->ctl + f->end_field) <= __atomic_load_n(f->durable, __ATOMIC_SEQ_CST))
        return 0;
    if (!tl_owner_try(f, TL_OWNER_NATIVE)) return 0;
    /* the target is read after the file; a roll stores fd = -1 before any record goes into the
       new segment, so a target covering such a record is caught by the second look at fd */
    fd = __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST);
    target = tl_load_i64_seqcst(f->ctl + f->end_field);
    if (fd < 0 || __atomic_load_n(&f->fd, __ATOMIC_SEQ_CST) != fd ||
            target <= __atomic_load_n(f->durable, __ATOMIC_SEQ_CST)) {
        tl_owner_release(f);
        return 0;
    }
    now = tl_mono_ns();
    f->last_sync_at = now;
    rc = f->unsafe_no_sync ? 0 : tl_datasync(fd);
    if (rc == 0 && now - f->persisted_at >= f->persist_ns) {
        /* the durable checkpoint on disk lags the real one by at most persist_ns */
        tl_store_i64_release(f->ctl + f->durable_field, target);
        rc = msync(f->ctl, f->ctl_size, MS_SYNC);
        if (rc == 0) f->persisted_at = now;
    }
    if (rc != 0) {
        __atomic_store_n(&f->err, errno ? errno : EIO, __ATOMIC_SEQ_CST);
        __atomic_store_n(f->wstate, 3, __ATOMIC_SEQ_CST);     /* appends stop at once */
        tl_owner_release(f);
        tl_flusher_wake_durable(f);          /* waiters see the failure */
        return -1;
    }
    __atomic_store_n(f->durable, target, __ATOMIC_SEQ_CST);
    tl_store_i64_seqcst(f->ctl + f->durable_field, target);
    f->syncs++;
    tl_owner_release(f);
    if (tl_load_u32_seqcst(f->ctl + f->wake_durable + 4)) tl_flusher_wake_durable(f);
    return 1;
}

static void *tl_flusher_main(void *arg) {
    tl_flusher *f = (tl_flusher *)arg;
    struct timespec ts;
    int64_t due;
    pthread_mutex_lock(&f->mu);
    while (!f->stop) {
        clock_gettime(CLOCK_REALTIME, &ts);
        due = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + f->interval_ns;
        ts.tv_sec = (time_t)(due / 1000000000);
        ts.tv_nsec = (long)(due % 1000000000);
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
        if (f->stop) break;
        pthread_mutex_unlock(&f->mu);
        if (tl_flusher_round(f) < 0) {
            pthread_mutex_lock(&f->mu);
            break;
        }
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* A flusher, not yet running (fd = -1). NULL when out of memory. */
static tl_flusher *tl_flusher_new(int64_t *durable, int *wstate, char *ctl, size_t ctl_size, int end_field,
                                  int durable_field, int wake_durable, int64_t interval_ns,
                                  int64_t persist_ns) {
    tl_flusher *f = (tl_flusher *)calloc(1, sizeof(tl_flusher));
    if (!f) return NULL;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->fd = -1;
    f->durable = durable;
    f->wstate = wstate;
    f->ctl = ctl;
    f->ctl_size = ctl_size;
    f->end_field = end_field;
    f->durable_field = durable_field;
    f->wake_durable = wake_durable;
    f->interval_ns = interval_ns;
    f->persist_ns = persist_ns;
    f->persisted_at = tl_mono_ns();
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

/* Stop the thread (waiting for a sync in progress) and free it. In a child made by fork() the
   thread does not exist (and the mutex may be held by a thread that does not either): only the
   memory goes. */
static void tl_flusher_free(tl_flusher *f) {
    if (!f) return;
    if (f->started && f->fork_gen != tl_fork_gen) {
        free(f);
        return;
    }
    if (f->started) {
        pthread_mutex_lock(&f->mu);
        f->stop = 1;
        pthread_cond_signal(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->thread, NULL);
    }
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

static inline void tl_flusher_set_fd(tl_flusher *f, int fd) {
    __atomic_store_n(&f->fd, fd, __ATOMIC_SEQ_CST);
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
