/*
 * args.c — the esrc CLI's parsers of numbers, times, subscription starts
 * and acknowledgement lines (see args.h).
 */
#define _GNU_SOURCE
#include "args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int esrc_parse_u64(uint64_t *out, const char *s)
{
    char *end;
    if (!*s || strspn(s, "0123456789") != strlen(s))
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/* YYYY-MM-DDTHH:MM:SS[.ffffff]Z */
static int parse_iso_time(int64_t *out, const char *s)
{
    int y, mo, d, h, mi, sec, n = 0;
    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':')
        return -1;
    for (int i = 0; i < 19; i++)
        if (i != 4 && i != 7 && i != 10 && i != 13 && i != 16 && (s[i] < '0' || s[i] > '9'))
            return -1;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
        return -1;
    const char *p = s + 19;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (digits == 6)
                return -1;
            frac = frac * 10 + (*p - '0');
        }
        if (digits == 0)
            return -1;
        for (; digits < 6; digits++)
            frac *= 10;
    }
    if (strcmp(p, "Z") != 0 || y < 1970)
        return -1;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    /* timegm normalises 02-30 into March: a date that moved was not a date */
    if (t == (time_t)-1 || tm.tm_year != y - 1900 || tm.tm_mon != mo - 1 || tm.tm_mday != d ||
        tm.tm_hour != h || tm.tm_min != mi || tm.tm_sec != sec)
        return -1;
    *out = (int64_t)t * 1000000 + frac;
    return 0;
}

int esrc_parse_time(int64_t *out, const char *s)
{
    uint64_t v;
    if (esrc_parse_u64(&v, s) == 0)
        return v <= (uint64_t)INT64_MAX ? (*out = (int64_t)v, 0) : -1;
    return parse_iso_time(out, s);
}

int esrc_parse_start(es_sub_start *start, uint64_t *position, int64_t *time_us, const char *s)
{
    uint64_t v;
    *position = 0;
    *time_us = 0;
    if (strcmp(s, "beginning") == 0) {
        *start = ES_SUB_FROM_BEGINNING;
        return 0;
    }
    if (strcmp(s, "end") == 0) {
        *start = ES_SUB_FROM_END;
        return 0;
    }
    if (esrc_parse_u64(&v, s) == 0) {
        if (v == 0 || v >= ES_SEQ_MAX)
            return ESRC_START_POSITION;
        *start = ES_SUB_FROM_POSITION;
        *position = v;
        return 0;
    }
    if (s[0] == '@') {
        if (esrc_parse_time(time_us, s + 1) != 0)
            return ESRC_START_TIME;
        *start = ES_SUB_FROM_TIME;
        return 0;
    }
    return ESRC_START_NOT_ONE;
}

int esrc_parse_ack_line(uint64_t *out, const char **fail_msg, char *line)
{
    char *p = line + strspn(line, " \t\r"), *end = p + strlen(p);
    while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        *--end = 0;
    if (p != line)
        memmove(line, p, (size_t)(end - p) + 1);
    *fail_msg = NULL;
    if (!*line)
        return 0;
    if (strncmp(line, "fail", 4) == 0 && (line[4] == ' ' || line[4] == '\t')) {
        /* fail POSITION [MESSAGE] */
        char *num = line + 5 + strspn(line + 5, " \t");
        char *sp = num + strcspn(num, " \t");
        char *msg = sp + strspn(sp, " \t");
        *sp = 0;
        if (esrc_parse_u64(out, num) < 0)
            return -1;
        *fail_msg = msg;
        return 2;
    }
    return esrc_parse_u64(out, line) == 0 ? 1 : -1;
}
