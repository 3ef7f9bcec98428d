/*
 * buf.c — a growable byte buffer, used by encoders and by backends that copy
 * values out of their storage.
 */
#include "internal.h"

#include <stdlib.h>

#define ES__BUF_MAX ((size_t)1 << 30)

int es_buf_put(es_buf *buf, const void *data, size_t n)
{
    if (!buf || (!data && n))
        return es__err(ES_EINVAL, "es_buf_put: NULL buffer or data");
    if (n > ES__BUF_MAX || buf->len > ES__BUF_MAX - n)
        return es__err(ES_ETOOBIG, "buffer would exceed 1 GiB");
    if (buf->len + n > buf->cap) {
        size_t cap = buf->cap ? buf->cap : 64;
        while (cap < buf->len + n)
            cap *= 2;
        uint8_t *p = es__realloc(buf->data, cap);
        if (!p)
            return es__err(ES_ENOMEM, "out of memory growing a buffer to %zu bytes", cap);
        buf->data = p;
        buf->cap = cap;
    }
    if (n)
        memcpy(buf->data + buf->len, data, n);
    buf->len += n;
    return 0;
}

void es_buf_reset(es_buf *buf)
{
    if (buf)
        buf->len = 0;
}

void es_buf_free(es_buf *buf)
{
    if (!buf)
        return;
    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
}
