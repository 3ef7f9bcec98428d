/*
 * cmd.c — `esrc token create|list|revoke`: the token file of `esrc serve`
 * (see auth.h for where tokens live and why).
 */
#define _GNU_SOURCE
#include "auth.h"
#include "server.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char token_help[] =
    "usage: esrc token create --tokens FILE --rights read[,append][,admin]\n"
    "                         [--prefix PREFIX]... [--name NAME]\n"
    "       esrc token list --tokens FILE\n"
    "       esrc token revoke --tokens FILE ID\n\n"
    "Manage the bearer tokens of `esrc serve --tokens FILE`.  create prints the\n"
    "new token once (the file keeps only its hash); it may read, append or\n"
    "administer the streams whose keys start with one of its --prefix (none:\n"
    "--prefix '' , every stream).  admin rights on every stream are needed for\n"
    "subscriptions, /metrics and /stats.  A running server sees changes at its\n"
    "next request.\n";

int esrc_token(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"tokens", required_argument, NULL, 'k'},
                                          {"rights", required_argument, NULL, 'r'},
                                          {"prefix", required_argument, NULL, 'p'},
                                          {"name", required_argument, NULL, 'n'},
                                          {NULL, 0, NULL, 0}};
    const char *file = NULL, *name = "";
    unsigned rights = 0;
    srv_prefixes prefixes = {0};
    bool any_prefix = false;
    srv_tokens ts;
    char err[300];
    int c, rc = ESRC_FAIL;

    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(token_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? ESRC_USAGE : ESRC_OK;
    }
    const char *verb = argv[1];
    optind = 2;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, token_help);
        if (c == 'k') {
            file = optarg;
        } else if (c == 'r') {
            if (srv_rights_parse(&rights, optarg) != 0)
                return usage_error("token: --rights is a list of read, append and admin, not '%s'",
                                   optarg);
        } else if (c == 'p') {
            if (srv_prefixes_add(&prefixes, optarg, strlen(optarg)) != 0)
                return usage_error("token: at most %d prefixes of at most %d bytes",
                                   SRV_MAX_PREFIXES, ES_MAX_KEY);
            any_prefix = true;
        } else if (c == 'n') {
            name = optarg;
        } else {
            return ESRC_USAGE;
        }
    }
    if (!file)
        return usage_error("token needs --tokens FILE");
    bool create = strcmp(verb, "create") == 0, list = strcmp(verb, "list") == 0,
         revoke = strcmp(verb, "revoke") == 0;
    if (!create && !list && !revoke)
        return usage_error("token: unknown action '%s' (create, list, revoke)", verb);
    if (revoke ? optind + 1 != argc : optind != argc)
        return usage_error(revoke ? "token revoke needs one ID" : "token: unexpected argument");
    if (create && !rights)
        return usage_error("token create needs --rights");
    if (create && !any_prefix)
        return usage_error("token create needs --prefix (--prefix '' for every stream)");
    if (srv_tokens_open(&ts, file, err, sizeof err) != 0) {
        fprintf(stderr, "esrc: token: %s\n", err);
        srv_tokens_close(&ts);
        return ESRC_FAIL;
    }
    if (create) {
        char text[SRV_TOKEN_TEXT];
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        if (srv_tokens_create(text, &ts, name, rights, &prefixes,
                              (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000, err,
                              sizeof err) != 0) {
            fprintf(stderr, "esrc: token: %s\n", err);
            goto done;
        }
        if (cx->json) {
            json_t *o = srv_token_json(&ts.t[ts.n - 1]);
            json_object_set_new(o, "token", json_string(text));
            print_json(o);
        } else {
            printf("%s\n", text);
        }
    } else if (list) {
        for (size_t i = 0; i < ts.n; i++) {
            if (cx->json) {
                print_json(srv_token_json(&ts.t[i]));
                continue;
            }
            char r[32];
            srv_rights_format(r, sizeof r, ts.t[i].rights);
            printf("%s  %-18s %-20s", ts.t[i].id, r, ts.t[i].name);
            for (size_t k = 0; k < ts.t[i].prefixes.n; k++)
                printf(" '%.*s'", (int)ts.t[i].prefixes.len[k],
                       (const char *)ts.t[i].prefixes.key[k]);
            printf("\n");
        }
    } else {
        int k = srv_tokens_revoke(&ts, argv[optind], err, sizeof err);
        if (k < 0) {
            fprintf(stderr, "esrc: token: %s\n", err);
            goto done;
        }
        if (k == 0) {
            fprintf(stderr, "esrc: token: no token %s\n", argv[optind]);
            goto done;
        }
        if (!cx->json)
            printf("revoked %s\n", argv[optind]);
    }
    rc = ESRC_OK;
done:
    srv_tokens_close(&ts);
    return rc;
}
