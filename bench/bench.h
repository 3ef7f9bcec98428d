/*
 * bench.h — what the parts of es_bench share: the workload's shape, a
 * result row, the run's settings, and small helpers.
 */
#ifndef ES_BENCH_BENCH_H
#define ES_BENCH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <eventsrc.h>

#define PAYLOAD 150
#define STREAMS 1000
#define BATCH 1000
#define ONE_STREAM_EVENTS 10000

typedef struct result {
    char workload[8];
    char system[24];
    double events_per_s;
    double p50_us, p99_us;
    long peak_rss_kb;
    long extra_kb;                  /* W5: RSS added by the scan */
    long anon_kb;                   /* W5: anonymous memory added by the scan */
    double ack_p50_us, ack_p99_us;  /* W9: the appends' own acknowledgement */
    double takeover_ms, flowing_ms; /* W8g: a killed member's partitions owned again, flowing */
    double group_events_per_s;      /* W8g: the group's rate in the run with the kill */
    uint64_t dups;                  /* W8g: events received twice in the run with the kill */
    char note[192];
    int ok;
} result;

typedef struct bench {
    double scale;
    char dir[512];
    int json;
    const char *only;
    const char *systems;
    const char *pg_uri;  /* the PostgreSQL server of eventsrc-pg and pg-raw */
    const char *mdb_uri; /* the database Message DB is installed in */
    unsigned run_id;     /* names this run's schemas and streams on the server */
    result results[96];
    int n_results;
} bench;

double now_s(void);
void percentiles(double *lat, size_t n, result *r);
/* A 16-byte stream id for stream number i. */
void stream_id(uint8_t out[16], unsigned i);
/* The 150 payload bytes of event n (printable). */
void payload(uint8_t out[PAYLOAD], uint64_t n);
int fail(result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t scaled(const bench *b, double full, uint64_t min);

/* Events W3 writes on PostgreSQL systems (a fifth of the embedded run's). */
uint64_t pg_w3_events(const bench *b);

/* W9, live latency append -> subscriber (bench_live.c). */
int run_w9(const bench *b, const char *sys, result *r);
/* W9's goals, as rows of the targets table. */
void w9_targets(const bench *b);

/* W8's batch size: 100 (the default) for "W8", 1000 for "W8k". */
uint32_t w8_batch(const char *w);
/* W8's checkpoint interval: 0 (every ack, the default) but 1000 ms for "W8c". */
uint32_t w8_checkpoint_ms(const char *w);

/* W8g, a consumer group of 4 member processes and a takeover (bench_group.c). */
int run_w8g(const bench *b, const char *sys, result *r);
/* An eventsrc store of this run: data set `name` of `system` (bench.c). */
int es_open_bench(es_store **st, const bench *b, const char *system, const char *name, result *r);
/* eventsrc-mem with W3's data (and W4's stream) loaded (bench.c). */
int mem_prepare(const bench *b, es_store **st, result *r);

/*
 * One interface per system: W1–W5 are written once over these operations
 * (bench.c), and each system implements them once — eventsrc (every store),
 * lmdb-raw and sqlite in bench.c, pg-raw and message-db in bench_pg.c.  Streams are numbers (stream_id); ONE_STREAM is W3's extra
 * stream of 10,000 events that W4 reads.  Seqs are the new events' own
 * (1-based); the payload of the i-th event of a call is payload(base + i).
 */

#define ONE_STREAM 999999u

typedef struct emb emb;
typedef struct emb_ops {
    /* `set` names the data set (its file in --dir); `reading`: W3's data is
     * wanted (eventsrc-mem, which keeps nothing, loads it) */
    int (*open)(emb *h, const bench *b, const char *sys, const char *set, bool reading, result *r);
    /* a handle for one more writer thread (SQLite: its own connection) */
    int (*thread)(emb **out, emb *h, result *r);
    /* n events, one on each of streams[0..n), all with seq `seq` */
    int (*append_spread)(emb *h, const unsigned *streams, size_t n, uint64_t seq, uint64_t base,
                         result *r);
    /* n events on one stream, seqs first, first + 1, … */
    int (*append_run)(emb *h, unsigned stream, size_t n, uint64_t first, uint64_t base, result *r);
    /* read one stream whole: its count and a sum of a byte of each event */
    int (*read_stream)(emb *h, unsigned stream, uint64_t *cnt, uint64_t *sum, result *r);
    /* scan every event in log order; `every` is called each 65,536 events */
    int (*scan)(emb *h, uint64_t *cnt, uint64_t *sum, void (*every)(void *), void *arg, result *r);
    void (*close)(emb *h);
    int w4_reps;         /* W4's reads (fewer over the network) */
    const char *writers; /* W2's note: "writers", or "connections" */
    const char *w3_note; /* more words for W3's and W4's notes, or NULL */
    const char *w4_note;
} emb_ops;

struct emb {
    const emb_ops *ops;
    bool thread; /* a handle of emb_ops.thread: shares the parent's store */
    es_store *st;
    struct MDB_env *env;
    unsigned int dbi; /* MDB_dbi */
    struct sqlite3 *db;
    struct sqlite3_stmt *ins, *rd, *sc; /* insert, read a stream, scan */
    void *pg;                           /* bench_pg.c's state */
    char path[600];
};

#ifdef ES_HAVE_PG
extern const emb_ops PGRAW_OPS, MDB_OPS; /* pg-raw and message-db (bench_pg.c) */
#endif

/* W1–W9 on eventsrc-lmdb, eventsrc-mem, eventsrc-pg, lmdb-raw and sqlite
 * (bench.c; W8g and W9 in bench_group.c and bench_live.c). */
int emb_run(const bench *b, const char *w, const char *sys, result *r);

/* W1–W4 on pg-raw and message-db (through emb_run), W8 on message-db
 * (bench_pg.c). */
int pgb_run(const bench *b, const char *w, const char *sys, result *r);

#endif
