/*
 * lmdb.c — the embedded, durable store ("lmdb:DIR"), the default of esrc.
 *
 * Layout (named databases in one LMDB environment):
 *
 *   log      u64be position → event record        append-only (MDB_APPEND)
 *   streams  stream key     → head, last hash, tail of recent positions
 *   index    stream key | u64be first seq → CHUNK positions
 *   ids      event id       → u64be position      (idempotent retries)
 *   snaps    u16be len | snapshot key | u64be seq → state, time, value
 *   meta     "format" → "eventsrc-lmdb-1"; "last_time" → i64be
 *
 * Why the log is the primary: with many interleaved streams, keying events
 * by (stream, seq) dirties one B-tree page per stream per commit (LMDB's
 * write amplification, ≈36× on this machine's baseline).  Here a commit
 * writes the log sequentially; each stream's row in the small `streams`
 * table takes the new positions in its tail, and only every CHUNK events
 * per stream does one index entry get written.  BENCHMARKS.md has the
 * figures.
 *
 * Concurrency: LMDB serialises writers across processes.  Within a process,
 * appends from many threads are grouped: one thread (the leader) commits
 * the queued appends in one transaction — one fsync for all of them — each
 * in a nested transaction so that a failing append does not fail the rest.
 * Readers copy events out of short read transactions, so no transaction is
 * ever held across calls and the map can grow at any moment.
 *
 * LMDB forbids opening one environment twice in a process, so stores
 * opened on the same directory share one environment (reference counted).
 *
 * Waiting for new events (es_log_wait, and so live subscriptions): every
 * commit of events bumps a futex word in DIR/eventsrc-wake, mapped shared
 * by every process that opens the store, and waiters sleep on it — a writer
 * in another process wakes them at once.  lmdb_wake.c says why this
 * mechanism and where it stops (same machine; a writer that does not bump
 * the word is seen by a re-check every WAKE_RECHECK_MS).
 */
#define _GNU_SOURCE
#include "../internal.h"
#include "lmdb_record.h"
#include "lmdb_wake.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 32
#define FORMAT "eventsrc-lmdb-1"
#define DEFAULT_MAP ((size_t)1 << 30) /* address space only; the file grows as written */
#define READ_BATCH_EVENTS 1024
#define GROUP_MAX 512
#define MAX_READERS 256
#define STALE_CHECK_EVERY 256 /* group commits */
#define LINGER_NS 150000L     /* about one sync of this machine's disk */
#define FILL_NS 50000L
#define WAKE_RECHECK_MS 100 /* a waiter re-reads the log at least this often */
#define WAKE_POLL_MS 5      /* ... and this often when it has no wake word */

/* Our codes are a band of their own; LMDB's are below it, errno values above 0. */
#define IS_ES(rc) ((rc) == 0 || ES_IS_ERRNO(rc))

typedef struct lm_req lm_req;

typedef struct lm_env {
    struct lm_env *next;
    dev_t dev;
    ino_t ino;
    int refs;
    MDB_env *env;
    MDB_dbi log, streams, index, ids, snaps, meta;
    MDB_dbi kv;    /* the library's own records (subscriptions); see lm_kv_* */
    bool has_kv;   /* false: an older store opened read-only, without that table */
    bool readonly; /* the environment itself: its files are not writable */
    bool nolock;   /* opened without the lock file (MDB_NOLOCK) */
    size_t mapsize;
    size_t psize;
    pthread_rwlock_t resize; /* shared: any transaction; exclusive: resizing the map */
    pthread_mutex_t qlock;   /* group commit queue */
    pthread_cond_t qcond;
    lm_req *qhead, *qtail;
    bool leader;
    bool nosync;
    /* Durability pipeline (see lm_append): commits are numbered; a commit is
     * durable once a data sync that started after it has finished. */
    uint64_t committed_gen, synced_gen;
    bool syncing;
    size_t inflight; /* threads inside lm_append */
    size_t qlen, last_group;
    unsigned commits_since_check; /* of stale reader slots; by the leader only */
    pthread_cond_t lcond;         /* a leader waiting for its group to fill */
    uint32_t *wake;               /* DIR/eventsrc-wake, shared; NULL: waiters poll */
    char path[];
} lm_env;

typedef struct lm_store {
    lm_env *e;
    es_store *st;
    bool readonly; /* this handle (ES_OPEN_READONLY); the environment may be shared */
} lm_store;

struct lm_req {
    lm_req *next;
    lm_store *s;
    const es__append_req *reqs; /* one client call: all or nothing */
    size_t n;
    es_append_result *outs;
    int rc;
    bool done;
    uint64_t gen; /* the commit that holds it (0: nothing to make durable) */
    char err[300];
};

static pthread_mutex_t envs_lock = PTHREAD_MUTEX_INITIALIZER;
static lm_env *envs;

/* ---- errors ---- */

static int lm_err(int rc, const char *what)
{
    switch (rc) {
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return es__err(ES_EFULL, "%s: the disk or the store is full (%s)", what, mdb_strerror(rc));
    case ENOMEM:
        return es__err(ES_ENOMEM, "%s: out of memory", what);
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return es__err(ES_ECORRUPT, "%s: %s", what, mdb_strerror(rc));
    case MDB_READERS_FULL:
        return es__err(ES_EUNAVAILABLE, "%s: too many readers (%s)", what, mdb_strerror(rc));
    default:
        return es__err(ES_EIO, "%s: %s", what, mdb_strerror(rc));
    }
}

/* lm_err for a failure that may come from writing the file: LMDB reports
 * a short write (which a full disk gives) as EIO, so an EIO when the file
 * system has next to no room left is a full disk. */
static int lm_err_at(const lm_env *e, int rc, const char *what)
{
    struct statvfs fs;
    if (rc == EIO && statvfs(e->path, &fs) == 0 &&
        (uint64_t)fs.f_bavail * fs.f_frsize < ((uint64_t)1 << 20))
        rc = ENOSPC;
    return lm_err(rc, what);
}

/* ---- map size ---- */

/* Adopt a size another process set (size 0), or grow to `size`.  Needs the
 * resize lock exclusively: no transaction of this process may be open, and
 * open cursors hold one for up to a batch.  wait_ms bounds the wait (0: do
 * not wait), so a thread that holds a cursor while it appends gets an
 * error instead of a deadlock. */
static int set_mapsize(lm_env *e, size_t size, int wait_ms)
{
    int rc;
    if (wait_ms == 0) {
        if (pthread_rwlock_trywrlock(&e->resize) != 0)
            return ES_EUNAVAILABLE; /* quietly: the caller may go on */
    } else {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (pthread_rwlock_timedwrlock(&e->resize, &until) != 0)
            return es__err(size ? ES_EFULL : ES_EUNAVAILABLE,
                           "the store's map must %s, which needs every cursor of this process "
                           "freed (or read to its end) first",
                           size ? "grow" : "be remapped after another process grew it");
    }
    if (size == 0 || size > e->mapsize) {
        rc = mdb_env_set_mapsize(e->env, size);
        if (rc == 0) {
            MDB_envinfo info;
            mdb_env_info(e->env, &info);
            e->mapsize = info.me_mapsize;
        }
    } else {
        rc = 0;
    }
    pthread_rwlock_unlock(&e->resize);
    return rc ? lm_err(rc, "growing the map") : 0;
}

#define GROW_WAIT_MS 2000

/* Grow before a write when the used pages come near the end of the map;
 * only when no cursor of this process is in the way (it is tried again on
 * the next write, and a full map grows waiting). */
static int maybe_grow(lm_env *e, size_t bytes_to_write)
{
    MDB_envinfo info;
    mdb_env_info(e->env, &info);
    size_t used = (info.me_last_pgno + 1) * e->psize;
    size_t need = bytes_to_write * 4 + ((size_t)1 << 20);
    if (used + need <= e->mapsize - e->mapsize / 8)
        return 0;
    size_t size = e->mapsize * 2;
    while (size < used + need * 2)
        size *= 2;
    int rc = set_mapsize(e, size, 0);
    return rc == ES_EUNAVAILABLE ? 0 : rc;
}

/* Begin a read transaction with the resize lock held shared. */
static void clear_stale_readers(lm_env *e);

static int rtxn_begin(lm_env *e, MDB_txn **txn)
{
    bool checked = false;
    for (;;) {
        pthread_rwlock_rdlock(&e->resize);
        int rc = mdb_txn_begin(e->env, NULL, MDB_RDONLY, txn);
        if (rc == 0)
            return 0;
        pthread_rwlock_unlock(&e->resize);
        if (rc == MDB_READERS_FULL && !checked) {
            /* slots of killed processes: clear them and try once more */
            clear_stale_readers(e);
            checked = true;
            continue;
        }
        if (rc != MDB_MAP_RESIZED)
            return lm_err(rc, "beginning a read");
        if ((rc = set_mapsize(e, 0, GROW_WAIT_MS)) < 0)
            return rc;
    }
}

static void rtxn_end(lm_env *e, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&e->resize);
}

/* ---- stream rows ---- */

typedef struct srow {
    uint64_t head;
    uint8_t hash[ES_HASH_SIZE];
    uint32_t n_tail;
    uint64_t tail[CHUNK]; /* positions of seqs head - n_tail + 1 .. head */
} srow;

static int srow_decode(srow *s, const MDB_val *v)
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < 44)
        return es__err(ES_ECORRUPT, "stream row is too short");
    s->head = es__get_u64(p);
    memcpy(s->hash, p + 8, ES_HASH_SIZE);
    s->n_tail = es__get_u32(p + 40);
    if (s->n_tail > CHUNK || v->mv_size != 44 + 8 * (size_t)s->n_tail || s->n_tail > s->head)
        return es__err(ES_ECORRUPT, "stream row has a bad tail");
    for (uint32_t i = 0; i < s->n_tail; i++)
        s->tail[i] = es__get_u64(p + 44 + 8 * i);
    return 0;
}

static size_t srow_encode(uint8_t *out, const srow *s)
{
    es__put_u64(out, s->head);
    memcpy(out + 8, s->hash, ES_HASH_SIZE);
    es__put_u32(out + 40, s->n_tail);
    for (uint32_t i = 0; i < s->n_tail; i++)
        es__put_u64(out + 44 + 8 * i, s->tail[i]);
    return 44 + 8 * (size_t)s->n_tail;
}

static int srow_get(lm_env *e, MDB_txn *txn, const uint8_t *k, size_t kl, srow *s)
{
    MDB_val key = {kl, (void *)k}, v;
    int rc = mdb_get(txn, e->streams, &key, &v);
    if (rc == MDB_NOTFOUND) {
        memset(s, 0, sizeof *s);
        return 0;
    }
    if (rc)
        return lm_err(rc, "reading a stream's head");
    return srow_decode(s, &v);
}

/* Position of (stream, seq), seq <= head. */
static int seq_position(lm_env *e, MDB_txn *txn, const uint8_t *k, size_t kl, const srow *s,
                        uint64_t seq, uint64_t *pos, uint8_t *chunk_cache, uint64_t *cached_first)
{
    uint64_t tail_first = s->head - s->n_tail + 1;
    if (seq >= tail_first) {
        *pos = s->tail[seq - tail_first];
        return 0;
    }
    uint64_t first = ((seq - 1) / CHUNK) * CHUNK + 1;
    if (*cached_first != first) {
        uint8_t kb[ES_MAX_KEY + 8];
        memcpy(kb, k, kl);
        es__put_u64(kb + kl, first);
        MDB_val key = {kl + 8, kb}, v;
        int rc = mdb_get(txn, e->index, &key, &v);
        if (rc == MDB_NOTFOUND || (rc == 0 && v.mv_size != CHUNK * 8))
            return es__err(ES_ECORRUPT, "index chunk for seq %llu is missing or malformed",
                           (unsigned long long)first);
        if (rc)
            return lm_err(rc, "reading the stream index");
        memcpy(chunk_cache, v.mv_data, CHUNK * 8);
        *cached_first = first;
    }
    *pos = es__get_u64(chunk_cache + 8 * (seq - first));
    return 0;
}

static int log_get(lm_env *e, MDB_txn *txn, uint64_t pos, MDB_val *v)
{
    uint8_t kb[8];
    es__put_u64(kb, pos);
    MDB_val key = {8, kb};
    int rc = mdb_get(txn, e->log, &key, v);
    if (rc == MDB_NOTFOUND)
        return es__err(ES_ECORRUPT, "the index points at position %llu, which is not in the log",
                       (unsigned long long)pos);
    return rc ? lm_err(rc, "reading the log") : 0;
}

/* ---- open / close ---- */

/*
 * What a damaged data.mdb can do, and what is checked here.  LMDB reads the
 * file through a read-only map and writes it with pwrite (we do not use
 * MDB_WRITEMAP), so a full disk is a write error, never a fault.  The map is
 * read only up to the last page that the newest meta page names: LMDB
 * itself refuses any page number past it (MDB_PAGE_NOTFOUND).  But LMDB
 * does not compare that last page with the file's size, so a truncated file
 * is read past its end, which is SIGBUS; and it does not check the inside
 * of the B-tree pages (node offsets), so a flipped byte there can still make
 * liblmdb read out of bounds.  So before LMDB maps the file we read both
 * meta pages with pread and check their magic and version, the page size,
 * the map size, and that the last page and the roots lie inside the file.
 * Records read through LMDB are checked again by lmdb_record.c.
 *
 * The meta page layout is LMDB's (mdb.c: a 16-byte page header, then
 * MDB_meta), in host byte order, for 64-bit builds of LMDB 0.9.
 */
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_DATA_VERSION 1u
enum {
    META_AT_MAGIC = 16,
    META_AT_VERSION = 20,
    META_AT_MAPSIZE = 32,
    META_AT_DBS = 40, /* two MDB_db: the free list, then the main table */
    DB_SIZE = 48,
    DB_AT_PAD = 0, /* the free list's md_pad holds the page size */
    DB_AT_ROOT = 40,
    META_AT_LAST_PG = 136,
    META_AT_TXNID = 144,
    META_SIZE = 152,
    META_MIN_PSIZE = 512,
    META_MAX_PSIZE = 65536,
};
#define MAX_MAP ((uint64_t)1 << 44) /* 16 TiB, as for the map_size option */
#define P_INVALID UINT64_MAX        /* an empty table's root */

static uint64_t meta_u64(const uint8_t *m, size_t at)
{
    uint64_t v;
    memcpy(&v, m + at, 8);
    return v;
}

static uint32_t meta_u32(const uint8_t *m, size_t at)
{
    uint32_t v;
    memcpy(&v, m + at, 4);
    return v;
}

/* Check one meta page (read from `off`) against the file's page count. */
static int check_meta(const char *f, const uint8_t *m, int which, uint64_t psize, uint64_t pages)
{
    if (meta_u32(m, META_AT_MAGIC) != LMDB_MAGIC)
        return es__err(ES_ECORRUPT, "%s: meta page %d is not an LMDB meta page (bad magic)", f,
                       which);
    if (meta_u32(m, META_AT_VERSION) != LMDB_DATA_VERSION)
        return es__err(ES_ECORRUPT, "%s: meta page %d has LMDB format version %u, not %u", f, which,
                       meta_u32(m, META_AT_VERSION), LMDB_DATA_VERSION);
    uint64_t last = meta_u64(m, META_AT_LAST_PG), map = meta_u64(m, META_AT_MAPSIZE);
    if (last < 1 || last >= pages)
        return es__err(ES_ECORRUPT,
                       "%s is truncated or damaged: meta page %d names page %llu as its last, "
                       "but the file holds %llu pages of %llu bytes",
                       f, which, (unsigned long long)last, (unsigned long long)pages,
                       (unsigned long long)psize);
    if (map > MAX_MAP || map / psize < last + 1)
        return es__err(ES_ECORRUPT, "%s: meta page %d has a bad map size (%llu bytes)", f, which,
                       (unsigned long long)map);
    for (int i = 0; i < 2; i++) {
        uint64_t root = meta_u64(m, META_AT_DBS + (size_t)i * DB_SIZE + DB_AT_ROOT);
        if (root != P_INVALID && (root < 2 || root > last))
            return es__err(ES_ECORRUPT,
                           "%s: meta page %d names a root page (%llu) outside the "
                           "file",
                           f, which, (unsigned long long)root);
    }
    return 0;
}

/* Validate DIR/data.mdb before LMDB maps it (see above).  A missing or
 * empty file is a new store (LMDB writes its meta pages), unless `readonly`. */
static int check_data_file(const char *dir, bool readonly)
{
#if UINTPTR_MAX == UINT64_MAX && !defined(MDB_VL32)
    char f[4200];
    uint8_t m[2][META_SIZE];
    struct stat sb;
    int fd, rc = 0;
    snprintf(f, sizeof f, "%s/data.mdb", dir);
    if ((fd = open(f, O_RDONLY | O_CLOEXEC)) < 0) {
        if (errno == ENOENT && !readonly)
            return 0;
        if (errno == ENOENT)
            return es__err(ES_ENOTFOUND, "no store at %s", dir);
        return es__err(ES_EIO, "cannot read %s: %s", f, strerror(errno));
    }
    /* Meta pages first, then the size: a writer in another process writes
     * its pages before the meta page that names them, so the file can only
     * have grown since. */
    ssize_t n0 = pread(fd, m[0], META_SIZE, 0);
    uint64_t psize = n0 == META_SIZE ? meta_u32(m[0], META_AT_DBS + DB_AT_PAD) : 0;
    ssize_t n1 = psize >= META_MIN_PSIZE && psize <= META_MAX_PSIZE && !(psize & (psize - 1))
                     ? pread(fd, m[1], META_SIZE, (off_t)psize)
                     : 0;
    if (fstat(fd, &sb) != 0) {
        rc = es__err(ES_EIO, "%s: %s", f, strerror(errno));
        goto done;
    }
    if (n0 < 0 || n1 < 0) {
        rc = es__err(ES_EIO, "cannot read %s: %s", f, strerror(errno));
        goto done;
    }
    if (sb.st_size == 0) {
        if (readonly)
            rc = es__err(ES_ECORRUPT, "%s is empty (was the store's creation interrupted?)", f);
        goto done;
    }
    if (n0 != META_SIZE || meta_u32(m[0], META_AT_MAGIC) != LMDB_MAGIC) {
        rc = es__err(ES_ECORRUPT, "%s is not an LMDB file (its first meta page is %s)", f,
                     n0 != META_SIZE ? "cut short" : "damaged");
        goto done;
    }
    if (n1 != META_SIZE) {
        rc = es__err(ES_ECORRUPT,
                     "%s is truncated or has a bad page size (%llu): no second "
                     "meta page",
                     f, (unsigned long long)psize);
        goto done;
    }
    uint64_t pages = (uint64_t)sb.st_size / psize;
    if ((rc = check_meta(f, m[0], 0, psize, pages)) == 0)
        rc = check_meta(f, m[1], 1, psize, pages);
done:
    close(fd);
    return rc;
#else
    (void)dir, (void)readonly;
    return 0; /* the meta layout above is that of 64-bit LMDB */
#endif
}

/* LMDB's lock file: (maxreaders - 1) reader slots after a header.  LMDB
 * extends it with ftruncate, which leaves it sparse, and then writes it
 * through a shared map: on a full disk that write is a SIGBUS.  So give it
 * real blocks first.  Returns 0, 1 when the file cannot be written (a
 * read-only store: open it without the lock), or an ES_E* code. */
#define LOCK_SIZE (128 + 64 * (off_t)MAX_READERS)

static int prepare_lock_file(const char *dir, bool readonly)
{
    char f[4200];
    snprintf(f, sizeof f, "%s/lock.mdb", dir);
    int fd = open(f, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (readonly && (errno == EACCES || errno == EROFS || errno == EPERM))
            return 1;
        return es__err(ES_EIO, "cannot open %s: %s", f, strerror(errno));
    }
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) != 0) {
        rc = es__err(ES_EIO, "%s: %s", f, strerror(errno));
    } else if (sb.st_size < LOCK_SIZE) {
        int err = posix_fallocate(fd, 0, LOCK_SIZE);
        if (err == ENOSPC || err == EDQUOT || err == EFBIG)
            rc = es__err(ES_EFULL, "the disk is full: no room for %s (%s)", f, strerror(err));
        else if (err && err != EOPNOTSUPP && err != EINVAL)
            rc = es__err(ES_EIO, "cannot allocate %s: %s", f, strerror(err));
    }
    close(fd);
    return rc;
}

static int open_dbis(lm_env *e, bool readonly)
{
    MDB_txn *txn;
    unsigned f = readonly ? 0 : MDB_CREATE;
    int rc = mdb_txn_begin(e->env, NULL, readonly ? MDB_RDONLY : 0, &txn);
    if (rc)
        return lm_err(rc, "opening the store");
    if ((rc = mdb_dbi_open(txn, "log", f, &e->log)) ||
        (rc = mdb_dbi_open(txn, "streams", f, &e->streams)) ||
        (rc = mdb_dbi_open(txn, "index", f, &e->index)) ||
        (rc = mdb_dbi_open(txn, "ids", f, &e->ids)) ||
        (rc = mdb_dbi_open(txn, "snaps", f, &e->snaps)) ||
        (rc = mdb_dbi_open(txn, "meta", f, &e->meta))) {
        mdb_txn_abort(txn);
        if (rc == MDB_NOTFOUND)
            return es__err(ES_ENOTFOUND, "%s is not an eventsrc store (opened read-only)", e->path);
        return lm_err(rc, "opening the store's tables");
    }
    /* Added after the first format: a store made before it gets the table
     * at its first read-write open; a read-only opener does without. */
    rc = mdb_dbi_open(txn, "kv", f, &e->kv);
    if (rc == MDB_NOTFOUND && readonly)
        rc = 0;
    else if (rc) {
        mdb_txn_abort(txn);
        return lm_err(rc, "opening the store's tables");
    } else
        e->has_kv = true;
    MDB_val key = {6, "format"}, v;
    rc = mdb_get(txn, e->meta, &key, &v);
    if (rc == MDB_NOTFOUND && !readonly) {
        v.mv_size = strlen(FORMAT);
        v.mv_data = FORMAT;
        rc = mdb_put(txn, e->meta, &key, &v, 0);
    } else if (rc == 0 && (v.mv_size != strlen(FORMAT) || memcmp(v.mv_data, FORMAT, v.mv_size))) {
        mdb_txn_abort(txn);
        return es__err(ES_ECORRUPT, "%s holds format '%.*s', not %s", e->path,
                       (int)(v.mv_size > 40 ? 40 : v.mv_size), (const char *)v.mv_data, FORMAT);
    } else if (rc == MDB_NOTFOUND) {
        rc = 0;
    }
    if (rc) {
        mdb_txn_abort(txn);
        return lm_err_at(e, rc, "writing the store's format");
    }
    if ((rc = mdb_txn_commit(txn)))
        return lm_err_at(e, rc, "creating the store");
    return 0;
}

static void env_free(lm_env *e)
{
    if (e->env)
        mdb_env_close(e->env);
    es__wake_unmap(e->wake);
    pthread_rwlock_destroy(&e->resize);
    pthread_mutex_destroy(&e->qlock);
    pthread_cond_destroy(&e->qcond);
    pthread_cond_destroy(&e->lcond);
    free(e);
}

/* Clear the reader slots of processes that died inside a read (SIGKILL):
 * until then they pin old pages, so the file grows instead of reusing
 * them, and once every slot is taken no reader can start. */
static void clear_stale_readers(lm_env *e)
{
    int dead = 0;
    if (!e->nolock)
        mdb_reader_check(e->env, &dead);
}

/* Does the directory let this process write the store?  (A read-only
 * handle still opens the environment read-write when it can, so that a
 * read-write handle opened later in this process can share it.) */
static bool store_writable(const char *dir)
{
    char f[4200];
    snprintf(f, sizeof f, "%s/data.mdb", dir);
    if (access(f, W_OK) != 0)
        return false;
    snprintf(f, sizeof f, "%s/lock.mdb", dir);
    return access(f, W_OK) == 0 || (errno == ENOENT && access(dir, W_OK) == 0);
}

static int env_open(lm_env **out, const char *path, const es_open_options *opts)
{
    struct stat sb;
    lm_env *e;
    int rc;
    bool nosync = opts->flags & ES_OPEN_NOSYNC;
    bool readonly = opts->flags & ES_OPEN_READONLY;

    if (stat(path, &sb) != 0) {
        if (errno != ENOENT)
            return es__err(ES_EIO, "cannot open %s: %s", path, strerror(errno));
        if (opts->flags & (ES_OPEN_NOCREATE | ES_OPEN_READONLY))
            return es__err(ES_ENOTFOUND, "no store at %s", path);
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return es__err(ES_EIO, "cannot create %s: %s", path, strerror(errno));
        if (stat(path, &sb) != 0)
            return es__err(ES_EIO, "%s: %s", path, strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode))
        return es__err(ES_EINVAL, "%s is not a directory (lmdb: takes a directory)", path);
    if (opts->flags & (ES_OPEN_NOCREATE | ES_OPEN_READONLY)) {
        char f[4200];
        snprintf(f, sizeof f, "%s/data.mdb", path);
        if (access(f, F_OK) != 0)
            return errno == ENOENT ? es__err(ES_ENOTFOUND, "no store at %s", path)
                                   : es__err(ES_EIO, "cannot open %s: %s", path, strerror(errno));
    }

    pthread_mutex_lock(&envs_lock);
    for (e = envs; e; e = e->next) {
        if (e->dev == sb.st_dev && e->ino == sb.st_ino) {
            if (e->readonly && !readonly) {
                pthread_mutex_unlock(&envs_lock);
                return es__err(ES_EIO,
                               "cannot open %s for writing: its files are not writable "
                               "(this process has it open read-only)",
                               path);
            }
            e->refs++;
            pthread_mutex_unlock(&envs_lock);
            *out = e;
            return 0;
        }
    }
    size_t pl = strlen(path);
    if (!(e = es__calloc(1, sizeof *e + pl + 1))) {
        pthread_mutex_unlock(&envs_lock);
        return es__err(ES_ENOMEM, "out of memory opening %s", path);
    }
    memcpy(e->path, path, pl + 1);
    e->dev = sb.st_dev;
    e->ino = sb.st_ino;
    e->refs = 1;
    e->readonly = readonly && !store_writable(path);
    /* Readers first: a thread reading through a cursor may take the lock
     * again (head, views) while a grower waits; the grower's wait is
     * bounded instead (set_mapsize). */
    pthread_rwlock_init(&e->resize, NULL);
    pthread_mutex_init(&e->qlock, NULL);
    pthread_cond_init(&e->qcond, NULL);
    pthread_cond_init(&e->lcond, NULL);

    if ((rc = check_data_file(path, readonly)) < 0)
        goto fail;
    if ((rc = prepare_lock_file(path, e->readonly)) < 0)
        goto fail;
    /* A lock file we cannot write (a store made read-only with chmod): read
     * without it.  Safe while nothing writes the store; a writer elsewhere
     * could reuse pages under such a reader, since it is not registered. */
    e->nolock = rc == 1;
    if ((rc = mdb_env_create(&e->env))) {
        e->env = NULL;
        rc = lm_err(rc, "creating an LMDB environment");
        goto fail;
    }
    mdb_env_set_maxdbs(e->env, 8);
    mdb_env_set_maxreaders(e->env, MAX_READERS);
    e->mapsize = opts->map_size ? (size_t)opts->map_size : DEFAULT_MAP;
    if ((rc = mdb_env_set_mapsize(e->env, e->mapsize))) {
        rc = lm_err(rc, "setting the map size");
        goto fail;
    }
    /* Durable mode: each commit syncs its data pages; the meta page is made
     * durable by the next sync (ours, or the next commit's), see lm_append. */
    unsigned flags = MDB_NOTLS | (nosync ? MDB_NOSYNC : MDB_NOMETASYNC) |
                     (e->readonly ? MDB_RDONLY : 0) | (e->nolock ? MDB_NOLOCK : 0);
    e->nosync = nosync;
    e->psize = (size_t)sysconf(_SC_PAGESIZE);
    if ((rc = mdb_env_open(e->env, path, flags, 0644))) {
        rc = rc == EACCES || rc == EROFS || rc == EPERM
                 ? es__err(ES_EIO, "cannot open %s: %s", path, mdb_strerror(rc))
                 : lm_err_at(e, rc, path);
        goto fail;
    }
    MDB_envinfo info;
    MDB_stat mst;
    mdb_env_info(e->env, &info);
    mdb_env_stat(e->env, &mst);
    e->mapsize = info.me_mapsize; /* an existing store may be bigger */
    e->psize = mst.ms_psize;
    clear_stale_readers(e);
    if ((rc = open_dbis(e, readonly)) < 0)
        goto fail;
    /* never an error: without the word, waiters poll */
    e->wake = es__wake_map(path, !e->readonly);
    e->next = envs;
    envs = e;
    pthread_mutex_unlock(&envs_lock);
    *out = e;
    return 0;
fail:
    pthread_mutex_unlock(&envs_lock);
    env_free(e);
    return rc;
}

static void env_release(lm_env *e)
{
    pthread_mutex_lock(&envs_lock);
    if (--e->refs == 0) {
        for (lm_env **p = &envs; *p; p = &(*p)->next) {
            if (*p == e) {
                *p = e->next;
                break;
            }
        }
        env_free(e);
    }
    pthread_mutex_unlock(&envs_lock);
}

/* "lmdb:DIR?nosync&map_size=N": options in the URI's query, for tools that
 * only take a URI.  They add to the open options; an unknown one is an error. */
static int parse_query(char *q, es_open_options *o)
{
    for (char *item = q, *next; item && *item; item = next) {
        if ((next = strchr(item, '&')))
            *next++ = '\0';
        char *val = strchr(item, '=');
        if (val)
            *val++ = '\0';
        if (strcmp(item, "nosync") == 0) {
            unsigned bit = ES_OPEN_NOSYNC;
            if (!val || strcmp(val, "1") == 0 || strcmp(val, "true") == 0)
                o->flags |= bit;
            else if (strcmp(val, "0") == 0 || strcmp(val, "false") == 0)
                o->flags &= ~bit;
            else
                return es__err(ES_EINVAL, "lmdb: option %s takes 1/true or 0/false, not '%.40s'",
                               item, val);
        } else if (strcmp(item, "map_size") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = val ? strtoull(val, &end, 10) : 0;
            if (!val || !*val || *end || errno || v < (1u << 20) || v > (1ull << 44))
                return es__err(ES_EINVAL, "lmdb: map_size takes a byte count from 1 MiB to 16 TiB");
            o->map_size = v;
        } else {
            return es__err(ES_EINVAL, "lmdb: unknown URI option '%.40s' (known: nosync, map_size)",
                           item);
        }
    }
    return 0;
}

static int lm_open(void **out, const char *path, const es_open_options *opts, es_store *st)
{
    es_open_options o = *opts;
    lm_store *s;
    char *dir;
    int rc;
    if (!*path || *path == '?')
        return es__err(ES_EINVAL, "lmdb: needs a directory, e.g. lmdb:./eventsrc.db");
    if (strlen(path) > 4000)
        return es__err(ES_EINVAL, "lmdb: path is too long");
    if (!(dir = es__strdup(path)))
        return es__err(ES_ENOMEM, "out of memory opening %s", path);
    char *q = strchr(dir, '?');
    if (q) {
        *q++ = '\0';
        if ((rc = parse_query(q, &o)) < 0) {
            free(dir);
            return rc;
        }
    }
    if (!(s = es__calloc(1, sizeof *s))) {
        free(dir);
        return es__err(ES_ENOMEM, "out of memory opening %s", path);
    }
    if ((rc = env_open(&s->e, dir, &o)) < 0) {
        free(dir);
        free(s);
        return rc;
    }
    free(dir);
    s->st = st;
    s->readonly = o.flags & ES_OPEN_READONLY;
    *out = s;
    return 0;
}

static void lm_close(void *be)
{
    lm_store *s = be;
    env_release(s->e);
    free(s);
}

/* ---- append ---- */

typedef struct idctx {
    lm_env *e;
    MDB_txn *txn;
} idctx;

static int lookup_id(void *ctx, const uint8_t id[ES_ID_SIZE], es_event *ev)
{
    idctx *c = ctx;
    MDB_val key = {ES_ID_SIZE, (void *)id}, v, rec;
    int rc = mdb_get(c->txn, c->e->ids, &key, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return lm_err(rc, "looking up an event id");
    if (v.mv_size != 8)
        return es__err(ES_ECORRUPT, "id index entry is malformed");
    uint64_t pos = es__get_u64(v.mv_data);
    if ((rc = log_get(c->e, c->txn, pos, &rec)) < 0)
        return rc;
    if ((rc = es__rec_decode(ev, rec.mv_data, rec.mv_size, pos)) < 0)
        return rc;
    return 1;
}

/* The commit time of one client call: worked out when its first request
 * that writes needs it, so that a call of replays only is answered from the
 * original whatever its kept time. */
typedef struct commit_time {
    es_store *st;
    const es__append_req *first; /* the call's first request gives a kept time */
    int64_t last_time;           /* the store's latest commit time */
    bool known;
    int64_t t;
} commit_time;

static int commit_time_get(commit_time *ct, int64_t *out)
{
    int rc;
    if (!ct->known) {
        if ((rc = es__commit_time(ct->st, ct->first, ct->last_time, &ct->t)) < 0)
            return rc;
        ct->known = true;
    }
    *out = ct->t;
    return 0;
}

/* Apply one request inside txn.  Returns 0, an ES_E* code, or 1 with
 * *mdb_rc set when LMDB failed (the caller decides: grow, or fail). */
static int apply_append(lm_store *s, MDB_txn *txn, MDB_cursor *logc, uint64_t *last_pos,
                        const es__append_req *req, es_append_result *out, commit_time *ct,
                        int *mdb_rc)
{
    lm_env *e = s->e;
    srow row;
    MDB_val key, v;
    uint8_t kb[ES_MAX_KEY + 8], posb[8];
    uint64_t pos = *last_pos;
    int rc;

    *mdb_rc = 0;
    if ((rc = srow_get(e, txn, req->stream, req->stream_len, &row)) < 0)
        return rc;
    idctx ic = {e, txn};
    if ((rc = es__idempotency_check(req, lookup_id, &ic, row.head, out)) != 0)
        return rc > 0 ? 0 : rc; /* 1: a retry answered from the original */
    if (!es__expect_ok(req->expected, row.head)) {
        out->head = row.head;
        return es__err(ES_ECONFLICT, "stream is at seq %llu, not at the expected state",
                       (unsigned long long)row.head);
    }
    int64_t t;
    if ((rc = commit_time_get(ct, &t)) < 0)
        return rc;
    const uint8_t *prev = row.head ? row.hash : NULL;
    const uint64_t head = row.head;
    uint8_t prevbuf[ES_HASH_SIZE];
    for (size_t i = 0; i < req->n; i++) {
        const es_event_new *in = &req->events[i];
        size_t tl = strlen(in->type);
        uint64_t seq = head + 1 + i;
        pos++;
        es__put_u64(posb, pos);
        key = (MDB_val){8, posb};
        v.mv_size = es__rec_size(req->stream_len, tl, in->data_len, in->meta_len);
        if ((rc = mdb_cursor_put(logc, &key, &v, MDB_APPEND | MDB_RESERVE)))
            goto mdb_fail;
        uint8_t *r = v.mv_data;
        es__rec_encode(r, req->stream, req->stream_len, seq, t, req->ids[i], in, tl, prev);
        memcpy(prevbuf, r + ES__REC_AT_HASH, ES_HASH_SIZE);
        prev = prevbuf;

        MDB_val ik = {ES_ID_SIZE, (void *)req->ids[i]}, iv = {8, posb};
        if ((rc = mdb_put(txn, e->ids, &ik, &iv, MDB_NOOVERWRITE)))
            goto mdb_fail;

        /* The stream's tail; a full tail becomes one index chunk. */
        row.tail[row.n_tail++] = pos;
        row.head = seq;
        if (row.n_tail == CHUNK) {
            uint8_t chunk[CHUNK * 8];
            for (int j = 0; j < CHUNK; j++)
                es__put_u64(chunk + 8 * j, row.tail[j]);
            memcpy(kb, req->stream, req->stream_len);
            es__put_u64(kb + req->stream_len, seq - CHUNK + 1);
            MDB_val ck = {req->stream_len + 8, kb}, cv = {sizeof chunk, chunk};
            if ((rc = mdb_put(txn, e->index, &ck, &cv, 0)))
                goto mdb_fail;
            row.n_tail = 0;
        }
    }
    memcpy(row.hash, prev, ES_HASH_SIZE);
    uint8_t rowb[44 + 8 * CHUNK];
    key = (MDB_val){req->stream_len, (void *)req->stream};
    v = (MDB_val){srow_encode(rowb, &row), rowb};
    if ((rc = mdb_put(txn, e->streams, &key, &v, 0)))
        goto mdb_fail;
    out->first_seq = row.head - req->n + 1;
    out->last_seq = row.head;
    out->first_position = pos - req->n + 1;
    out->last_position = pos;
    out->time_us = t;
    out->head = row.head;
    out->replayed = 0;
    *last_pos = pos;
    return 0;
mdb_fail:
    *mdb_rc = rc;
    return 1;
}

/* Apply one client call (all its requests) inside txn: one commit time,
 * all or nothing.  Same returns as apply_append; on an ES_E* failure the
 * caller must drop what txn holds. */
static int apply_call(lm_req *r, MDB_txn *txn, int *mdb_rc)
{
    lm_env *e = r->s->e;
    MDB_cursor *logc;
    MDB_val key, v;
    uint64_t pos = 0;
    commit_time ct = {.st = r->s->st, .first = &r->reqs[0]};
    int rc;

    /* The last event gives the last position and the latest commit time. */
    *mdb_rc = 0;
    if ((rc = mdb_cursor_open(txn, e->log, &logc))) {
        *mdb_rc = rc;
        return 1;
    }
    rc = mdb_cursor_get(logc, &key, &v, MDB_LAST);
    if (rc == 0) {
        pos = es__get_u64(key.mv_data);
        if ((rc = es__rec_time(&ct.last_time, v.mv_data, v.mv_size, pos)) < 0) {
            mdb_cursor_close(logc);
            return rc;
        }
    } else if (rc != MDB_NOTFOUND) {
        mdb_cursor_close(logc);
        *mdb_rc = rc;
        return 1;
    }
    rc = 0;
    for (size_t k = 0; rc == 0 && k < r->n; k++)
        rc = apply_append(r->s, txn, logc, &pos, &r->reqs[k], &r->outs[k], &ct, mdb_rc);
    mdb_cursor_close(logc);
    return rc;
}

/* Commit a group of client calls in one transaction (one fsync), each in
 * a nested transaction so that one failing call leaves the others.  Sets
 * each call's rc and error text. */
static bool commit_group(lm_env *e, lm_req *group)
{
    size_t bytes = 0, n = 0;
    /* A process killed inside a read pins the pages of its snapshot until
     * its slot is cleared: the file would grow instead of reusing them. */
    if (++e->commits_since_check >= STALE_CHECK_EVERY) {
        e->commits_since_check = 0;
        clear_stale_readers(e);
    }
    for (lm_req *r = group; r; r = r->next) {
        for (size_t k = 0; k < r->n; k++)
            bytes += r->reqs[k].payload_bytes + r->reqs[k].n * (ES__REC_HDR + 64 + ES_MAX_KEY);
        n++;
    }
    for (int attempt = 0;; attempt++) {
        MDB_txn *txn = NULL;
        int rc, mrc = 0;
        bool any_ok = false;

        if ((rc = maybe_grow(e, bytes)) < 0)
            goto fail_all;
        pthread_rwlock_rdlock(&e->resize);
        rc = mdb_txn_begin(e->env, NULL, 0, &txn);
        if (rc == MDB_MAP_RESIZED) {
            pthread_rwlock_unlock(&e->resize);
            if ((rc = set_mapsize(e, 0, GROW_WAIT_MS)) < 0)
                goto fail_all;
            continue;
        }
        if (rc) {
            pthread_rwlock_unlock(&e->resize);
            rc = lm_err(rc, "beginning an append");
            goto fail_all;
        }
        for (lm_req *r = group; r; r = r->next) {
            MDB_txn *child = txn;
            /* A one-op call checks everything before it writes, so it can
             * share the transaction; a multi-op call could fail on its
             * second op after writing the first, so it gets a nested
             * transaction when others share the commit.  (Alone, a failed
             * call drops the whole transaction.) */
            bool nest = n > 1 && r->n > 1;
            if (nest && (mrc = mdb_txn_begin(e->env, txn, 0, &child)))
                break;
            for (size_t k = 0; k < r->n; k++)
                memset(&r->outs[k], 0, sizeof r->outs[k]);
            rc = apply_call(r, child, &mrc);
            if (rc == 1) { /* LMDB failed: the whole group is retried or failed */
                if (nest)
                    mdb_txn_abort(child);
                break;
            }
            mrc = 0;
            if (rc == 0 && nest && (mrc = mdb_txn_commit(child)))
                break;
            if (rc < 0 && nest)
                mdb_txn_abort(child);
            r->rc = rc;
            if (rc < 0)
                snprintf(r->err, sizeof r->err, "%s", es_error_last());
            else
                any_ok = true;
        }
        if (mrc == 0 && any_ok) {
            mrc = mdb_txn_commit(txn);
            txn = NULL;
        }
        bool committed = mrc == 0 && txn == NULL;
        if (txn)
            mdb_txn_abort(txn);
        pthread_rwlock_unlock(&e->resize);
        if (mrc == 0)
            return committed;
        if (mrc == MDB_MAP_FULL && attempt < 8) {
            if ((rc = set_mapsize(e, e->mapsize * 2, GROW_WAIT_MS)) < 0)
                goto fail_all;
            continue;
        }
        rc = lm_err_at(e, mrc, "committing an append");
fail_all:
        for (lm_req *r = group; r; r = r->next) {
            r->rc = rc;
            memset(r->outs, 0, r->n * sizeof *r->outs);
            snprintf(r->err, sizeof r->err, "%s", es_error_last());
        }
        return false;
    }
}

static int lm_append(void *be, const es__append_req *reqs, size_t n, es_append_result *outs)
{
    lm_store *s = be;
    lm_env *e = s->e;
    lm_req me = {.s = s, .reqs = reqs, .n = n, .outs = outs};

    if (s->readonly || e->readonly)
        return es__err(ES_EINVAL, "the store was opened read-only");
    /*
     * Group commit.  Calls queue up; one thread at a time leads: it takes
     * part of the queue, commits it in one transaction and wakes the others.
     * A call is acknowledged only once its commit is durable: the commit
     * synced its data pages, and its meta page gets synced by the next
     * commit's data sync (which covers every earlier write to the file) or,
     * when no commit is coming, by an explicit sync.
     *
     * A leader takes at most half of the calls in flight, so that two groups
     * alternate: while one waits for its meta page, the other commits and
     * syncs it.  Under load a group then costs one sync, not two.
     */
    bool lingered = false;
    pthread_mutex_lock(&e->qlock);
    e->inflight++;
    if (e->qtail)
        e->qtail->next = &me;
    else
        e->qhead = &me;
    e->qtail = &me;
    e->qlen++;
    pthread_cond_signal(&e->lcond);
    for (;;) {
        if (me.done && (me.rc < 0 || me.gen <= e->synced_gen))
            break;
        if (!me.done && !e->leader) {
            e->leader = true;
            size_t cap = (e->inflight + 1) / 2;
            cap = cap < 1 ? 1 : cap > GROUP_MAX ? GROUP_MAX : cap;
            /* The writers of the last group come back one by one: wait a
             * moment for them rather than commit a group of one. */
            size_t want = e->last_group < cap ? e->last_group : cap;
            if (e->qlen < want) {
                struct timespec until;
                clock_gettime(CLOCK_REALTIME, &until);
                until.tv_nsec += FILL_NS;
                if (until.tv_nsec >= 1000000000L) {
                    until.tv_sec++;
                    until.tv_nsec -= 1000000000L;
                }
                while (e->qlen < want && pthread_cond_timedwait(&e->lcond, &e->qlock, &until) == 0)
                    ;
            }
            lm_req *group = e->qhead, *last = group;
            size_t taken = 1;
            while (last->next && taken < cap) {
                last = last->next;
                taken++;
            }
            e->qhead = last->next;
            if (!e->qhead)
                e->qtail = NULL;
            last->next = NULL;
            e->qlen -= taken;
            e->last_group = taken;
            pthread_mutex_unlock(&e->qlock);
            bool committed = commit_group(e, group);
            if (committed) /* visible to new read transactions: wake the waiters */
                es__wake_bump(e->wake);
            pthread_mutex_lock(&e->qlock);
            uint64_t gen = e->committed_gen;
            if (committed) {
                gen = ++e->committed_gen;
                /* this commit's data sync made every earlier commit durable */
                if (gen - 1 > e->synced_gen)
                    e->synced_gen = gen - 1;
            }
            for (lm_req *r = group, *nx; r; r = nx) {
                nx = r->next;
                r->gen = e->nosync ? 0 : gen;
                r->done = true;
            }
            e->leader = false;
            pthread_cond_broadcast(&e->qcond);
        } else if (me.done && !e->syncing && !e->leader && !e->qhead && !lingered &&
                   e->inflight > 1) {
            /* Others are about: one may be back with an append within a
             * moment, and its commit would sync us for free. */
            lingered = true;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += LINGER_NS;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&e->qcond, &e->qlock, &until);
        } else if (me.done && !e->syncing && !e->leader && !e->qhead) {
            /* no commit is coming to sync us: sync now */
            e->syncing = true;
            uint64_t target = e->committed_gen;
            pthread_mutex_unlock(&e->qlock);
            int rc = mdb_env_sync(e->env, 1);
            pthread_mutex_lock(&e->qlock);
            e->syncing = false;
            if (rc == 0 && target > e->synced_gen)
                e->synced_gen = target;
            if (rc && me.gen > e->synced_gen) {
                me.rc = lm_err_at(e, rc, "syncing to disk");
                snprintf(me.err, sizeof me.err, "%s", es_error_last());
            }
            pthread_cond_broadcast(&e->qcond);
        } else {
            pthread_cond_wait(&e->qcond, &e->qlock);
        }
    }
    e->inflight--;
    pthread_mutex_unlock(&e->qlock);
    if (me.rc < 0) {
        /* The call wrote nothing: clear the results of the ops applied
         * before the failure; a conflicting op keeps just its head. */
        for (size_t k = 0; k < n; k++)
            if (outs[k].first_seq)
                memset(&outs[k], 0, sizeof outs[k]);
        return es__err(me.rc, "%s", me.err);
    }
    return 0;
}

/* ---- reads ---- */

static int lm_head(void *be, const uint8_t *stream, size_t len, uint64_t *out)
{
    lm_env *e = ((lm_store *)be)->e;
    MDB_txn *txn;
    srow row;
    int rc;
    if ((rc = rtxn_begin(e, &txn)) < 0)
        return rc;
    rc = srow_get(e, txn, stream, len, &row);
    rtxn_end(e, txn);
    *out = rc == 0 ? row.head : 0;
    return rc;
}

static int lm_last_position(void *be, uint64_t *out)
{
    lm_env *e = ((lm_store *)be)->e;
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    int rc;
    if ((rc = rtxn_begin(e, &txn)) < 0)
        return rc;
    if ((rc = mdb_cursor_open(txn, e->log, &c)) == 0) {
        rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
        mdb_cursor_close(c);
    }
    *out = rc == 0 ? es__get_u64(k.mv_data) : 0;
    rtxn_end(e, txn);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : lm_err(rc, "reading the log");
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* es_log_wait: sleep on the wake word (see lmdb_wake.c), re-reading the
 * log whenever it moves and at least every WAKE_RECHECK_MS, for commits of
 * writers that do not bump it. */
static int lm_wait(void *be, uint64_t after, int timeout_ms)
{
    lm_env *e = ((lm_store *)be)->e;
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        /* the word before the log: a commit in between moves the word, and
         * the sleep below then returns at once */
        uint32_t seen = es__wake_seen(e->wake);
        uint64_t last;
        int rc = lm_last_position(be, &last);
        if (rc < 0)
            return rc;
        if (last > after)
            return 0;
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return es__err(ES_ETIMEDOUT, "es_log_wait: nothing past position %llu within %d ms",
                           (unsigned long long)after, timeout_ms);
        int slice = e->wake ? WAKE_RECHECK_MS : WAKE_POLL_MS;
        es__wake_sleep(e->wake, seen, left < slice ? (int)left : slice);
    }
}

/*
 * Cursors read a batch of up to READ_BATCH_EVENTS records in one read
 * transaction and hand out pointers into the map (no copy).  The
 * transaction stays open until the batch is used up, the cursor reaches its
 * end, or it is freed — so a cursor left half-read pins one snapshot, and
 * map growth waits for it (bounded, see set_mapsize).
 */
typedef struct lm_cursor {
    es_cursor base;
    lm_env *e;
    MDB_txn *txn;  /* held while a batch is being handed out */
    es_event *evs; /* decoded while the records are hot in the cache */
    size_t n, i, cap;
    bool done;
    /* stream cursors */
    uint8_t key[ES_MAX_KEY];
    size_t key_len;
    int backward;
    uint64_t next, stop;
    /* log cursors: filters used to skip records */
    uint8_t prefix[ES_MAX_KEY];
    size_t prefix_len;
    char type[ES_MAX_TYPE + 1];
    size_t type_len;
    size_t fill; /* records to decode in the next fill: the caller's limit at
                    first (a reader that wants 100 decodes 100), then a full page */
} lm_cursor;

static void cur_release(lm_cursor *c)
{
    if (c->txn) {
        rtxn_end(c->e, c->txn);
        c->txn = NULL;
    }
    c->n = c->i = 0;
}

static int cur_push(lm_cursor *c, const MDB_val *rec, uint64_t pos)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        es_event *r = es__realloc(c->evs, cap * sizeof *r);
        if (!r)
            return es__err(ES_ENOMEM, "out of memory reading");
        c->evs = r;
        c->cap = cap;
    }
    int rc = es__rec_decode(&c->evs[c->n], rec->mv_data, rec->mv_size, pos);
    if (rc == 0)
        c->n++;
    return rc;
}

static int stream_fill(lm_cursor *c, MDB_txn *txn)
{
    lm_env *e = c->e;
    MDB_cursor *lc = NULL;
    srow row;
    uint8_t chunk[CHUNK * 8];
    uint64_t cached = 0, lastpos = 0;
    int rc;

    if ((rc = srow_get(e, txn, c->key, c->key_len, &row)) < 0)
        return rc;
    if ((rc = mdb_cursor_open(txn, e->log, &lc)))
        return lm_err(rc, "reading the log");
    if (c->backward && c->next > row.head)
        c->next = row.head;
    while (c->n < READ_BATCH_EVENTS) {
        uint64_t seq = c->next, pos = 0;
        if (seq == 0 || seq > row.head || (c->backward ? seq < c->stop : seq > c->stop)) {
            c->done = true;
            break;
        }
        if ((rc = seq_position(e, txn, c->key, c->key_len, &row, seq, &pos, chunk, &cached)) < 0)
            goto done;
        MDB_val k, v;
        uint8_t kb[8];
        es__put_u64(kb, pos);
        k = (MDB_val){8, kb};
        /* Events of one append sit next to each other: step instead of seek. */
        if (lastpos && pos == lastpos + 1) {
            rc = mdb_cursor_get(lc, &k, &v, MDB_NEXT);
            if (rc == 0 && es__get_u64(k.mv_data) != pos)
                rc = MDB_NOTFOUND;
        } else {
            rc = mdb_cursor_get(lc, &k, &v, MDB_SET_KEY);
        }
        if (rc == MDB_NOTFOUND) {
            rc = es__err(ES_ECORRUPT, "the index points at position %llu, which is not in the log",
                         (unsigned long long)pos);
            goto done;
        }
        if (rc) {
            rc = lm_err(rc, "reading the log");
            goto done;
        }
        lastpos = pos;
        if ((rc = cur_push(c, &v, pos)) < 0)
            goto done;
        if (seq == c->stop) {
            c->done = true;
            break;
        }
        c->next = c->backward ? c->next - 1 : c->next + 1;
    }
    rc = 0;
done:
    mdb_cursor_close(lc);
    return rc;
}

/* Can the record be skipped by the cursor's filters?  Reads only what the
 * record's size covers; a record too short to tell is kept, for the decoder
 * to report. */
static bool log_wanted(const lm_cursor *c, const MDB_val *v)
{
    const uint8_t *r = v->mv_data;
    size_t sl, tl;
    if (v->mv_size < ES__REC_HDR)
        return true;
    sl = r[ES__REC_AT_STREAM_LEN];
    tl = r[ES__REC_AT_TYPE_LEN];
    if (v->mv_size < ES__REC_HDR + sl + tl)
        return true;
    if (c->prefix_len && (sl < c->prefix_len || memcmp(r + ES__REC_HDR, c->prefix, c->prefix_len)))
        return false;
    if (c->type_len && (tl != c->type_len || memcmp(r + ES__REC_HDR + sl, c->type, tl)))
        return false;
    return true;
}

static int log_fill(lm_cursor *c, MDB_txn *txn)
{
    MDB_cursor *lc;
    MDB_val k, v;
    uint8_t kb[8];
    int rc;
    size_t scanned = 0;

    if ((rc = mdb_cursor_open(txn, c->e->log, &lc)))
        return lm_err(rc, "reading the log");
    es__put_u64(kb, c->next);
    k = (MDB_val){8, kb};
    rc = mdb_cursor_get(lc, &k, &v, MDB_SET_RANGE);
    while (rc == 0) {
        uint64_t pos = es__get_u64(k.mv_data);
        if (log_wanted(c, &v) && (rc = cur_push(c, &v, pos)) < 0)
            break;
        c->next = pos + 1;
        /* a filtered scan also stops now and then, to not pin a snapshot long */
        if (c->n >= c->fill || ++scanned >= 16 * READ_BATCH_EVENTS)
            break;
        rc = mdb_cursor_get(lc, &k, &v, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND)
        rc = 0; /* the end for now; a later next() looks again */
    else if (!IS_ES(rc))
        rc = lm_err(rc, "reading the log");
    mdb_cursor_close(lc);
    c->fill = READ_BATCH_EVENTS;
    return rc;
}

static int cur_next(const es_event **out, es_cursor *cur, bool is_log)
{
    lm_cursor *c = (lm_cursor *)cur;
    int rc;
    while (c->i >= c->n) {
        cur_release(c);
        if (!is_log && c->done)
            return ES_ITEROVER;
        if ((rc = rtxn_begin(c->e, &c->txn)) < 0) {
            c->txn = NULL;
            return rc;
        }
        uint64_t before = c->next;
        rc = is_log ? log_fill(c, c->txn) : stream_fill(c, c->txn);
        if (rc < 0) {
            cur_release(c);
            return rc;
        }
        if (c->n == 0 && (!is_log || c->next == before)) {
            cur_release(c); /* nothing more now: hold no snapshot while idle */
            return ES_ITEROVER;
        }
    }
    *out = &c->evs[c->i++];
    return 0;
}

static int stream_next(const es_event **out, es_cursor *cur)
{
    return cur_next(out, cur, false);
}

static int log_next(const es_event **out, es_cursor *cur)
{
    return cur_next(out, cur, true);
}

static void cur_free(es_cursor *cur)
{
    lm_cursor *c = (lm_cursor *)cur;
    cur_release(c);
    free(c->evs);
    free(c);
}

static const es__cursor_ops stream_ops = {stream_next, cur_free};
static const es__cursor_ops log_ops = {log_next, cur_free};

static int lm_stream_cursor(es_cursor **out, void *be, const uint8_t *stream, size_t len,
                            const es_read_options *o)
{
    lm_cursor *c = es__calloc(1, sizeof *c);
    if (!c)
        return es__err(ES_ENOMEM, "out of memory for a cursor");
    c->base.ops = &stream_ops;
    c->e = ((lm_store *)be)->e;
    memcpy(c->key, stream, len);
    c->key_len = len;
    c->backward = o->backward;
    c->next = o->from_seq;
    c->stop = o->to_seq;
    if (o->backward ? o->from_seq < o->to_seq : o->from_seq > o->to_seq)
        c->done = true;
    *out = &c->base;
    return 0;
}

static int lm_log_cursor(es_cursor **out, void *be, const es_log_options *o)
{
    lm_cursor *c = es__calloc(1, sizeof *c);
    if (!c)
        return es__err(ES_ENOMEM, "out of memory for a cursor");
    c->base.ops = &log_ops;
    c->e = ((lm_store *)be)->e;
    c->next = o->from_position;
    /* a limit is a hint for the first page only: the time range is applied
     * above us, so more may be wanted after it */
    c->fill = o->limit && o->limit < READ_BATCH_EVENTS ? (size_t)o->limit : READ_BATCH_EVENTS;
    if (o->prefix_len) {
        memcpy(c->prefix, o->prefix, o->prefix_len);
        c->prefix_len = o->prefix_len;
    }
    if (o->type) {
        c->type_len = strlen(o->type);
        memcpy(c->type, o->type, c->type_len + 1);
    }
    *out = &c->base;
    return 0;
}

static int lm_streams(void *be, const void *prefix, size_t prefix_len, es_stream_fn fn,
                      void *payload)
{
    lm_env *e = ((lm_store *)be)->e;
    uint8_t from[ES_MAX_KEY + 1];
    size_t from_len = prefix_len;
    bool first = true;
    int rc = 0;

    if (prefix_len)
        memcpy(from, prefix, prefix_len);
    /* Copy up to 1024 keys per read transaction; call back outside it. */
    for (;;) {
        struct {
            uint8_t k[ES_MAX_KEY];
            size_t len;
            uint64_t head;
        } *keys = es__malloc(1024 * sizeof *keys);
        size_t n = 0;
        MDB_txn *txn;
        MDB_cursor *c;
        MDB_val k, v;
        if (!keys)
            return es__err(ES_ENOMEM, "out of memory listing streams");
        if ((rc = rtxn_begin(e, &txn)) < 0) {
            free(keys);
            return rc;
        }
        if ((rc = mdb_cursor_open(txn, e->streams, &c))) {
            rtxn_end(e, txn);
            free(keys);
            return lm_err(rc, "listing streams");
        }
        k = (MDB_val){from_len, from};
        rc = from_len ? mdb_cursor_get(c, &k, &v, MDB_SET_RANGE)
                      : mdb_cursor_get(c, &k, &v, MDB_FIRST);
        if (rc == 0 && !first && k.mv_size == from_len && memcmp(k.mv_data, from, from_len) == 0)
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT); /* resume after the last one */
        while (rc == 0 && n < 1024) {
            if (!es__has_prefix(k.mv_data, k.mv_size, prefix, prefix_len)) {
                rc = MDB_NOTFOUND;
                break;
            }
            srow row;
            if (k.mv_size == 0 || k.mv_size > ES_MAX_KEY) {
                rc = es__err(ES_ECORRUPT,
                             "the streams table holds a key of %zu bytes (keys "
                             "are 1..%d bytes)",
                             k.mv_size, ES_MAX_KEY);
                break;
            }
            if ((rc = srow_decode(&row, &v)) < 0)
                break;
            memcpy(keys[n].k, k.mv_data, k.mv_size);
            keys[n].len = k.mv_size;
            keys[n].head = row.head;
            n++;
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(c);
        rtxn_end(e, txn);
        bool more = rc == 0;
        if (rc == MDB_NOTFOUND)
            rc = 0;
        else if (!IS_ES(rc))
            rc = lm_err(rc, "listing streams");
        for (size_t i = 0; rc == 0 && i < n; i++) {
            int r = fn(keys[i].k, keys[i].len, keys[i].head, payload);
            /* a library code from the callback keeps the message it set */
            if (r)
                rc = es__cb_rc(r);
        }
        if (n) {
            memcpy(from, keys[n - 1].k, keys[n - 1].len);
            from_len = keys[n - 1].len;
        }
        free(keys);
        first = false;
        if (rc != 0 || !more)
            return rc;
    }
}

static int lm_stats(void *be, es_store_stats *out)
{
    lm_env *e = ((lm_store *)be)->e;
    MDB_txn *txn;
    MDB_stat s;
    MDB_envinfo info;
    int rc;
    if ((rc = rtxn_begin(e, &txn)) < 0)
        return rc;
    if ((rc = mdb_stat(txn, e->log, &s)) == 0) {
        out->events = s.ms_entries;
        if ((rc = mdb_stat(txn, e->streams, &s)) == 0) {
            out->streams = s.ms_entries;
            if ((rc = mdb_stat(txn, e->snaps, &s)) == 0)
                out->snapshots = s.ms_entries;
        }
    }
    rtxn_end(e, txn);
    if (rc)
        return lm_err(rc, "reading statistics");
    mdb_env_info(e->env, &info);
    out->bytes = (uint64_t)(info.me_last_pgno + 1) * e->psize;
    return lm_last_position(be, &out->last_position);
}

/* ---- snapshots ---- */

static size_t snap_key(uint8_t *out, const uint8_t *skey, size_t sklen, uint64_t seq)
{
    out[0] = (uint8_t)(sklen >> 8);
    out[1] = (uint8_t)sklen;
    memcpy(out + 2, skey, sklen);
    es__put_u64(out + 2 + sklen, seq);
    return 2 + sklen + 8;
}

/* A small write transaction outside the group commit (snapshots, tamper). */
static int wtxn_run(lm_store *s, size_t bytes, int (*fn)(lm_env *e, MDB_txn *txn, void *arg),
                    void *arg)
{
    lm_env *e = s->e;
    if (s->readonly || e->readonly)
        return es__err(ES_EINVAL, "the store was opened read-only");
    for (int attempt = 0;; attempt++) {
        MDB_txn *txn;
        int rc;
        if ((rc = maybe_grow(e, bytes)) < 0)
            return rc;
        pthread_rwlock_rdlock(&e->resize);
        rc = mdb_txn_begin(e->env, NULL, 0, &txn);
        if (rc == MDB_MAP_RESIZED) {
            pthread_rwlock_unlock(&e->resize);
            if ((rc = set_mapsize(e, 0, GROW_WAIT_MS)) < 0)
                return rc;
            continue;
        }
        if (rc) {
            pthread_rwlock_unlock(&e->resize);
            return lm_err(rc, "beginning a write");
        }
        rc = fn(e, txn, arg);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        pthread_rwlock_unlock(&e->resize);
        if (rc == MDB_MAP_FULL && attempt < 8) {
            if ((rc = set_mapsize(e, e->mapsize * 2, GROW_WAIT_MS)) < 0)
                return rc;
            continue;
        }
        return IS_ES(rc) ? rc : lm_err_at(e, rc, "writing");
    }
}

/* ---- the key-value table (subscriptions, checkpoints, leases) ----
 *
 * A record is u64be version | value.  Versions come from one counter in the
 * meta table ("kv_version"), so none is ever reused. */

#define KV_VERSION_SIZE 8

static int lm_kv_get(void *be, const uint8_t *key, size_t klen, es_buf *val, uint64_t *version)
{
    lm_env *e = ((lm_store *)be)->e;
    MDB_txn *txn;
    MDB_val k = {klen, (void *)key}, v;
    int rc;
    es_buf_reset(val);
    *version = 0;
    if (!e->has_kv)
        return 0;
    if ((rc = rtxn_begin(e, &txn)) < 0)
        return rc;
    rc = mdb_get(txn, e->kv, &k, &v);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    else if (rc)
        rc = lm_err(rc, "reading a record");
    else if (v.mv_size < KV_VERSION_SIZE)
        rc = es__err(ES_ECORRUPT, "a record of the kv table is %zu bytes", v.mv_size);
    else {
        *version = es__get_u64(v.mv_data);
        rc = es_buf_put(val, (uint8_t *)v.mv_data + KV_VERSION_SIZE, v.mv_size - KV_VERSION_SIZE);
    }
    rtxn_end(e, txn);
    return rc;
}

typedef struct kv_cas_arg {
    const uint8_t *key;
    size_t klen;
    uint64_t expected;
    const uint8_t *val;
    size_t vlen;
    uint64_t version;
} kv_cas_arg;

static int do_kv_cas(lm_env *e, MDB_txn *txn, void *p)
{
    kv_cas_arg *a = p;
    MDB_val k = {a->klen, (void *)a->key}, v;
    int rc = mdb_get(txn, e->kv, &k, &v);
    uint64_t current = 0;
    if (rc == 0) {
        if (v.mv_size < KV_VERSION_SIZE)
            return es__err(ES_ECORRUPT, "a record of the kv table is %zu bytes", v.mv_size);
        current = es__get_u64(v.mv_data);
    } else if (rc != MDB_NOTFOUND)
        return rc;
    if (current != a->expected)
        return es__err(ES_ECONFLICT, "record changed since it was read");
    if (!a->val) {
        a->version = 0;
        return current ? mdb_del(txn, e->kv, &k, NULL) : 0;
    }
    MDB_val ck = {10, "kv_version"}, cv;
    uint64_t next = 1;
    if ((rc = mdb_get(txn, e->meta, &ck, &cv)) == 0 && cv.mv_size == 8)
        next = es__get_u64(cv.mv_data) + 1;
    else if (rc && rc != MDB_NOTFOUND)
        return rc;
    uint8_t nb[8];
    es__put_u64(nb, next);
    cv.mv_size = 8;
    cv.mv_data = nb;
    if ((rc = mdb_put(txn, e->meta, &ck, &cv, 0)))
        return rc;
    v.mv_size = KV_VERSION_SIZE + a->vlen;
    if ((rc = mdb_put(txn, e->kv, &k, &v, MDB_RESERVE)))
        return rc;
    es__put_u64(v.mv_data, next);
    if (a->vlen)
        memcpy((uint8_t *)v.mv_data + KV_VERSION_SIZE, a->val, a->vlen);
    a->version = next;
    return 0;
}

static int lm_kv_cas(void *be, const uint8_t *key, size_t klen, uint64_t expected,
                     const uint8_t *val, size_t vlen, uint64_t *version)
{
    lm_store *s = be;
    if (!s->e->has_kv)
        return es__err(ES_EINVAL, "the store was opened read-only");
    kv_cas_arg a = {key, klen, expected, val, vlen, 0};
    int rc = wtxn_run(s, vlen + klen + 1024, do_kv_cas, &a);
    if (rc == 0)
        *version = a.version;
    return rc;
}

typedef struct kv_row {
    uint8_t *key, *val;
    size_t klen, vlen;
    uint64_t version;
} kv_row;

static int lm_kv_list(void *be, const uint8_t *prefix, size_t plen,
                      int (*fn)(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                                uint64_t version, void *payload),
                      void *payload)
{
    lm_env *e = ((lm_store *)be)->e;
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k = {plen, (void *)prefix}, v;
    kv_row *rows = NULL;
    size_t n = 0, cap = 0;
    int rc;
    if (!e->has_kv)
        return 0;
    /* Copy the rows, then call fn outside the read transaction (fn may
     * write to the store). */
    if ((rc = rtxn_begin(e, &txn)) < 0)
        return rc;
    if ((rc = mdb_cursor_open(txn, e->kv, &c))) {
        rtxn_end(e, txn);
        return lm_err(rc, "listing records");
    }
    for (rc = mdb_cursor_get(c, &k, &v, plen ? MDB_SET_RANGE : MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (!es__has_prefix(k.mv_data, k.mv_size, prefix, plen))
            break;
        if (v.mv_size < KV_VERSION_SIZE) {
            rc = es__err(ES_ECORRUPT, "a record of the kv table is %zu bytes", v.mv_size);
            break;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            kv_row *p = es__realloc(rows, nc * sizeof *p);
            if (!p) {
                rc = es__err(ES_ENOMEM, "out of memory listing records");
                break;
            }
            rows = p;
            cap = nc;
        }
        kv_row *r = &rows[n];
        r->klen = k.mv_size;
        r->vlen = v.mv_size - KV_VERSION_SIZE;
        r->key = es__malloc(r->klen ? r->klen : 1);
        r->val = es__malloc(r->vlen ? r->vlen : 1);
        if (!r->key || !r->val) {
            free(r->key);
            free(r->val);
            rc = es__err(ES_ENOMEM, "out of memory listing records");
            break;
        }
        memcpy(r->key, k.mv_data, r->klen);
        memcpy(r->val, (uint8_t *)v.mv_data + KV_VERSION_SIZE, r->vlen);
        r->version = es__get_u64(v.mv_data);
        n++;
    }
    mdb_cursor_close(c);
    rtxn_end(e, txn);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    else if (!IS_ES(rc))
        rc = lm_err(rc, "listing records");
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) {
            int u =
                fn(rows[i].key, rows[i].klen, rows[i].val, rows[i].vlen, rows[i].version, payload);
            if (u)
                rc = es__cb_rc(u);
        }
        free(rows[i].key);
        free(rows[i].val);
    }
    free(rows);
    return rc;
}

typedef struct snap_put_arg {
    const uint8_t *skey;
    size_t sklen;
    const es__snap *snap;
} snap_put_arg;

static int do_snap_put(lm_env *e, MDB_txn *txn, void *p)
{
    snap_put_arg *a = p;
    uint8_t kb[2 + ES_MAX_VIEW_NAME + 1 + 4 + ES_MAX_VIEW_KEY + 8];
    MDB_val k = {snap_key(kb, a->skey, a->sklen, a->snap->seq), kb}, v;
    v.mv_size = 9 + a->snap->len;
    int rc = mdb_put(txn, e->snaps, &k, &v, MDB_RESERVE);
    if (rc)
        return rc;
    uint8_t *d = v.mv_data;
    d[0] = a->snap->state;
    es__put_u64(d + 1, (uint64_t)a->snap->time_us);
    if (a->snap->len)
        memcpy(d + 9, a->snap->data, a->snap->len);
    return 0;
}

static int lm_snap_put(void *be, const uint8_t *skey, size_t sklen, const es__snap *snap)
{
    snap_put_arg a = {skey, sklen, snap};
    return wtxn_run(be, snap->len + 1024, do_snap_put, &a);
}

static int lm_snap_get(void *be, const uint8_t *skey, size_t sklen, uint64_t max_seq,
                       int64_t max_time, es__snap *out, es_buf *buf)
{
    lm_env *e = ((lm_store *)be)->e;
    uint8_t kb[2 + ES_MAX_VIEW_NAME + 1 + 4 + ES_MAX_VIEW_KEY + 8];
    size_t kl = snap_key(kb, skey, sklen, max_seq);
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k = {kl, kb}, v;
    int rc, found = ES_ENOTFOUND;

    if ((rc = rtxn_begin(e, &txn)) < 0)
        return rc;
    if ((rc = mdb_cursor_open(txn, e->snaps, &c))) {
        rtxn_end(e, txn);
        return lm_err(rc, "reading snapshots");
    }
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && !(k.mv_size == kl && memcmp(k.mv_data, kb, kl) == 0))
        rc = mdb_cursor_get(c, &k, &v, MDB_PREV); /* step back below max_seq */
    else if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    while (rc == 0 && k.mv_size == kl && memcmp(k.mv_data, kb, kl - 8) == 0) {
        uint64_t seq = es__get_u64((uint8_t *)k.mv_data + kl - 8);
        if (v.mv_size < 9) {
            found = es__err(ES_ECORRUPT, "snapshot record is too short");
            break;
        }
        int64_t t = (int64_t)es__get_u64((uint8_t *)v.mv_data + 1);
        if (seq <= max_seq && t <= max_time) {
            es_buf_reset(buf);
            if ((found = es_buf_put(buf, (uint8_t *)v.mv_data + 9, v.mv_size - 9)) == 0)
                *out = (es__snap){((uint8_t *)v.mv_data)[0], seq, t, buf->data, v.mv_size - 9};
            break;
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
    }
    if (rc && rc != MDB_NOTFOUND)
        found = lm_err(rc, "reading snapshots");
    mdb_cursor_close(c);
    rtxn_end(e, txn);
    return found;
}

static int lm_snap_list(void *be, const uint8_t *skey, size_t sklen, uint64_t *seqs, size_t cap,
                        size_t *n)
{
    lm_env *e = ((lm_store *)be)->e;
    uint8_t kb[2 + ES_MAX_VIEW_NAME + 1 + 4 + ES_MAX_VIEW_KEY + 8];
    size_t kl = snap_key(kb, skey, sklen, 0);
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k = {kl, kb}, v;
    int rc;

    *n = 0;
    if ((rc = rtxn_begin(e, &txn)) < 0)
        return rc;
    if ((rc = mdb_cursor_open(txn, e->snaps, &c)) == 0) {
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && *n < cap && k.mv_size == kl && memcmp(k.mv_data, kb, kl - 8) == 0) {
            seqs[(*n)++] = es__get_u64((uint8_t *)k.mv_data + kl - 8);
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(c);
    }
    rtxn_end(e, txn);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : lm_err(rc, "listing snapshots");
}

typedef struct snap_del_arg {
    const uint8_t *skey;
    size_t sklen;
    uint64_t seq;
} snap_del_arg;

static int do_snap_del(lm_env *e, MDB_txn *txn, void *p)
{
    snap_del_arg *a = p;
    uint8_t kb[2 + ES_MAX_VIEW_NAME + 1 + 4 + ES_MAX_VIEW_KEY + 8];
    MDB_val k = {snap_key(kb, a->skey, a->sklen, a->seq), kb};
    int rc = mdb_del(txn, e->snaps, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int lm_snap_del(void *be, const uint8_t *skey, size_t sklen, uint64_t seq)
{
    snap_del_arg a = {skey, sklen, seq};
    return wtxn_run(be, 4096, do_snap_del, &a);
}

/* ---- tamper (tests of es_verify) ---- */

typedef struct tamper_arg {
    uint64_t position;
    int field;
    size_t offset;
} tamper_arg;

static void flip(uint8_t *p, size_t size, size_t offset)
{
    if (size)
        p[offset % size] ^= 0x01;
}

static int do_tamper(lm_env *e, MDB_txn *txn, void *p)
{
    tamper_arg *a = p;
    MDB_val v;
    es_event ev;
    int rc;
    uint8_t kb[8];
    es__put_u64(kb, a->position);
    MDB_val k = {8, kb};
    if ((rc = mdb_get(txn, e->log, &k, &v)))
        return rc == MDB_NOTFOUND ? es__err(ES_ENOTFOUND, "no event there") : rc;
    uint8_t *r = es__malloc(v.mv_size);
    if (!r)
        return ES_ENOMEM;
    memcpy(r, v.mv_data, v.mv_size);
    size_t n = v.mv_size;
    if ((rc = es__rec_decode(&ev, r, n, a->position)) < 0)
        goto done;
    switch (a->field) {
    case ES__F_KEY:
        flip(r + ES__REC_HDR, ev.stream_len, a->offset);
        break;
    case ES__F_SEQ:
        flip(r + ES__REC_AT_SEQ, 8, a->offset);
        break;
    case ES__F_TIME:
        flip(r + ES__REC_AT_TIME, 8, a->offset);
        break;
    case ES__F_ID:
        flip(r + ES__REC_AT_ID, ES_ID_SIZE, a->offset);
        break;
    case ES__F_HASH:
        flip(r + ES__REC_AT_HASH, ES_HASH_SIZE, a->offset);
        break;
    case ES__F_TYPE:
        flip(r + ES__REC_HDR + ev.stream_len, ev.type_len, a->offset);
        break;
    case ES__F_DATA:
        flip((uint8_t *)ev.data, ev.data_len, a->offset);
        break;
    case ES__F_META:
        flip((uint8_t *)ev.meta, ev.meta_len, a->offset);
        break;
    case ES__F_POSITION: {
        /* The stored copy of a position is the stream's index entry. */
        srow row;
        MDB_val lk, lv;
        MDB_cursor *c;
        uint64_t last = 0;
        if ((rc = srow_get(e, txn, ev.stream, ev.stream_len, &row)) < 0)
            goto done;
        if ((rc = mdb_cursor_open(txn, e->log, &c)))
            goto done;
        if (mdb_cursor_get(c, &lk, &lv, MDB_LAST) == 0)
            last = es__get_u64(lk.mv_data);
        mdb_cursor_close(c);
        uint64_t other = a->position % last + 1;
        if (ev.seq > row.head - row.n_tail) {
            row.tail[ev.seq - (row.head - row.n_tail) - 1] = other;
            uint8_t rowb[44 + 8 * CHUNK];
            MDB_val sk = {ev.stream_len, (void *)ev.stream}, sv = {srow_encode(rowb, &row), rowb};
            rc = mdb_put(txn, e->streams, &sk, &sv, 0);
        } else {
            uint64_t first = ((ev.seq - 1) / CHUNK) * CHUNK + 1;
            uint8_t ck[ES_MAX_KEY + 8], chunk[CHUNK * 8];
            memcpy(ck, ev.stream, ev.stream_len);
            es__put_u64(ck + ev.stream_len, first);
            MDB_val ik = {ev.stream_len + 8, ck}, iv;
            if ((rc = mdb_get(txn, e->index, &ik, &iv)))
                goto done;
            if (iv.mv_size != sizeof chunk) {
                rc = es__err(ES_ECORRUPT, "index chunk is malformed");
                goto done;
            }
            memcpy(chunk, iv.mv_data, sizeof chunk);
            es__put_u64(chunk + 8 * (ev.seq - first), other);
            iv = (MDB_val){sizeof chunk, chunk};
            rc = mdb_put(txn, e->index, &ik, &iv, 0);
        }
        goto done;
    }
    default:
        rc = es__err(ES_EINVAL, "unknown field");
        goto done;
    }
    v = (MDB_val){n, r};
    rc = mdb_put(txn, e->log, &k, &v, 0);
done:
    free(r);
    return rc;
}

static int lm_tamper(void *be, uint64_t position, int field, size_t offset)
{
    tamper_arg a = {position, field, offset};
    return wtxn_run(be, 1 << 20, do_tamper, &a);
}

/* es_store_backup: LMDB copies a live environment from one read
 * transaction (mdb_env_copy2), so writers go on and the copy is one
 * consistent state; MDB_CP_COMPACT leaves free pages out.  The resize lock
 * is held shared, as for any transaction, so the map does not move under
 * the copy. */
static int lm_backup(void *be, const char *dir)
{
    lm_env *e = ((lm_store *)be)->e;
    char f[4200];
    struct stat sb;
    int rc;

    if (strlen(dir) > 4000)
        return es__err(ES_EINVAL, "backup directory name is too long");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return es__err(ES_EIO, "cannot create %s: %s", dir, strerror(errno));
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return es__err(ES_EINVAL, "%s is not a directory", dir);
    snprintf(f, sizeof f, "%s/data.mdb", dir);
    if (access(f, F_OK) == 0)
        return es__err(ES_EINVAL, "%s already holds a store; a backup goes to a new directory",
                       dir);
    for (int tries = 0;; tries++) {
        pthread_rwlock_rdlock(&e->resize);
        rc = mdb_env_copy2(e->env, dir, MDB_CP_COMPACT);
        pthread_rwlock_unlock(&e->resize);
        if (rc != MDB_MAP_RESIZED || tries > 0)
            break;
        unlink(f); /* a partial copy */
        if ((rc = set_mapsize(e, 0, GROW_WAIT_MS)) < 0)
            return rc;
    }
    if (rc != 0) {
        unlink(f);
        return lm_err(rc, "copying the store");
    }
    return 0;
}

const es__backend es__backend_lmdb = {
    .name = "lmdb",
    .open = lm_open,
    .close = lm_close,
    .append = lm_append,
    .head = lm_head,
    .last_position = lm_last_position,
    .wait = lm_wait,
    .stream_cursor = lm_stream_cursor,
    .log_cursor = lm_log_cursor,
    .streams = lm_streams,
    .stats = lm_stats,
    .snap_put = lm_snap_put,
    .snap_get = lm_snap_get,
    .snap_list = lm_snap_list,
    .snap_del = lm_snap_del,
    .tamper = lm_tamper,
    .kv_get = lm_kv_get,
    .kv_cas = lm_kv_cas,
    .kv_list = lm_kv_list,
    .backup = lm_backup,
    .log_time_ordered = true, /* LMDB has one writer: positions and times in commit order */
};
