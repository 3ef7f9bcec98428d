/*
 * error.c — error codes, their names, and the per-thread last error.
 * The codes and messages both come from ES_ERRNO_MAP in eventsrc.h.
 */
#include "internal.h"

#include <stdio.h>

static _Thread_local char last_msg[512];
static _Thread_local int last_code;

const char *es_strerror(int code)
{
    switch (code) {
#define ES__ERRNO_STR(name, num, msg)                                                              \
    case num:                                                                                      \
        return msg;
        ES_ERRNO_MAP(ES__ERRNO_STR)
#undef ES__ERRNO_STR
    default:
        return "unknown error";
    }
}

int es__err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    last_code = code;
    return code;
}

const char *es_error_last(void)
{
    return last_msg;
}

int es_error_last_code(void)
{
    return last_code;
}

void es_error_clear(void)
{
    last_msg[0] = '\0';
    last_code = 0;
}

const char *es_version(void)
{
    return ES_VERSION_STRING;
}
