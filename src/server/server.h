/*
 * server.h — `esrc serve` (the HTTP server, server.c) and `esrc token`
 * (cmd.c): the entry points the esrc command table calls.
 */
#ifndef ESRC_SERVER_H
#define ESRC_SERVER_H

#include "cli.h"

/* `esrc serve …`: argv[0] is "serve". */
int esrc_serve(esrc_ctx *cx, int argc, char **argv);
/* `esrc token …`: argv[0] is "token". */
int esrc_token(esrc_ctx *cx, int argc, char **argv);

#endif
