/*
 * console.h — the web console's files (src/server/console/), embedded in the
 * binary at build time by cmake/embed_console.cmake, so that `esrc serve`
 * needs no files beside it and its pages always match its routes.
 */
#ifndef ESRC_SERVER_CONSOLE_H
#define ESRC_SERVER_CONSOLE_H

#include <stddef.h>

typedef struct srv_asset {
    const char *name; /* the file's name under src/server/console/ */
    const char *type; /* its Content-Type */
    const unsigned char *data;
    size_t len;
} srv_asset;

extern const srv_asset srv_console_assets[];
extern const size_t srv_console_n_assets;

#endif
