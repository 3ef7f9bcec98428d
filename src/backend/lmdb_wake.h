/*
 * lmdb_wake.h — a wake-up word shared by every process that opens one lmdb
 * store, so that a reader waiting for new events (es_log_wait) sleeps until
 * a writer commits instead of polling.  See lmdb_wake.c for the mechanism.
 */
#ifndef ES_LMDB_WAKE_H
#define ES_LMDB_WAKE_H

#include <stdbool.h>
#include <stdint.h>

/* The file next to data.mdb and lock.mdb that holds the word. */
#define ES__WAKE_FILE "eventsrc-wake"

/* Map DIR/eventsrc-wake (created when absent and `may_create`), shared.
 * Returns the word, or NULL when it cannot be had (a read-only directory
 * without the file, a full disk, another system than Linux): the caller
 * then polls.  Never an error: waking is an optimisation. */
uint32_t *es__wake_map(const char *dir, bool may_create);
void es__wake_unmap(uint32_t *word);

/* After a commit of events: bump the word and wake every waiter, in every
 * process.  NULL: nothing. */
void es__wake_bump(uint32_t *word);

/* The word's value now (0 for NULL); read it BEFORE checking for new
 * events, then sleep on it. */
uint32_t es__wake_seen(const uint32_t *word);

/* Sleep until the word moves away from `seen`, or `ms` pass, or a spurious
 * wake-up (the caller re-checks in any case).  NULL: just sleeps. */
void es__wake_sleep(uint32_t *word, uint32_t seen, int ms);

#endif
