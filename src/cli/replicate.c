/*
 * replicate.c — `esrc replicate` (a live copy of one store in another, any
 * direction: lmdb, postgres, mem) and `esrc backup` (a hot copy of an lmdb
 * store), both thin clients of es_replicate and es_store_backup.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <string.h>

static volatile int stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static int exit_code(int rc)
{
    return rc == ES_ECORRUPT                     ? ESRC_VERIFY
           : rc == ES_ECONFLICT                  ? ESRC_CONFLICT
           : rc == ES_EINVAL || rc == ES_ETOOBIG ? ESRC_USAGE
                                                 : ESRC_FAIL;
}

static int fail(const char *what, int rc)
{
    const char *detail = es_error_last();
    fprintf(stderr, "esrc: %s: %s%s%s\n", what, es_strerror(rc), *detail ? ": " : "", detail);
    return exit_code(rc);
}

static void print_info(esrc_ctx *cx, const es_replica_info *ri)
{
    char hh[ES_HASH_SIZE * 2 + 1];
    sodium_bin2hex(hh, sizeof hh, ri->last_hash, ES_HASH_SIZE);
    if (cx->json) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(ri->name));
        json_object_set_new(o, "position", json_integer((json_int_t)ri->position));
        json_object_set_new(o, "copied", json_integer((json_int_t)ri->copied));
        json_object_set_new(o, "updated_us", json_integer((json_int_t)ri->updated_us));
        json_object_set_new(o, "prefix", json_stringn((const char *)ri->prefix, ri->prefix_len));
        json_object_set_new(o, "last_hash", json_string(ri->position ? hh : ""));
        print_json(o);
    } else {
        printf("replica %s: source position %" PRIu64 ", %" PRIu64 " events copied, prefix '%.*s'",
               ri->name, ri->position, ri->copied, (int)ri->prefix_len, (const char *)ri->prefix);
        if (ri->position)
            printf(", last hash %s", hh);
        printf("\n");
    }
}

int esrc_replicate(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"from", required_argument, NULL, 'f'},
                                          {"to", required_argument, NULL, 't'},
                                          {"prefix", required_argument, NULL, 'p'},
                                          {"name", required_argument, NULL, 'n'},
                                          {"batch", required_argument, NULL, 'b'},
                                          {"follow", no_argument, NULL, 'F'},
                                          {"status", no_argument, NULL, 's'},
                                          {"drop", no_argument, NULL, 'd'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc replicate --from URI --to URI [--prefix P] [--name NAME]\n"
        "                      [--batch N] [--follow]\n"
        "       esrc replicate --to URI [--name NAME] --status | --drop\n\n"
        "Copy the events of the store --from into the store --to with their streams,\n"
        "seqs, ids, commit times, types, data and metadata, so that both have the\n"
        "same hash chains (`esrc verify` gives the same last hashes).  Every event is\n"
        "checked against the chain it continues: a source whose history was\n"
        "rewritten is reported (exit 4) and not copied.  The checkpoint (NAME,\n"
        "default 'default') lives in the target: run it again, or after a crash,\n"
        "and it goes on with no duplicate and no gap.  --follow keeps copying new\n"
        "events until interrupted.  --prefix copies the streams whose key starts\n"
        "with P (fixed by the first run of a NAME).  --batch N: events per\n"
        "checkpoint (1..10000, default 1000).\n\n"
        "The target becomes a replica: `esrc append` and `esrc import` refuse to\n"
        "write to it without --force.  --status prints the checkpoint; --drop\n"
        "forgets it (the events stay), making the target a store of its own.\n";
    const char *from = NULL, *to = NULL, *prefix = NULL, *name = NULL;
    bool follow = false, status = false, drop = false;
    uint64_t batch = 0;
    es_store *src = NULL, *dst = NULL;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        switch (c) {
        case 'f':
            from = optarg;
            break;
        case 't':
            to = optarg;
            break;
        case 'p':
            prefix = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 'b':
            if ((rc = parse_u64(&batch, optarg, "--batch")))
                return rc;
            if (batch < 1 || batch > ES_MAX_BATCH)
                return usage_error("--batch must be 1..%d", ES_MAX_BATCH);
            break;
        case 'F':
            follow = true;
            break;
        case 's':
            status = true;
            break;
        case 'd':
            drop = true;
            break;
        default:
            return ESRC_USAGE;
        }
    }
    if (optind != argc)
        return usage_error("replicate takes no arguments, only options");
    if (!to)
        return usage_error("replicate needs --to URI");
    if (status && drop)
        return usage_error("--status and --drop exclude each other");
    if ((status || drop) && (from || prefix || follow || batch))
        return usage_error("--%s takes only --to and --name", status ? "status" : "drop");
    if (!status && !drop && !from)
        return usage_error("replicate needs --from URI");
    if (from && strcmp(from, to) == 0)
        return usage_error("--from and --to are the same store");
    if (prefix && (strlen(prefix) == 0 || strlen(prefix) > ES_MAX_KEY))
        return usage_error("--prefix must be 1..%d bytes", ES_MAX_KEY);

    const char *saved = cx->store_uri;
    cx->store_uri = to;
    rc = open_store(&dst, cx, !(status || drop), false);
    cx->store_uri = saved;
    if (rc)
        return rc;
    if (status || drop) {
        es_replica_info ri;
        if (status && (rc = es_replica_info_get(&ri, dst, name)) == 0)
            print_info(cx, &ri);
        else if (drop && (rc = es_replica_delete(dst, name)) == 0 && !cx->json)
            printf("dropped replica %s: %s is a store of its own\n", name ? name : "default", to);
        if (rc == ES_ENOTFOUND) {
            fprintf(stderr, "esrc: replicate: %s\n", es_error_last());
            rc = ESRC_USAGE;
        } else if (rc) {
            rc = fail("replicate", rc);
        }
        goto done;
    }
    cx->store_uri = from;
    rc = open_store(&src, cx, false, true);
    cx->store_uri = saved;
    if (rc)
        goto done;

    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    es_replicate_result res;
    o.name = name;
    o.prefix = prefix;
    o.prefix_len = prefix ? strlen(prefix) : 0;
    o.batch_size = (uint32_t)batch;
    o.follow = follow;
    if (follow) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
    }
    rc = es_replicate(&res, dst, src, &o, &stop_flag);
    if (rc) {
        char what[64];
        snprintf(what, sizeof what, "replicate (%" PRIu64 " events copied before it)", res.copied);
        rc = fail(what, rc);
        goto done;
    }
    if (cx->json) {
        json_t *j = json_object();
        json_object_set_new(j, "copied", json_integer((json_int_t)res.copied));
        json_object_set_new(j, "present", json_integer((json_int_t)res.present));
        json_object_set_new(j, "position", json_integer((json_int_t)res.position));
        print_json(j);
    } else {
        printf("replicated %" PRIu64 " events (%" PRIu64 " already there); source position %" PRIu64
               "\n",
               res.copied, res.present, res.position);
    }
done:
    es_store_close(src);
    es_store_close(dst);
    return rc;
}

int esrc_backup(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"to", required_argument, NULL, 't'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc backup [--to] DIR\n\n"
        "Copy the lmdb store (--store) into the new directory DIR while it is in use:\n"
        "one consistent state, compacted.  The copy is a store: lmdb:DIR.  Other\n"
        "stores are copied with `esrc replicate`.\n";
    const char *dir = NULL;
    es_store *st = NULL;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c != 't')
            return ESRC_USAGE;
        dir = optarg;
    }
    if (!dir && optind < argc)
        dir = argv[optind++];
    if (!dir || optind != argc)
        return usage_error("backup needs one DIR");
    if (!*dir)
        return usage_error("backup: DIR is empty");
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_store_backup(st, dir)) == ES_ENOTSUP) {
        fprintf(stderr, "esrc: backup: %s\n", es_error_last());
        rc = ESRC_USAGE;
    } else if (rc) {
        rc = fail("backup", rc);
    } else if (cx->json) {
        json_t *j = json_object();
        json_object_set_new(j, "backup", json_string(dir));
        print_json(j);
    } else {
        printf("backed up %s to lmdb:%s\n", cx->store_uri, dir);
    }
    es_store_close(st);
    return rc;
}
