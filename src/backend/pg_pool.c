/*
 * pg_pool.c — connections of the PostgreSQL store: connecting with our
 * session settings, preparing the statements, the pool that lends one
 * connection per call, and the mapping of server errors to ES_E* codes.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t es__pg_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *es__pg_msg(PGconn *c)
{
    static __thread char buf[300];
    const char *m = c ? PQerrorMessage(c) : "out of memory";
    snprintf(buf, sizeof buf, "%s", m && *m ? m : "unknown error");
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return buf;
}

/* ---- connections ---- */

/* Wait for the socket; 0 ready, ES_ETIMEDOUT at the deadline. */
static int wait_sock(PGconn *c, short events, int64_t deadline)
{
    struct pollfd pfd = {PQsocket(c), events, 0};
    for (;;) {
        int64_t left = deadline - es__pg_mono_ms();
        if (left <= 0)
            return ES_ETIMEDOUT;
        int r = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return ES_EIO;
    }
}

int es__pg_finish(pg_store *s, pg_conn *pc, PGresult **out)
{
    PGconn *c = pc->c;
    int64_t deadline = es__pg_mono_ms() + s->timeout_ms + 2000;
    PGresult *res = NULL, *r;
    int f, w;

    *out = NULL;
    while ((f = PQflush(c)) == 1) {
        if ((w = wait_sock(c, POLLOUT | POLLIN, deadline)) < 0)
            goto waited;
        if (!PQconsumeInput(c))
            goto lost;
    }
    if (f < 0)
        goto lost;
    for (;;) {
        while (PQisBusy(c)) {
            if ((w = wait_sock(c, POLLIN, deadline)) < 0)
                goto waited;
            if (!PQconsumeInput(c))
                goto lost;
        }
        if (!(r = PQgetResult(c)))
            break;
        if (res && PQresultStatus(res) == PGRES_FATAL_ERROR) {
            PQclear(r); /* keep the first error */
        } else {
            PQclear(res);
            res = r;
        }
    }
    if (!res)
        goto lost;
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        *out = res;
        return 0;
    }
    const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    char m[240], state[8];
    snprintf(m, sizeof m, "%s", msg ? msg : PQresStatus(st));
    snprintf(state, sizeof state, "%s", sqlstate ? sqlstate : "");
    PQclear(res);
    res = NULL;
    if (PQstatus(c) != CONNECTION_OK)
        goto lost;
    if (!strcmp(state, "23505") || !strcmp(state, "40001") || !strcmp(state, "40P01"))
        return ES__PG_RETRY;
    if (!strncmp(state, "08", 2) || !strncmp(state, "57P", 3)) {
        pc->broken = true;
        return es__err(ES_EUNAVAILABLE, "postgres: %s (SQLSTATE %s)", m, state);
    }
    if (!strcmp(state, "57014")) /* statement_timeout: the server rolled the statement back */
        return es__err(ES_ETIMEDOUT,
                       "postgres: the server cancelled a statement after %d ms (nothing of it was "
                       "written): %s",
                       s->timeout_ms, m);
    if (!strcmp(state, "53100"))
        return es__err(ES_EFULL, "postgres: the server's disk is full: %s", m);
    if (!strcmp(state, "53200"))
        return es__err(ES_ENOMEM, "postgres: the server is out of memory: %s", m);
    if (!strncmp(state, "53", 2))
        return es__err(ES_EUNAVAILABLE, "postgres: %s (SQLSTATE %s)", m, state);
    return es__err(ES_EIO, "postgres: %s (SQLSTATE %s)", m, state);
waited:
    if (w != ES_ETIMEDOUT)
        goto lost;
    pc->broken = true;
    {
        PGcancel *cn = PQgetCancel(c);
        char eb[256];
        if (cn) {
            PQcancel(cn, eb, sizeof eb);
            PQfreeCancel(cn);
        }
    }
    PQclear(res);
    return es__err(ES_ETIMEDOUT,
                   "postgres: no answer within %d ms; the call's outcome is unknown (an append "
                   "may be retried with the same event ids)",
                   s->timeout_ms + 2000);
lost:
    pc->broken = true;
    PQclear(res);
    return es__err(ES_EUNAVAILABLE,
                   "postgres: lost the connection (%s); the call's outcome is unknown (an append "
                   "may be retried with the same event ids)",
                   es__pg_msg(c));
}

int es__pg_run(pg_store *s, pg_conn *pc, int stmt, const pgp *p, PGresult **out)
{
    if (!PQsendQueryPrepared(pc->c, es__pg_stmts[stmt].name, p ? p->n : 0, p ? p->v : NULL,
                             p ? p->l : NULL, p ? p->f : NULL, 1)) {
        pc->broken = true;
        return es__err(ES_EUNAVAILABLE, "postgres: cannot send a query: %s", es__pg_msg(pc->c));
    }
    return es__pg_finish(s, pc, out);
}

/* Simple SQL (text results), for setup and transaction control. */
int es__pg_run_sql(pg_store *s, pg_conn *pc, const char *sql, PGresult **out)
{
    PGresult *r = NULL;
    if (!PQsendQuery(pc->c, sql)) {
        pc->broken = true;
        return es__err(ES_EUNAVAILABLE, "postgres: cannot send a query: %s", es__pg_msg(pc->c));
    }
    int rc = es__pg_finish(s, pc, &r);
    if (rc == ES__PG_RETRY)
        rc = es__err(ES_EIO, "postgres: a concurrent change interfered with '%.60s'", sql);
    if (out)
        *out = r;
    else
        PQclear(r);
    return rc;
}

/* libpq prints the server's WARNING and NOTICE messages on stderr by
 * default: a library must not write on its caller's stderr.  Our
 * statements raise none that a caller could act on (an error is an error
 * result, with its message in es_error_last), so they are dropped. */
static void drop_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

int es__pg_connect(pg_store *s, pg_conn **out)
{
    char tmo[16];
    snprintf(tmo, sizeof tmo, "%d", (s->timeout_ms + 999) / 1000);
    /* Entries before the URI (dbname, expanded) are defaults it may
     * override; `options` after it is the URI's and ours together. */
    const char *kw[] = {"connect_timeout", "application_name", "dbname", "options", NULL};
    const char *val[] = {tmo, "eventsrc", s->conninfo, s->session, NULL};
    pg_conn *pc = es__calloc(1, sizeof *pc);
    if (!pc)
        return es__err(ES_ENOMEM, "out of memory for a connection");
    pc->c = PQconnectdbParams(kw, val, 1);
    if (!pc->c || PQstatus(pc->c) != CONNECTION_OK) {
        int rc = es__err(ES_EUNAVAILABLE, "postgres: cannot connect: %s", es__pg_msg(pc->c));
        PQfinish(pc->c);
        free(pc);
        return rc;
    }
    PQsetNoticeProcessor(pc->c, drop_notice, NULL);
    if (PQserverVersion(pc->c) < 130000) {
        PQfinish(pc->c);
        free(pc);
        return es__err(ES_ENOTSUP, "postgres: the server is older than 13 (needs xid8)");
    }
    *out = pc;
    return 0;
}

int es__pg_prepare_all(pg_store *s, pg_conn *pc)
{
    for (int i = 0; i < S_COUNT; i++) {
        char *sql = es__pg_sql_for(s, es__pg_stmts[i].sql);
        if (!sql)
            return es__err(ES_ENOMEM, "out of memory preparing statements");
        const pg_stmt *st = &es__pg_stmts[i];
        int ok = PQsendPrepare(pc->c, st->name, sql, st->n, st->types);
        free(sql);
        PGresult *r;
        int rc;
        if (!ok) {
            pc->broken = true;
            return es__err(ES_EUNAVAILABLE, "postgres: %s", es__pg_msg(pc->c));
        }
        if ((rc = es__pg_finish(s, pc, &r)) != 0)
            return rc > 0 ? es__err(ES_EIO, "postgres: preparing %s failed", st->name) : rc;
        PQclear(r);
    }
    return 0;
}

void es__pg_drop_conn(pg_conn *pc)
{
    if (pc) {
        PQfinish(pc->c);
        free(pc);
    }
}

int es__pg_acquire(pg_store *s, pg_conn **out)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += s->timeout_ms / 1000;
    until.tv_nsec += (long)(s->timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&s->lock);
    while (!s->n_idle && s->n_conns >= s->pool_max) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &until) == ETIMEDOUT) {
            pthread_mutex_unlock(&s->lock);
            return es__err(ES_ETIMEDOUT, "postgres: all %d connections stayed busy for %d ms",
                           s->pool_max, s->timeout_ms);
        }
    }
    pg_conn *pc = NULL;
    if (s->n_idle)
        pc = s->idle[--s->n_idle];
    else
        s->n_conns++;
    pthread_mutex_unlock(&s->lock);

    if (pc && PQstatus(pc->c) == CONNECTION_OK && !pc->broken) {
        *out = pc;
        return 0;
    }
    /* a new connection, or one that failed: connect again */
    es__pg_drop_conn(pc);
    pc = NULL;
    int rc = es__pg_connect(s, &pc);
    if (rc == 0 && (rc = es__pg_prepare_all(s, pc)) != 0) {
        es__pg_drop_conn(pc);
        pc = NULL;
    }
    if (rc != 0) {
        pthread_mutex_lock(&s->lock);
        s->n_conns--;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    *out = pc;
    return 0;
}

void es__pg_release(pg_store *s, pg_conn *pc)
{
    if (!pc)
        return;
    if (!pc->broken && PQtransactionStatus(pc->c) != PQTRANS_IDLE)
        pc->broken = true; /* never hand out a connection inside a transaction */
    pthread_mutex_lock(&s->lock);
    if (pc->broken || PQstatus(pc->c) != CONNECTION_OK) {
        s->n_conns--;
        pthread_mutex_unlock(&s->lock);
        es__pg_drop_conn(pc);
        pthread_mutex_lock(&s->lock);
    } else {
        s->idle[s->n_idle++] = pc;
    }
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}
