/*
 * http_json.c — see http_json.h.
 */
#include "http_json.h"

#include "../internal.h"

#include <stdlib.h>
#include <string.h>

#define HJ_MAX_DEPTH 32

typedef struct parser {
    hj_doc *doc;
    char *p, *end;
    int depth;
} parser;

static int bad(const char *what)
{
    return es__err(ES_ECORRUPT, "http: the server's answer is not valid JSON (%s)", what);
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
        ps->p++;
}

static int new_node(parser *ps, hj_type t, size_t *out)
{
    hj_doc *d = ps->doc;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        hj_node *v = es__realloc(d->v, cap * sizeof *v);
        if (!v)
            return es__err(ES_ENOMEM, "out of memory reading the server's answer");
        d->v = v;
        d->cap = cap;
    }
    memset(&d->v[d->n], 0, sizeof d->v[d->n]);
    d->v[d->n].type = t;
    d->v[d->n].first = HJ_NONE;
    d->v[d->n].next = HJ_NONE;
    *out = d->n++;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s[i]);
        if (h < 0)
            return -1;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return 0;
}

/* A string at ps->p (the opening quote), unescaped in place. */
static int parse_string(parser *ps, const char **s, size_t *len)
{
    char *src = ++ps->p, *dst = src, *start = src;
    while (src < ps->end && *src != '"') {
        if ((unsigned char)*src < 0x20)
            return bad("a control character in a string");
        if (*src != '\\') {
            *dst++ = *src++;
            continue;
        }
        if (src + 1 >= ps->end)
            return bad("a cut escape");
        char e = src[1];
        src += 2;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            *dst++ = e;
            break;
        case 'b':
            *dst++ = '\b';
            break;
        case 'f':
            *dst++ = '\f';
            break;
        case 'n':
            *dst++ = '\n';
            break;
        case 'r':
            *dst++ = '\r';
            break;
        case 't':
            *dst++ = '\t';
            break;
        case 'u': {
            unsigned cp, lo;
            if (ps->end - src < 4 || hex4(src, &cp) != 0)
                return bad("a bad \\u escape");
            src += 4;
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (ps->end - src < 6 || src[0] != '\\' || src[1] != 'u' ||
                    hex4(src + 2, &lo) != 0 || lo < 0xdc00 || lo >= 0xe000)
                    return bad("a lone surrogate");
                src += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return bad("a lone surrogate");
            }
            if (cp < 0x80) {
                *dst++ = (char)cp;
            } else if (cp < 0x800) {
                *dst++ = (char)(0xc0 | cp >> 6);
                *dst++ = (char)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                *dst++ = (char)(0xe0 | cp >> 12);
                *dst++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                *dst++ = (char)(0x80 | (cp & 0x3f));
            } else {
                *dst++ = (char)(0xf0 | cp >> 18);
                *dst++ = (char)(0x80 | ((cp >> 12) & 0x3f));
                *dst++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                *dst++ = (char)(0x80 | (cp & 0x3f));
            }
            break;
        }
        default:
            return bad("an unknown escape");
        }
    }
    if (src >= ps->end)
        return bad("an unterminated string");
    ps->p = src + 1;
    *dst = 0; /* dst <= src: the closing quote's place or earlier */
    *s = start;
    *len = (size_t)(dst - start);
    return 0;
}

static int parse_value(parser *ps, size_t *out);

static int parse_number(parser *ps, size_t at)
{
    hj_node *n = &ps->doc->v[at];
    char *p = ps->p;
    bool neg = false, integer = true, overflow = false;
    uint64_t v = 0;
    if (p < ps->end && *p == '-') {
        neg = true;
        p++;
    }
    if (p >= ps->end || *p < '0' || *p > '9')
        return bad("a bad number");
    while (p < ps->end && *p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p++ - '0');
        if (v > (UINT64_MAX - d) / 10)
            overflow = true;
        else
            v = v * 10 + d;
    }
    if (p < ps->end && *p == '.') {
        integer = false;
        for (p++; p < ps->end && *p >= '0' && *p <= '9'; p++)
            ;
    }
    if (p < ps->end && (*p == 'e' || *p == 'E')) {
        integer = false;
        p++;
        if (p < ps->end && (*p == '+' || *p == '-'))
            p++;
        for (; p < ps->end && *p >= '0' && *p <= '9'; p++)
            ;
    }
    ps->p = p;
    n->num_ok = integer && !overflow && v <= (uint64_t)INT64_MAX;
    n->num = n->num_ok ? (neg ? -(int64_t)v : (int64_t)v) : 0;
    return 0;
}

static int parse_container(parser *ps, size_t at, bool object)
{
    size_t prev = HJ_NONE;
    char close = object ? '}' : ']';
    int rc;
    if (++ps->depth > HJ_MAX_DEPTH)
        return bad("nested too deep");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return 0;
    }
    for (;;) {
        const char *key = NULL;
        size_t klen = 0, child;
        skip_ws(ps);
        if (object) {
            if (ps->p >= ps->end || *ps->p != '"')
                return bad("a member without a name");
            if ((rc = parse_string(ps, &key, &klen)) < 0)
                return rc;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return bad("a missing ':'");
            ps->p++;
        }
        if ((rc = parse_value(ps, &child)) < 0)
            return rc;
        ps->doc->v[child].key = key;
        ps->doc->v[child].key_len = klen;
        if (prev == HJ_NONE)
            ps->doc->v[at].first = child;
        else
            ps->doc->v[prev].next = child;
        prev = child;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return 0;
        }
        return bad("a missing ',' or close");
    }
}

static int parse_value(parser *ps, size_t *out)
{
    int rc;
    skip_ws(ps);
    if (ps->p >= ps->end)
        return bad("a cut answer");
    char c = *ps->p;
    size_t at = HJ_NONE;
    hj_type t = c == '{'               ? HJ_OBJ
                : c == '['             ? HJ_ARR
                : c == '"'             ? HJ_STR
                : c == 't' || c == 'f' ? HJ_BOOL
                : c == 'n'             ? HJ_NULL
                                       : HJ_NUM;
    if ((rc = new_node(ps, t, &at)) < 0)
        return rc;
    *out = at;
    switch (t) {
    case HJ_OBJ:
    case HJ_ARR:
        return parse_container(ps, at, t == HJ_OBJ);
    case HJ_STR: {
        const char *s;
        size_t len;
        if ((rc = parse_string(ps, &s, &len)) < 0)
            return rc;
        ps->doc->v[at].s = s;
        ps->doc->v[at].len = len;
        return 0;
    }
    case HJ_BOOL:
    case HJ_NULL: {
        const char *word = c == 't' ? "true" : c == 'f' ? "false" : "null";
        size_t wl = strlen(word);
        if ((size_t)(ps->end - ps->p) < wl || memcmp(ps->p, word, wl) != 0)
            return bad("an unknown word");
        ps->p += wl;
        ps->doc->v[at].num = c == 't';
        return 0;
    }
    default:
        return parse_number(ps, at);
    }
}

int es__hj_parse(hj_doc *doc, char *buf, size_t len)
{
    parser ps = {doc, buf, buf + len, 0};
    size_t root;
    int rc;
    doc->n = 0;
    if ((rc = parse_value(&ps, &root)) < 0)
        return rc;
    skip_ws(&ps);
    if (ps.p != ps.end)
        return bad("text after the value");
    return 0;
}

void es__hj_free(hj_doc *doc)
{
    free(doc->v);
    doc->v = NULL;
    doc->n = doc->cap = 0;
}

size_t es__hj_get(const hj_doc *doc, size_t i, const char *name)
{
    if (i == HJ_NONE || i >= doc->n || doc->v[i].type != HJ_OBJ)
        return HJ_NONE;
    size_t nl = strlen(name);
    for (size_t c = doc->v[i].first; c != HJ_NONE; c = doc->v[c].next)
        if (doc->v[c].key_len == nl && memcmp(doc->v[c].key, name, nl) == 0)
            return c;
    return HJ_NONE;
}

bool es__hj_int(const hj_doc *doc, size_t i, const char *name, int64_t *out)
{
    size_t c = es__hj_get(doc, i, name);
    if (c == HJ_NONE || doc->v[c].type != HJ_NUM || !doc->v[c].num_ok)
        return false;
    *out = doc->v[c].num;
    return true;
}
