/*
 * projfile.c — projection files: a schema and, per event type, SQL
 * statements whose named parameters (:stream, :seq, :data.name …) are bound
 * from each event.  The format is described in doc/projections.md.
 *
 * Parameters are found by a small SQL lexer that skips strings, quoted
 * identifiers and comments, and are replaced by positional placeholders
 * (?N for SQLite, $N for PostgreSQL), so event values are always bound,
 * never pasted into SQL text.  Every statement remembers the line it starts on, so that every
 * error, at load time or while applying events, names FILE:LINE.
 */
#include "project_int.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#ifdef ES_PROJ_HAVE_PG
#include <libpq-fe.h>
#endif
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PF_MAX_FILE (16u << 20) /* a projection file is text: 16 MiB at most */
#define PF_MAX_ROUTES 1024      /* distinct event types remembered */

typedef enum pkind {
    P_STREAM,
    P_SEQ,
    P_POSITION,
    P_TIME,
    P_TYPE,
    P_ID,
    P_DATA,
    P_META,
} pkind;

static const char *const field_names[] = {"stream", "seq", "position", "time",
                                          "type",   "id",  "data",     "meta"};

typedef struct pstep {
    char *key; /* an object member, or NULL for an array index */
    size_t index;
} pstep;

typedef struct param {
    char *text; /* as written, without the colon: "data.name" */
    pkind kind;
    pstep *steps; /* data/meta paths */
    size_t n_steps;
    bool optional; /* written with a trailing '?': missing is NULL */
} param;

typedef struct stmt {
    char *sql;   /* with ?N placeholders (SQLite) */
    char *pgsql; /* the same with $N (PostgreSQL) */
    int line;
    param *params;
    size_t n_params;
    sqlite3_stmt *prepared;
} stmt;

typedef struct section {
    char **types; /* NULL with all: every type */
    size_t n_types;
    bool all;
    size_t first, n; /* its statements in f->stmts */
} section;

typedef struct route {
    char *type;
    size_t *idx;
    size_t n;
} route;

struct es_proj_file {
    char *filename;
    char *name;
    char *prefix;
    char *definition;
    stmt *schema;
    size_t n_schema;
    stmt *stmts;
    size_t n_stmts;
    section *secs;
    size_t n_secs;
    route *routes;
    size_t n_routes;
    sqlite3 *prepared_on;
    void *pg_prepared_on; /* the PGconn its statements are prepared on */
    const char **pg_vals; /* a statement's parameter values, */
    char (*pg_num)[32];   /* and room for those written as numbers */
    size_t pg_max_params; /* of the statement with the most */
    unsigned pg_gen;      /* rounds of preparing, in the statements' names */
    es_proj_def def;
};

/* ---- growing arrays and text ---- */

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 8;
    void *q = realloc(*p, c * size);
    if (!q)
        return es_proj__err(ES_ENOMEM, "out of memory");
    *p = q;
    *cap = c;
    return 0;
}

typedef struct text {
    char *s;
    size_t len, cap;
} text;

static int text_add(text *t, const char *p, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t c = t->cap ? t->cap : 256;
        while (c < t->len + n + 1)
            c *= 2;
        char *q = realloc(t->s, c);
        if (!q)
            return es_proj__err(ES_ENOMEM, "out of memory");
        t->s = q;
        t->cap = c;
    }
    memcpy(t->s + t->len, p, n);
    t->len += n;
    t->s[t->len] = '\0';
    return 0;
}

static int text_str(text *t, const char *s)
{
    return text_add(t, s, strlen(s));
}

static char *dupn(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* ---- freeing ---- */

static void stmt_clear(stmt *s)
{
    for (size_t i = 0; i < s->n_params; i++) {
        for (size_t k = 0; k < s->params[i].n_steps; k++)
            free(s->params[i].steps[k].key);
        free(s->params[i].steps);
        free(s->params[i].text);
    }
    free(s->params);
    free(s->sql);
    free(s->pgsql);
    sqlite3_finalize(s->prepared);
}

static void finalize_all(es_proj_file *f)
{
    for (size_t i = 0; i < f->n_stmts; i++) {
        sqlite3_finalize(f->stmts[i].prepared);
        f->stmts[i].prepared = NULL;
    }
    f->prepared_on = NULL;
}

void es_proj_file_free(es_proj_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_schema; i++)
        stmt_clear(&f->schema[i]);
    for (size_t i = 0; i < f->n_stmts; i++)
        stmt_clear(&f->stmts[i]);
    for (size_t i = 0; i < f->n_secs; i++) {
        for (size_t k = 0; k < f->secs[i].n_types; k++)
            free(f->secs[i].types[k]);
        free(f->secs[i].types);
    }
    for (size_t i = 0; i < f->n_routes; i++) {
        free(f->routes[i].type);
        free(f->routes[i].idx);
    }
    free(f->routes);
    free(f->schema);
    free(f->stmts);
    free(f->secs);
    free(f->filename);
    free(f->name);
    free(f->prefix);
    free(f->definition);
    free(f->pg_vals);
    free(f->pg_num);
    free(f);
}

/* ---- parameters ---- */

static bool ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool ident_char(char c)
{
    return ident_start(c) || (c >= '0' && c <= '9');
}

/*
 * Parse the parameter at p (after its ':'), up to end: NAME ('.' NAME |
 * '[' DIGITS ']')* '?'?.  *len is how many bytes it took.
 */
static int parse_param(param *out, const char *p, const char *end, size_t *len,
                       const es_proj_file *f, int line)
{
    const char *s = p;
    size_t cap = 0;
    memset(out, 0, sizeof *out);
    while (s < end && ident_char(*s))
        s++;
    size_t nlen = (size_t)(s - p);
    int kind = -1;
    for (size_t k = 0; k < sizeof field_names / sizeof *field_names; k++)
        if (strlen(field_names[k]) == nlen && memcmp(field_names[k], p, nlen) == 0)
            kind = (int)k;
    /* The whole parameter as written, for the messages. */
    const char *q = s;
    while (q < end && (ident_char(*q) || *q == '.' || *q == '[' || *q == ']'))
        q++;
    if (kind < 0)
        return es_proj__err(ES_EINVAL,
                            "%s:%d: unknown event field ':%.*s' (the fields are :stream :seq "
                            ":position :time :type :id :data :meta, and :data.PATH :meta.PATH)",
                            f->filename, line, (int)(q - p), p);
    out->kind = (pkind)kind;
    while (s < end && (*s == '.' || *s == '[')) {
        if (out->kind != P_DATA && out->kind != P_META)
            return es_proj__err(ES_EINVAL,
                                "%s:%d: ':%.*s': only :data and :meta have paths into their "
                                "JSON",
                                f->filename, line, (int)(q - p), p);
        if (grow((void **)&out->steps, &cap, out->n_steps, sizeof *out->steps) < 0)
            return ES_ENOMEM;
        pstep *st = &out->steps[out->n_steps];
        memset(st, 0, sizeof *st);
        if (*s == '.') {
            const char *k = ++s;
            while (s < end && ident_char(*s))
                s++;
            if (s == k)
                return es_proj__err(ES_EINVAL, "%s:%d: ':%.*s': a name must follow '.'",
                                    f->filename, line, (int)(q - p), p);
            if (!(st->key = dupn(k, (size_t)(s - k))))
                return es_proj__err(ES_ENOMEM, "out of memory");
        } else {
            const char *d = ++s;
            size_t v = 0;
            while (s < end && *s >= '0' && *s <= '9' && v < 1000000000)
                v = v * 10 + (size_t)(*s++ - '0');
            if (s == d || s >= end || *s != ']')
                return es_proj__err(ES_EINVAL, "%s:%d: ':%.*s': '[' takes an index: [0], [1] …",
                                    f->filename, line, (int)(q - p), p);
            s++;
            st->index = v;
        }
        out->n_steps++;
    }
    if (!(out->text = dupn(p, (size_t)(s - p))))
        return es_proj__err(ES_ENOMEM, "out of memory");
    if (s < end && *s == '?') {
        out->optional = true;
        s++;
    }
    *len = (size_t)(s - p);
    return 0;
}

/* The statement's placeholder number of a parameter (the same text twice is one). */
static int stmt_param(stmt *st, size_t *cap, param *p, size_t *num)
{
    for (size_t i = 0; i < st->n_params; i++) {
        if (strcmp(st->params[i].text, p->text) == 0 && st->params[i].optional == p->optional) {
            *num = i + 1;
            for (size_t k = 0; k < p->n_steps; k++)
                free(p->steps[k].key);
            free(p->steps);
            free(p->text);
            return 0;
        }
    }
    if (grow((void **)&st->params, cap, st->n_params, sizeof *st->params) < 0)
        return ES_ENOMEM;
    st->params[st->n_params++] = *p;
    *num = st->n_params;
    return 0;
}

/* ---- splitting a section's SQL into statements ---- */

/*
 * Split body (the section's lines, first_line the number of its first) into
 * statements at ';' outside strings, quoted names and comments, replacing
 * each :parameter with ?N.  Appends to *out.
 */
/* Add to both forms of a statement. */
static int emit(text *a, text *b, const char *p, size_t n)
{
    int rc = text_add(a, p, n);
    return rc < 0 ? rc : text_add(b, p, n);
}

static int split_sql(es_proj_file *f, const char *body, size_t blen, int first_line,
                     bool params_allowed, stmt **out, size_t *n_out, size_t *cap_out)
{
    const char *p = body, *end = body + blen;
    int line = first_line;
    stmt cur;
    size_t pcap = 0;
    text sql = {0}, pgs = {0}; /* the statement with ?N, and with $N */
    bool content = false;
    int rc = 0;

    memset(&cur, 0, sizeof cur);
    while (p <= end) {
        char c = p < end ? *p : ';'; /* the end closes the last statement */
        if (c == ';') {
            if (content) {
                if ((rc = grow((void **)out, cap_out, *n_out, sizeof **out)) < 0)
                    goto done;
                cur.sql = sql.s;
                cur.pgsql = pgs.s;
                sql = pgs = (text){0};
                (*out)[(*n_out)++] = cur;
                memset(&cur, 0, sizeof cur);
                pcap = 0;
            } else {
                free(sql.s);
                free(pgs.s);
                sql = pgs = (text){0};
            }
            content = false;
            p++;
            continue;
        }
        if (c == '\n') {
            line++;
            if ((rc = emit(&sql, &pgs, p++, 1)) < 0)
                goto done;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            if ((rc = emit(&sql, &pgs, p++, 1)) < 0)
                goto done;
            continue;
        }
        if (c == '-' && p + 1 < end && p[1] == '-') {
            while (p < end && *p != '\n')
                p++;
            continue;
        }
        if (c == '/' && p + 1 < end && p[1] == '*') {
            int start = line;
            p += 2;
            while (p + 1 < end && !(p[0] == '*' && p[1] == '/')) {
                if (*p == '\n')
                    line++, emit(&sql, &pgs, "\n", 1);
                p++;
            }
            if (p + 1 >= end) {
                rc = es_proj__err(ES_EINVAL, "%s:%d: unterminated /* comment", f->filename, start);
                goto done;
            }
            p += 2;
            if ((rc = emit(&sql, &pgs, " ", 1)) < 0)
                goto done;
            continue;
        }
        if (!content) {
            content = true;
            cur.line = line;
        }
        if (c == '\'' || c == '"' || c == '`') {
            const char *s = p++;
            int start = line;
            for (;;) {
                if (p >= end) {
                    rc = es_proj__err(ES_EINVAL, "%s:%d: unterminated %s", f->filename, start,
                                      c == '\'' ? "string" : "quoted name");
                    goto done;
                }
                if (*p == '\n')
                    line++;
                if (*p == c) {
                    if (p + 1 < end && p[1] == c) {
                        p += 2;
                        continue;
                    }
                    p++;
                    break;
                }
                p++;
            }
            if ((rc = emit(&sql, &pgs, s, (size_t)(p - s))) < 0)
                goto done;
            continue;
        }
        if (c == ':' && p + 1 < end && p[1] == ':') { /* a PostgreSQL cast */
            if ((rc = emit(&sql, &pgs, p, 2)) < 0)
                goto done;
            p += 2;
            continue;
        }
        if (c == ':' && p + 1 < end && ident_start(p[1])) {
            param prm;
            size_t len = 0, num = 0;
            char ph[24];
            if (!params_allowed) {
                rc = es_proj__err(ES_EINVAL,
                                  "%s:%d: the schema takes no parameters (':%c…'); they belong "
                                  "in 'on' sections",
                                  f->filename, line, p[1]);
                goto done;
            }
            if ((rc = parse_param(&prm, p + 1, end, &len, f, line)) < 0) {
                for (size_t k = 0; k < prm.n_steps; k++)
                    free(prm.steps[k].key);
                free(prm.steps);
                free(prm.text);
                goto done;
            }
            if ((rc = stmt_param(&cur, &pcap, &prm, &num)) < 0)
                goto done;
            snprintf(ph, sizeof ph, "?%zu", num);
            if ((rc = text_str(&sql, ph)) < 0)
                goto done;
            ph[0] = '$';
            if ((rc = text_str(&pgs, ph)) < 0)
                goto done;
            p += 1 + len;
            continue;
        }
        if ((rc = emit(&sql, &pgs, p++, 1)) < 0)
            goto done;
    }
done:
    free(sql.s);
    free(pgs.s);
    if (rc < 0)
        stmt_clear(&cur);
    return rc;
}

/* ---- the file ---- */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* A word of a directive line: [s, e) after skipping blanks. */
static const char *word(const char *p, const char *end, const char **e)
{
    while (p < end && is_blank(*p))
        p++;
    const char *s = p;
    while (p < end && !is_blank(*p))
        p++;
    *e = p;
    return s;
}

typedef struct parser {
    es_proj_file *f;
    int section; /* -1 none, 0 schema, 1 on */
    text body;
    int body_line;
    size_t cap_schema, cap_stmts, cap_secs;
} parser;

/* Close the current section: split its body into statements. */
static int flush_section(parser *ps)
{
    es_proj_file *f = ps->f;
    int rc = 0;
    if (ps->section == 0) {
        rc = split_sql(f, ps->body.s ? ps->body.s : "", ps->body.len, ps->body_line, false,
                       &f->schema, &f->n_schema, &ps->cap_schema);
    } else if (ps->section == 1) {
        section *sec = &f->secs[f->n_secs - 1];
        sec->first = f->n_stmts;
        rc = split_sql(f, ps->body.s ? ps->body.s : "", ps->body.len, ps->body_line, true,
                       &f->stmts, &f->n_stmts, &ps->cap_stmts);
        sec->n = f->n_stmts - sec->first;
    }
    ps->body.len = 0;
    if (ps->body.s)
        ps->body.s[0] = '\0';
    return rc;
}

static int directive(parser *ps, const char *p, const char *end, int line)
{
    es_proj_file *f = ps->f;
    const char *e, *w = word(p, end, &e);
    size_t wlen = (size_t)(e - w);
    int rc;

    if (wlen == 4 && memcmp(w, "name", 4) == 0) {
        const char *ve, *v = word(e, end, &ve), *x, *xe;
        x = word(ve, end, &xe);
        if (v == ve || x != xe)
            return es_proj__err(ES_EINVAL, "%s:%d: 'name' takes one word", f->filename, line);
        if (f->name)
            return es_proj__err(ES_EINVAL, "%s:%d: a second 'name'", f->filename, line);
        if (!(f->name = dupn(v, (size_t)(ve - v))))
            return es_proj__err(ES_ENOMEM, "out of memory");
        return 0;
    }
    if (wlen == 6 && memcmp(w, "prefix", 6) == 0) {
        const char *v = e;
        while (v < end && is_blank(*v))
            v++;
        const char *ve = end;
        while (ve > v && is_blank(ve[-1]))
            ve--;
        if (v == ve)
            return es_proj__err(ES_EINVAL, "%s:%d: 'prefix' takes a stream-key prefix", f->filename,
                                line);
        if (f->prefix)
            return es_proj__err(ES_EINVAL, "%s:%d: a second 'prefix'", f->filename, line);
        if (!(f->prefix = dupn(v, (size_t)(ve - v))))
            return es_proj__err(ES_ENOMEM, "out of memory");
        return 0;
    }
    if ((rc = flush_section(ps)) < 0)
        return rc;
    ps->body_line = line + 1;
    if (wlen == 6 && memcmp(w, "schema", 6) == 0) {
        const char *x, *xe;
        x = word(e, end, &xe);
        if (x != xe)
            return es_proj__err(ES_EINVAL, "%s:%d: 'schema' stands alone on its line", f->filename,
                                line);
        ps->section = 0;
        return 0;
    }
    if (wlen == 2 && memcmp(w, "on", 2) == 0) {
        size_t tcap = 0;
        if ((rc = grow((void **)&f->secs, &ps->cap_secs, f->n_secs, sizeof *f->secs)) < 0)
            return rc;
        section *sec = &f->secs[f->n_secs++];
        memset(sec, 0, sizeof *sec);
        sec->first = f->n_stmts;
        ps->section = 1;
        for (const char *t = word(e, end, &e); t != e; t = word(e, end, &e)) {
            size_t tlen = (size_t)(e - t);
            if (tlen == 1 && *t == '*') {
                sec->all = true;
                continue;
            }
            if (tlen > ES_MAX_TYPE)
                return es_proj__err(ES_EINVAL, "%s:%d: a type name is at most %d bytes",
                                    f->filename, line, ES_MAX_TYPE);
            if ((rc = grow((void **)&sec->types, &tcap, sec->n_types, sizeof *sec->types)) < 0)
                return rc;
            if (!(sec->types[sec->n_types] = dupn(t, tlen)))
                return es_proj__err(ES_ENOMEM, "out of memory");
            sec->n_types++;
        }
        if (!sec->all && sec->n_types == 0)
            return es_proj__err(ES_EINVAL, "%s:%d: 'on' takes event types (or '*' for every event)",
                                f->filename, line);
        return 0;
    }
    return es_proj__err(ES_EINVAL,
                        "%s:%d: unknown directive '%.*s' (directives: name, prefix, schema, on; "
                        "SQL lines are indented)",
                        f->filename, line, (int)wlen, w);
}

/* The text the model's checkpoint is tied to: what the file does, without
 * its comments and layout. */
static int make_definition(es_proj_file *f)
{
    text d = {0};
    int rc = 0;
    if ((rc = text_str(&d, "name ")) < 0 || (rc = text_str(&d, f->name)) < 0 ||
        (rc = text_str(&d, "\nprefix ")) < 0 || (rc = text_str(&d, f->prefix ? f->prefix : "")))
        goto done;
    for (size_t i = 0; i < f->n_schema && rc == 0; i++) {
        if ((rc = text_str(&d, "\nschema ")) == 0)
            rc = text_str(&d, f->schema[i].sql);
    }
    for (size_t i = 0; i < f->n_secs && rc == 0; i++) {
        section *s = &f->secs[i];
        rc = text_str(&d, s->all ? "\non *" : "\non");
        for (size_t k = 0; k < s->n_types && rc == 0; k++) {
            if ((rc = text_str(&d, " ")) == 0)
                rc = text_str(&d, s->types[k]);
        }
        for (size_t k = 0; k < s->n && rc == 0; k++) {
            const stmt *st = &f->stmts[s->first + k];
            if ((rc = text_str(&d, "\n  ")) == 0)
                rc = text_str(&d, st->sql);
            for (size_t j = 0; j < st->n_params && rc == 0; j++) {
                if ((rc = text_str(&d, " :")) == 0)
                    rc = text_str(&d, st->params[j].text);
                if (rc == 0 && st->params[j].optional)
                    rc = text_str(&d, "?");
            }
        }
    }
done:
    if (rc < 0) {
        free(d.s);
        return rc;
    }
    f->definition = d.s ? d.s : strdup("");
    return f->definition ? 0 : es_proj__err(ES_ENOMEM, "out of memory");
}

static int pf_setup(const es_proj_db *db, void *payload);
static int pf_apply(const es_proj_db *db, const es_event *ev, size_t n, void *payload);
static void pf_detach(const es_proj_db *db, void *payload);

int es_proj_file_parse(es_proj_file **out, const char *filename, const char *src, size_t len)
{
    parser ps = {.section = -1};
    es_proj_file *f = NULL;
    const char *p = src, *end = src + len;
    int line = 0, rc = 0;

    es_proj__clear_error();
    if (!out || (!src && len) || !filename)
        return es_proj__err(ES_EINVAL, "out, filename and text are required");
    *out = NULL;
    if (memchr(src, '\0', len))
        return es_proj__err(ES_EINVAL, "%s: holds a NUL byte: not a projection file", filename);
    if (!(f = calloc(1, sizeof *f)) || !(f->filename = strdup(filename))) {
        rc = es_proj__err(ES_ENOMEM, "out of memory");
        goto done;
    }
    ps.f = f;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *q = p;
        line++;
        while (q < le && is_blank(*q))
            q++;
        if (q == le || *q == '#') {
            /* blank or a comment: keep the line count of the body */
            if (ps.section >= 0 && (rc = text_add(&ps.body, "\n", 1)) < 0)
                goto done;
        } else if (q == p) {
            if ((rc = directive(&ps, p, le, line)) < 0)
                goto done;
        } else {
            if (ps.section < 0) {
                rc = es_proj__err(ES_EINVAL,
                                  "%s:%d: SQL outside a section (start one with 'schema' or "
                                  "'on TYPE')",
                                  filename, line);
                goto done;
            }
            if ((rc = text_add(&ps.body, p, (size_t)(le - p))) < 0 ||
                (rc = text_add(&ps.body, "\n", 1)) < 0)
                goto done;
        }
        p = nl ? nl + 1 : end;
    }
    if ((rc = flush_section(&ps)) < 0)
        goto done;
    if (!f->name) {
        /* The file's name without directories and ".proj". */
        const char *b = strrchr(filename, '/');
        b = b ? b + 1 : filename;
        size_t n = strlen(b);
        if (n > 5 && strcmp(b + n - 5, ".proj") == 0)
            n -= 5;
        if (!(f->name = dupn(b, n))) {
            rc = es_proj__err(ES_ENOMEM, "out of memory");
            goto done;
        }
    }
    if ((rc = make_definition(f)) < 0)
        goto done;
    f->def.version = ES_PROJ_DEF_VERSION;
    f->def.name = f->name;
    f->def.definition = f->definition;
    f->def.prefix = f->prefix;
    f->def.prefix_len = f->prefix ? strlen(f->prefix) : 0;
    f->def.setup = pf_setup;
    f->def.apply = pf_apply;
    f->def.detach = pf_detach;
    f->def.payload = f;
    *out = f;
    f = NULL;
done:
    free(ps.body.s);
    es_proj_file_free(f);
    return rc;
}

int es_proj_file_load(es_proj_file **out, const char *path)
{
    FILE *in;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc;

    es_proj__clear_error();
    if (!out || !path)
        return es_proj__err(ES_EINVAL, "out and path are required");
    *out = NULL;
    if (!(in = fopen(path, "rb")))
        return es_proj__err(errno == ENOENT ? ES_EINVAL : ES_EIO, "%s: %s", path, strerror(errno));
    for (;;) {
        if (len == cap) {
            if (cap >= PF_MAX_FILE) {
                rc = es_proj__err(ES_EINVAL, "%s: larger than %u bytes", path, PF_MAX_FILE);
                goto done;
            }
            cap = cap ? cap * 2 : 4096;
            char *b = realloc(buf, cap);
            if (!b) {
                rc = es_proj__err(ES_ENOMEM, "out of memory");
                goto done;
            }
            buf = b;
        }
        size_t n = fread(buf + len, 1, cap - len, in);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(in)) {
        rc = es_proj__err(ES_EIO, "%s: read error", path);
        goto done;
    }
    rc = es_proj_file_parse(out, path, buf ? buf : "", len);
done:
    fclose(in);
    free(buf);
    return rc;
}

const es_proj_def *es_proj_file_def(const es_proj_file *f)
{
    return f ? &f->def : NULL;
}

/* ---- applying events (SQLite) ---- */

/* A SQLite failure as an ES_E* code: the file's fault, or the target's. */
static int sqlite_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_NOMEM:
        return ES_ENOMEM;
    case SQLITE_FULL:
        return ES_EFULL;
    case SQLITE_ERROR:
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
    case SQLITE_TOOBIG:
    case SQLITE_AUTH:
        return ES_EINVAL;
    default:
        return ES_EIO;
    }
}

#ifdef ES_PROJ_HAVE_PG
static int pg_setup(es_proj_file *f, PGconn *conn);
static int pg_apply(es_proj_file *f, PGconn *conn, const es_event *ev, size_t n);
#endif

static int pf_setup(const es_proj_db *db, void *payload)
{
    es_proj_file *f = payload;
    sqlite3 *conn = db->conn;
#ifdef ES_PROJ_HAVE_PG
    if (db->kind == ES_PROJ_PG)
        return pg_setup(f, db->conn);
#endif
    if (db->kind != ES_PROJ_SQLITE)
        return es_proj__err(ES_ENOTSUP, "%s: this target kind is not supported", f->filename);
    for (size_t i = 0; i < f->n_schema; i++) {
        int rc = sqlite3_exec(conn, f->schema[i].sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            return es_proj__err(sqlite_code(rc), "%s:%d: %s", f->filename, f->schema[i].line,
                                sqlite3_errmsg(conn));
    }
    return 0;
}

static void pf_detach(const es_proj_db *db, void *payload)
{
    es_proj_file *f = payload;
    if (f->prepared_on == db->conn)
        finalize_all(f);
    if (f->pg_prepared_on == db->conn)
        f->pg_prepared_on = NULL; /* its statements go with the connection */
}

static int prepare_all(es_proj_file *f, sqlite3 *conn)
{
    finalize_all(f);
    for (size_t i = 0; i < f->n_stmts; i++) {
        stmt *s = &f->stmts[i];
        const char *tail = NULL;
        int rc =
            sqlite3_prepare_v3(conn, s->sql, -1, SQLITE_PREPARE_PERSISTENT, &s->prepared, &tail);
        if (rc != SQLITE_OK) {
            rc = es_proj__err(sqlite_code(rc), "%s:%d: %s", f->filename, s->line,
                              sqlite3_errmsg(conn));
            finalize_all(f);
            return rc;
        }
        while (tail && (*tail == ' ' || *tail == '\n' || *tail == '\t' || *tail == '\r'))
            tail++;
        if (tail && *tail) {
            finalize_all(f);
            return es_proj__err(ES_EINVAL, "%s:%d: more than one statement", f->filename, s->line);
        }
        if (!s->prepared) { /* only a comment */
            continue;
        }
    }
    f->prepared_on = conn;
    return 0;
}

/* The statements that run for an event type, in file order. */
static int route_for(const route **out, es_proj_file *f, const char *type)
{
    for (size_t i = 0; i < f->n_routes; i++) {
        if (strcmp(f->routes[i].type, type) == 0) {
            *out = &f->routes[i];
            return 0;
        }
    }
    route r = {0};
    size_t cap = 0;
    for (size_t i = 0; i < f->n_secs; i++) {
        const section *s = &f->secs[i];
        bool match = s->all;
        for (size_t k = 0; k < s->n_types && !match; k++)
            match = strcmp(s->types[k], type) == 0;
        for (size_t k = 0; match && k < s->n; k++) {
            if (grow((void **)&r.idx, &cap, r.n, sizeof *r.idx) < 0) {
                free(r.idx);
                return ES_ENOMEM;
            }
            r.idx[r.n++] = s->first + k;
        }
    }
    if (f->n_routes >= PF_MAX_ROUTES) { /* a log of very many types: start over */
        for (size_t i = 0; i < f->n_routes; i++) {
            free(f->routes[i].type);
            free(f->routes[i].idx);
        }
        f->n_routes = 0;
    }
    if (!(r.type = strdup(type))) {
        free(r.idx);
        return es_proj__err(ES_ENOMEM, "out of memory");
    }
    route *rs = realloc(f->routes, (f->n_routes + 1) * sizeof *rs);
    if (!rs) {
        free(r.type);
        free(r.idx);
        return es_proj__err(ES_ENOMEM, "out of memory");
    }
    f->routes = rs;
    f->routes[f->n_routes] = r;
    *out = &f->routes[f->n_routes++];
    return 0;
}

typedef struct evctx {
    const es_event *ev;
    json_t *data, *meta;
    bool data_tried, meta_tried;
} evctx;

static int evfail(es_proj_file *f, const stmt *s, const es_event *ev, int code, const char *what)
{
    return es_proj__err(code, "%s:%d: %s (event at position %" PRIu64 ", type %s)", f->filename,
                        s->line, what, ev->position, ev->type);
}

static int load_json(es_proj_file *f, const stmt *s, evctx *x, bool meta, json_t **out)
{
    json_t **j = meta ? &x->meta : &x->data;
    bool *tried = meta ? &x->meta_tried : &x->data_tried;
    if (!*tried) {
        json_error_t err;
        const uint8_t *b = meta ? x->ev->meta : x->ev->data;
        size_t n = meta ? x->ev->meta_len : x->ev->data_len;
        *tried = true;
        *j = json_loadb((const char *)b, n, JSON_DECODE_ANY, &err);
        if (!*j) {
            char why[256];
            snprintf(why, sizeof why, "its %s is not JSON: %s", meta ? "meta" : "data", err.text);
            return evfail(f, s, x->ev, ES_EINVAL, why);
        }
    }
    if (!*j) /* tried before and failed */
        return evfail(f, s, x->ev, ES_EINVAL,
                      meta ? "its meta is not JSON" : "its data is not JSON");
    *out = *j;
    return 0;
}

/* The value a :data.PATH / :meta.PATH parameter picks from the event's
 * JSON; *out is NULL for a missing optional one. */
static int pick_json(es_proj_file *f, const stmt *s, const param *p, evctx *x, json_t **out)
{
    json_t *j = NULL;
    int rc;
    *out = NULL;
    /* a forgotten event's data (and its metadata, if it was inside) is gone: NULL */
    if (x->ev->shred == ES_SHRED_FORGOTTEN && (p->kind == P_DATA || x->ev->meta_len == 0))
        return 0;
    if ((rc = load_json(f, s, x, p->kind == P_META, &j)) < 0)
        return rc;
    for (size_t k = 0; k < p->n_steps && j; k++)
        j = p->steps[k].key ? json_object_get(j, p->steps[k].key)
                            : json_array_get(j, p->steps[k].index);
    if (!j && !p->optional) {
        char why[300];
        snprintf(why, sizeof why, "the event has no %s (write :%s? to bind NULL when missing)",
                 p->text, p->text);
        return evfail(f, s, x->ev, ES_EINVAL, why);
    }
    *out = j;
    return 0;
}

static int not_scalar(es_proj_file *f, const stmt *s, const param *p, const es_event *ev,
                      const json_t *j)
{
    char why[300];
    snprintf(why, sizeof why,
             "type mismatch: %s is an %s, and a parameter takes a number, text, true, false or "
             "null",
             p->text, json_is_object(j) ? "object" : "array");
    return evfail(f, s, ev, ES_EINVAL, why);
}

static int bind_param(es_proj_file *f, const stmt *s, sqlite3_stmt *ps, int i, const param *p,
                      evctx *x)
{
    const es_event *ev = x->ev;
    char hex[ES_ID_SIZE * 2 + 1];
    json_t *j = NULL;
    int rc;

    switch (p->kind) {
    case P_STREAM:
        return sqlite3_bind_text(ps, i, (const char *)ev->stream, (int)ev->stream_len,
                                 SQLITE_STATIC);
    case P_SEQ:
        return sqlite3_bind_int64(ps, i, (sqlite3_int64)ev->seq);
    case P_POSITION:
        return sqlite3_bind_int64(ps, i, (sqlite3_int64)ev->position);
    case P_TIME:
        return sqlite3_bind_int64(ps, i, ev->time_us);
    case P_TYPE:
        return sqlite3_bind_text(ps, i, ev->type, (int)ev->type_len, SQLITE_STATIC);
    case P_ID:
        for (int k = 0; k < ES_ID_SIZE; k++)
            snprintf(hex + 2 * k, 3, "%02x", ev->id[k]);
        return sqlite3_bind_text(ps, i, hex, ES_ID_SIZE * 2, SQLITE_TRANSIENT);
    case P_DATA:
    case P_META:
        if (p->n_steps == 0) {
            const uint8_t *b = p->kind == P_DATA ? ev->data : ev->meta;
            size_t n = p->kind == P_DATA ? ev->data_len : ev->meta_len;
            return sqlite3_bind_text(ps, i, (const char *)b, (int)n, SQLITE_STATIC);
        }
        break;
    }
    if ((rc = pick_json(f, s, p, x, &j)) < 0)
        return rc;
    if (!j)
        return sqlite3_bind_null(ps, i);
    switch (json_typeof(j)) {
    case JSON_INTEGER:
        return sqlite3_bind_int64(ps, i, (sqlite3_int64)json_integer_value(j));
    case JSON_REAL:
        return sqlite3_bind_double(ps, i, json_real_value(j));
    case JSON_STRING:
        return sqlite3_bind_text(ps, i, json_string_value(j), (int)json_string_length(j),
                                 SQLITE_STATIC);
    case JSON_TRUE:
        return sqlite3_bind_int(ps, i, 1);
    case JSON_FALSE:
        return sqlite3_bind_int(ps, i, 0);
    case JSON_NULL:
        return sqlite3_bind_null(ps, i);
    default:
        return not_scalar(f, s, p, ev, j);
    }
}

static int run_stmt(es_proj_file *f, sqlite3 *conn, const stmt *s, evctx *x)
{
    sqlite3_stmt *ps = s->prepared;
    int rc = 0;
    if (!ps)
        return 0;
    for (size_t i = 0; i < s->n_params; i++) {
        rc = bind_param(f, s, ps, (int)i + 1, &s->params[i], x);
        if (rc < 0)
            goto done;
        if (rc != SQLITE_OK) {
            rc = evfail(f, s, x->ev, sqlite_code(rc), sqlite3_errmsg(conn));
            goto done;
        }
    }
    while ((rc = sqlite3_step(ps)) == SQLITE_ROW)
        ;
    rc = rc == SQLITE_DONE ? 0 : evfail(f, s, x->ev, sqlite_code(rc), sqlite3_errmsg(conn));
done:
    sqlite3_reset(ps);
    sqlite3_clear_bindings(ps);
    return rc;
}

/*
 * Crypto-shredding (doc/crypto-shredding.md): an event whose subject was
 * forgotten runs only the statements of `on *` sections (its data binds as
 * empty text, its :data.PATH as NULL), so a rebuilt model keeps one audit
 * row per event and loses what the typed statements would have made of the
 * data.  An event that is encrypted but cannot be read (no master key, or
 * not the store's; damaged) stops the run: the model would be wrong.
 */
static int shred_check(const es_proj_file *f, const es_event *ev)
{
    if (ev->shred != ES_SHRED_LOCKED && ev->shred != ES_SHRED_BROKEN)
        return 0;
    return es_proj__err(ES_EINVAL,
                        "%s: the event at position %" PRIu64 " (type %s) is encrypted and %s",
                        f->filename, ev->position, ev->type,
                        ev->shred == ES_SHRED_LOCKED
                            ? "cannot be read without the store's master key (--master-key)"
                            : "does not authenticate (damaged)");
}

static bool stmt_runs(const es_proj_file *f, const es_event *ev, size_t idx)
{
    if (ev->shred != ES_SHRED_FORGOTTEN)
        return true;
    for (size_t i = 0; i < f->n_secs; i++)
        if (f->secs[i].all && idx >= f->secs[i].first && idx < f->secs[i].first + f->secs[i].n)
            return true;
    return false;
}

static int pf_apply(const es_proj_db *db, const es_event *ev, size_t n, void *payload)
{
    es_proj_file *f = payload;
    sqlite3 *conn = db->conn;
    int rc;

#ifdef ES_PROJ_HAVE_PG
    if (db->kind == ES_PROJ_PG)
        return pg_apply(f, db->conn, ev, n);
#endif
    if (db->kind != ES_PROJ_SQLITE)
        return es_proj__err(ES_ENOTSUP, "%s: this target kind is not supported", f->filename);
    if (f->prepared_on != conn && (rc = prepare_all(f, conn)) < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        const route *r = NULL;
        evctx x = {.ev = &ev[i]};
        if ((rc = shred_check(f, &ev[i])) < 0 || (rc = route_for(&r, f, ev[i].type)) < 0)
            return rc;
        for (size_t k = 0; k < r->n && rc == 0; k++)
            if (stmt_runs(f, &ev[i], r->idx[k]))
                rc = run_stmt(f, conn, &f->stmts[r->idx[k]], &x);
        json_decref(x.data);
        json_decref(x.meta);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- applying events (PostgreSQL) ---- */

#ifdef ES_PROJ_HAVE_PG

#define PG_INT8_OID 20 /* the type of :seq, :position and :time */

/* A server's failure as an ES_E* code, by SQLSTATE class: the file's fault
 * (syntax, names, data, constraints), or the target's. */
static int pg_code(const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!st)
        return ES_EIO;
    if (!strncmp(st, "42", 2) || !strncmp(st, "22", 2) || !strncmp(st, "23", 2) ||
        !strncmp(st, "0A", 2) || !strncmp(st, "2B", 2) || !strncmp(st, "44", 2))
        return ES_EINVAL;
    if (!strcmp(st, "53100"))
        return ES_EFULL;
    if (!strcmp(st, "53200"))
        return ES_ENOMEM;
    return ES_EIO;
}

static const char *pg_text(PGconn *conn, const PGresult *res, char *buf, size_t cap)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m || !*m)
        m = PQerrorMessage(conn);
    size_t n = strlen(m);
    while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
        n--;
    snprintf(buf, cap, "%.*s", (int)n, m);
    return buf;
}

static bool pg_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static int pg_setup(es_proj_file *f, PGconn *conn)
{
    char m[512];
    for (size_t i = 0; i < f->n_schema; i++) {
        PGresult *res = PQexec(conn, f->schema[i].pgsql);
        if (!pg_ok(res)) {
            int rc = es_proj__err(pg_code(res), "%s:%d: %s", f->filename, f->schema[i].line,
                                  pg_text(conn, res, m, sizeof m));
            PQclear(res);
            return rc;
        }
        PQclear(res);
    }
    return 0;
}

static void pg_stmt_name(char *out, size_t cap, const es_proj_file *f, size_t i)
{
    snprintf(out, cap, "es_proj_%p_%u_%zu", (const void *)f, f->pg_gen, i);
}

static int pg_prepare_all(es_proj_file *f, PGconn *conn)
{
    Oid *types = NULL;
    char name[64], m[512];
    size_t max = 1;
    int rc = 0;

    for (size_t i = 0; i < f->n_stmts; i++)
        if (f->stmts[i].n_params > max)
            max = f->stmts[i].n_params;
    if (max > f->pg_max_params) {
        const char **v = realloc(f->pg_vals, max * sizeof *v);
        if (v)
            f->pg_vals = v;
        char(*num)[32] = realloc(f->pg_num, max * sizeof *num);
        if (num)
            f->pg_num = num;
        if (!v || !num)
            return es_proj__err(ES_ENOMEM, "out of memory");
        f->pg_max_params = max;
    }
    if (!(types = calloc(max, sizeof *types)))
        return es_proj__err(ES_ENOMEM, "out of memory");
    /* New names each time: what a failed round prepared stays on the
     * connection (statements are not transactional). */
    f->pg_prepared_on = NULL;
    f->pg_gen++;
    for (size_t i = 0; i < f->n_stmts && rc == 0; i++) {
        stmt *s = &f->stmts[i];
        /* The event's integers are bigint; every other value is sent as
         * text of an unknown type, which the server types from where the
         * statement uses it (a column, a cast). */
        for (size_t k = 0; k < s->n_params; k++) {
            pkind kd = s->params[k].kind;
            types[k] = kd == P_SEQ || kd == P_POSITION || kd == P_TIME ? PG_INT8_OID : 0;
        }
        pg_stmt_name(name, sizeof name, f, i);
        PGresult *res = PQprepare(conn, name, s->pgsql, (int)s->n_params, types);
        if (!pg_ok(res))
            rc = es_proj__err(pg_code(res), "%s:%d: %s", f->filename, s->line,
                              pg_text(conn, res, m, sizeof m));
        PQclear(res);
    }
    free(types);
    if (rc == 0)
        f->pg_prepared_on = conn;
    return rc;
}

/* Bytes as a text parameter: libpq takes text up to its NUL. */
static int pg_bytes(es_proj_file *f, const stmt *s, const param *p, const es_event *ev,
                    const void *b, size_t n, const char **out)
{
    if (memchr(b, '\0', n))
        return evfail(f, s, ev, ES_EINVAL,
                      p->kind == P_STREAM ? "the stream key holds a NUL byte, which PostgreSQL "
                                            "text cannot"
                                          : "a value holds a NUL byte, which PostgreSQL text "
                                            "cannot");
    *out = b; /* the batch NUL-terminates every event's bytes */
    return 0;
}

static int pg_value(es_proj_file *f, const stmt *s, size_t i, evctx *x)
{
    const param *p = &s->params[i];
    const es_event *ev = x->ev;
    const char **out = &f->pg_vals[i];
    char *num = f->pg_num[i];
    json_t *j = NULL;
    int rc;

    *out = num;
    switch (p->kind) {
    case P_STREAM:
        return pg_bytes(f, s, p, ev, ev->stream, ev->stream_len, out);
    case P_SEQ:
        snprintf(num, 32, "%llu", (unsigned long long)ev->seq);
        return 0;
    case P_POSITION:
        snprintf(num, 32, "%llu", (unsigned long long)ev->position);
        return 0;
    case P_TIME:
        snprintf(num, 32, "%lld", (long long)ev->time_us);
        return 0;
    case P_TYPE:
        *out = ev->type;
        return 0;
    case P_ID:
        for (int k = 0; k < ES_ID_SIZE; k++)
            snprintf(num + 2 * k, 3, "%02x", ev->id[k]);
        return 0;
    case P_DATA:
    case P_META:
        if (p->n_steps == 0)
            return p->kind == P_DATA ? pg_bytes(f, s, p, ev, ev->data, ev->data_len, out)
                                     : pg_bytes(f, s, p, ev, ev->meta, ev->meta_len, out);
        break;
    }
    if ((rc = pick_json(f, s, p, x, &j)) < 0)
        return rc;
    switch (j ? json_typeof(j) : JSON_NULL) {
    case JSON_INTEGER:
        snprintf(num, 32, "%lld", (long long)json_integer_value(j));
        return 0;
    case JSON_REAL:
        snprintf(num, 32, "%.17g", json_real_value(j));
        return 0;
    case JSON_STRING:
        return pg_bytes(f, s, p, ev, json_string_value(j), json_string_length(j), out);
    case JSON_TRUE:
        *out = "true";
        return 0;
    case JSON_FALSE:
        *out = "false";
        return 0;
    case JSON_NULL:
        *out = NULL;
        return 0;
    default:
        return not_scalar(f, s, p, ev, j);
    }
}

static int pg_apply(es_proj_file *f, PGconn *conn, const es_event *ev, size_t n)
{
    char name[64], m[512];
    int rc;

    if (f->pg_prepared_on != conn && (rc = pg_prepare_all(f, conn)) < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        const route *r = NULL;
        evctx x = {.ev = &ev[i]};
        if ((rc = shred_check(f, &ev[i])) < 0 || (rc = route_for(&r, f, ev[i].type)) < 0)
            return rc;
        for (size_t k = 0; k < r->n && rc == 0; k++) {
            if (!stmt_runs(f, &ev[i], r->idx[k]))
                continue;
            const stmt *s = &f->stmts[r->idx[k]];
            for (size_t v = 0; v < s->n_params && rc == 0; v++)
                rc = pg_value(f, s, v, &x);
            if (rc < 0)
                break;
            pg_stmt_name(name, sizeof name, f, r->idx[k]);
            PGresult *res = PQexecPrepared(conn, name, (int)s->n_params, f->pg_vals, NULL, NULL, 0);
            if (!pg_ok(res))
                rc = evfail(f, s, x.ev, pg_code(res), pg_text(conn, res, m, sizeof m));
            PQclear(res);
        }
        json_decref(x.data);
        json_decref(x.meta);
        if (rc < 0)
            return rc;
    }
    return 0;
}

#endif /* ES_PROJ_HAVE_PG */
