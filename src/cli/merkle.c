/*
 * merkle.c — verifiable history on the command line: signing keys, signed
 * digests of the log, inclusion proofs, their offline check, and the
 * operator's `verify --since`.  doc/verifiable-history.md has the formats.
 *
 *   esrc key create --out FILE     esrc key show FILE
 *   esrc digest [--key FILE]
 *   esrc prove STREAM SEQ [--digest FILE | --key FILE]
 *   esrc check-proof PROOF.json --event EVENT.json --pubkey HEX   (no store)
 *   esrc verify --since DIGEST.json [--pubkey HEX]                (in esrc.c)
 */
#define _GNU_SOURCE
#include "cli.h"
#include "import.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_KIND "esrc-ed25519-key"

static int fail_lib(const char *what, int rc)
{
    const char *detail = es_error_last();
    fprintf(stderr, "esrc: %s: %s%s%s\n", what, es_strerror(rc), *detail ? ": " : "", detail);
    return rc == ES_EINVAL ? ESRC_USAGE : rc == ES_ECORRUPT ? ESRC_VERIFY : ESRC_FAIL;
}

static int bad_input(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad_input(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "esrc: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return ESRC_USAGE;
}

/* ---- hex and JSON ---- */

static json_t *hex_json(const uint8_t *p, size_t n)
{
    char h[2 * 64 + 1];
    sodium_bin2hex(h, sizeof h, p, n);
    return json_string(h);
}

static int from_hex(uint8_t *out, size_t n, const char *s)
{
    size_t got = 0;
    if (!s || strlen(s) != 2 * n || sodium_hex2bin(out, n, s, 2 * n, NULL, &got, NULL) != 0 ||
        got != n)
        return -1;
    return 0;
}

static int get_hex(uint8_t *out, size_t n, json_t *o, const char *name)
{
    return from_hex(out, n, json_string_value(json_object_get(o, name)));
}

static int get_u64(uint64_t *out, json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static json_t *load_json(const char *path, const char *what)
{
    json_error_t e;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!j)
        bad_input("%s %s: %s (line %d)", what, path, e.text, e.line);
    else if (!json_is_object(j)) {
        bad_input("%s %s is not a JSON object", what, path);
        json_decref(j);
        j = NULL;
    }
    return j;
}

typedef struct signed_digest {
    es_digest d;
    uint8_t sig[ES_SIGNATURE_SIZE];
    uint8_t pk[ES_SIGN_PUBLIC_KEY_SIZE];
    bool has_sig;
} signed_digest;

static json_t *digest_json(const signed_digest *sd)
{
    json_t *o = json_object();
    json_object_set_new(o, "size", json_integer((json_int_t)sd->d.size));
    json_object_set_new(o, "root", hex_json(sd->d.root, ES_HASH_SIZE));
    json_object_set_new(o, "last_position", json_integer((json_int_t)sd->d.last_position));
    json_object_set_new(o, "time_us", json_integer((json_int_t)sd->d.time_us));
    json_object_set_new(o, "signature",
                        sd->has_sig ? hex_json(sd->sig, sizeof sd->sig) : json_null());
    json_object_set_new(o, "public_key",
                        sd->has_sig ? hex_json(sd->pk, sizeof sd->pk) : json_null());
    return o;
}

static int digest_parse(signed_digest *sd, json_t *o, const char *where)
{
    uint64_t t;
    memset(sd, 0, sizeof *sd);
    if (!json_is_object(o) || get_u64(&sd->d.size, o, "size") ||
        get_hex(sd->d.root, ES_HASH_SIZE, o, "root") ||
        get_u64(&sd->d.last_position, o, "last_position") || get_u64(&t, o, "time_us"))
        return bad_input("%s is not a digest (size, root, last_position, time_us)", where);
    sd->d.time_us = (int64_t)t;
    json_t *s = json_object_get(o, "signature");
    if (s && !json_is_null(s)) {
        if (get_hex(sd->sig, sizeof sd->sig, o, "signature") ||
            get_hex(sd->pk, sizeof sd->pk, o, "public_key"))
            return bad_input("%s: signature or public_key is not hex of the right length", where);
        sd->has_sig = true;
    }
    return 0;
}

/* The digest's signature must be pubkey's (hex). */
static int check_signed(const signed_digest *sd, const char *pubkey)
{
    uint8_t pk[ES_SIGN_PUBLIC_KEY_SIZE];
    if (from_hex(pk, sizeof pk, pubkey))
        return bad_input("--pubkey must be %d hex digits", 2 * ES_SIGN_PUBLIC_KEY_SIZE);
    if (!sd->has_sig) {
        fprintf(stderr, "esrc: FAILED: the digest is not signed\n");
        return ESRC_VERIFY;
    }
    int rc = es_digest_check_signature(&sd->d, sd->sig, pk);
    if (rc < 0) {
        fprintf(stderr, "esrc: FAILED: %s\n", es_error_last());
        return ESRC_VERIFY;
    }
    return 0;
}

/* ---- keys ---- */

static int load_key(uint8_t sk[ES_SIGN_SECRET_KEY_SIZE], uint8_t pk[ES_SIGN_PUBLIC_KEY_SIZE],
                    const char *path)
{
    json_t *j = load_json(path, "key file");
    int rc = 0;
    if (!j)
        return ESRC_USAGE;
    const char *kind = json_string_value(json_object_get(j, "kind"));
    if (!kind || strcmp(kind, KEY_KIND) || get_hex(sk, ES_SIGN_SECRET_KEY_SIZE, j, "secret_key") ||
        get_hex(pk, ES_SIGN_PUBLIC_KEY_SIZE, j, "public_key") ||
        memcmp(sk + 32, pk, ES_SIGN_PUBLIC_KEY_SIZE) != 0)
        rc = bad_input("%s is not an esrc signing key (kind \"%s\", secret_key, public_key)", path,
                       KEY_KIND);
    json_decref(j);
    return rc;
}

static int key_create(const char *out)
{
    uint8_t pk[ES_SIGN_PUBLIC_KEY_SIZE], sk[ES_SIGN_SECRET_KEY_SIZE];
    char hpk[2 * sizeof pk + 1], hsk[2 * sizeof sk + 1];
    int fd = open(out, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        fprintf(stderr, "esrc: key create: %s: %s\n", out, strerror(errno));
        return errno == EEXIST ? ESRC_USAGE : ESRC_FAIL;
    }
    crypto_sign_keypair(pk, sk);
    sodium_bin2hex(hpk, sizeof hpk, pk, sizeof pk);
    sodium_bin2hex(hsk, sizeof hsk, sk, sizeof sk);
    FILE *f = fdopen(fd, "w");
    int bad = !f || fprintf(f, "{\"kind\":\"%s\",\"public_key\":\"%s\",\"secret_key\":\"%s\"}\n",
                            KEY_KIND, hpk, hsk) < 0;
    bad |= f ? fclose(f) != 0 : close(fd) != 0;
    sodium_memzero(sk, sizeof sk);
    sodium_memzero(hsk, sizeof hsk);
    if (bad) {
        fprintf(stderr, "esrc: key create: writing %s: %s\n", out, strerror(errno));
        unlink(out);
        return ESRC_FAIL;
    }
    puts(hpk);
    return ESRC_OK;
}

int esrc_key(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"out", required_argument, NULL, 'o'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc key create --out FILE\n"
        "       esrc key show FILE\n\n"
        "create: make an Ed25519 signing key for digests, write it to FILE (mode 0600,\n"
        "never overwritten; keep it outside the store) and print its public key.\n"
        "show: print the public key of a key file.\n";
    const char *out = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'o')
            out = optarg;
        else
            return ESRC_USAGE;
    }
    if (optind >= argc)
        return usage_error("key needs 'create' or 'show'");
    if (strcmp(argv[optind], "create") == 0) {
        if (!out || optind + 1 != argc)
            return usage_error("key create needs --out FILE and nothing else");
        return key_create(out);
    }
    if (strcmp(argv[optind], "show") == 0) {
        uint8_t sk[ES_SIGN_SECRET_KEY_SIZE], pk[ES_SIGN_PUBLIC_KEY_SIZE];
        char hpk[2 * sizeof pk + 1];
        if (out || optind + 2 != argc)
            return usage_error("key show needs one FILE");
        int rc = load_key(sk, pk, argv[optind + 1]);
        sodium_memzero(sk, sizeof sk);
        if (rc)
            return rc;
        sodium_bin2hex(hpk, sizeof hpk, pk, sizeof pk);
        puts(hpk);
        return ESRC_OK;
    }
    return usage_error("key: unknown subcommand '%s'", argv[optind]);
}

/* ---- digest ---- */

/* The digest now, signed with the key in key_path (NULL: unsigned). */
static int make_digest(signed_digest *sd, es_store *st, const char *key_path)
{
    uint8_t sk[ES_SIGN_SECRET_KEY_SIZE];
    int rc;
    memset(sd, 0, sizeof *sd);
    if (key_path && (rc = load_key(sk, sd->pk, key_path)))
        return rc;
    /* cover what this process may have appended (postgres: the log's horizon) */
    if ((rc = es_log_catch_up(st, 10000)) < 0 || (rc = es_digest_get(&sd->d, st)) < 0) {
        sodium_memzero(sk, sizeof sk);
        return fail_lib("digest", rc);
    }
    if (key_path) {
        rc = es_digest_sign(sd->sig, &sd->d, sk);
        sodium_memzero(sk, sizeof sk);
        if (rc < 0)
            return fail_lib("digest", rc);
        sd->has_sig = true;
    }
    return 0;
}

int esrc_digest(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"key", required_argument, NULL, 'k'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc digest [--key FILE]\n\n"
        "Print the digest of the log as JSON: its size (events), the Merkle root,\n"
        "the last position, the time, and with --key an Ed25519 signature and the\n"
        "public key.  Keep it elsewhere; `esrc verify --since` and `esrc prove\n"
        "--digest` check the store against it later.\n";
    const char *key = NULL;
    es_store *st;
    signed_digest sd;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'k')
            key = optarg;
        else
            return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("digest: unexpected argument '%s'", argv[optind]);
    if ((rc = open_store(&st, cx, false, false)))
        return rc;
    if ((rc = make_digest(&sd, st, key)) == 0)
        print_json(digest_json(&sd));
    es_store_close(st);
    return rc;
}

/* ---- prove ---- */

int esrc_prove(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"digest", required_argument, NULL, 'd'},
                                          {"key", required_argument, NULL, 'k'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc prove STREAM SEQ [--digest FILE | --key FILE]\n\n"
        "Print, as JSON, a proof that the event is in the log of a digest: the\n"
        "digest in FILE (from `esrc digest`), or a new one (signed with --key).\n"
        "`esrc check-proof` checks it with no access to the store.  Exit 4 when\n"
        "the digest is not of this store's log.\n";
    const char *digest_path = NULL, *key = NULL;
    es_store *st = NULL;
    signed_digest sd;
    es_inclusion_proof p;
    uint64_t seq;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'd')
            digest_path = optarg;
        else if (c == 'k')
            key = optarg;
        else
            return ESRC_USAGE;
    }
    if (argc - optind != 2)
        return usage_error("prove needs STREAM and SEQ");
    const char *stream = argv[optind];
    if (strlen(stream) == 0 || strlen(stream) > ES_MAX_KEY)
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY,
                           strlen(stream));
    if ((rc = parse_u64(&seq, argv[optind + 1], "SEQ")))
        return rc;
    if (seq == 0)
        return usage_error("SEQ starts at 1");
    if (digest_path && key)
        return usage_error("prove takes --digest or --key, not both");
    if (digest_path) {
        json_t *j = load_json(digest_path, "digest");
        if (!j)
            return ESRC_USAGE;
        rc = digest_parse(&sd, j, digest_path);
        json_decref(j);
        if (rc)
            return rc;
        if (sd.d.size == 0)
            return bad_input("the digest in %s is of an empty log: it holds no event", digest_path);
    }
    if ((rc = open_store(&st, cx, false, false)))
        return rc;
    if (!digest_path && (rc = make_digest(&sd, st, key)))
        goto done;
    if ((rc = es_prove_event(&p, st, stream, strlen(stream), seq, sd.d.size)) < 0) {
        rc = fail_lib("prove", rc);
        goto done;
    }
    if (es_verify_inclusion(&p, &sd.d) < 0) {
        fprintf(stderr, "esrc: prove: FAILED: the digest is not of this store's log: %s\n",
                es_error_last());
        rc = ESRC_VERIFY;
        goto done;
    }
    /* The previous event's hash, so that a checker can recompute this one's. */
    uint8_t prev[ES_HASH_SIZE];
    bool has_prev = false;
    if (seq > 1) {
        es_read_options ro = ES_READ_OPTIONS_INIT;
        es_cursor *cur;
        const es_event *ev;
        ro.from_seq = seq - 1;
        ro.limit = 1;
        if ((rc = es_stream_cursor(&cur, st, stream, strlen(stream), &ro)) < 0) {
            rc = fail_lib("prove", rc);
            goto done;
        }
        if ((rc = es_cursor_next(&ev, cur)) == 0 && ev->seq == seq - 1) {
            memcpy(prev, ev->hash, ES_HASH_SIZE);
            has_prev = true;
        }
        es_cursor_free(cur);
        if (!has_prev) {
            rc = fail_lib("prove: reading the previous event", rc < 0 ? rc : ES_ECORRUPT);
            goto done;
        }
    }
    json_t *o = json_object(), *path = json_array();
    esrc_json_set_bytes(o, "stream", (const uint8_t *)stream, strlen(stream));
    json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    json_object_set_new(o, "position", json_integer((json_int_t)p.position));
    json_object_set_new(o, "event_hash", hex_json(p.event_hash, ES_HASH_SIZE));
    json_object_set_new(o, "prev_hash", has_prev ? hex_json(prev, ES_HASH_SIZE) : json_null());
    json_object_set_new(o, "leaf_index", json_integer((json_int_t)p.index));
    json_object_set_new(o, "tree_size", json_integer((json_int_t)p.size));
    for (uint32_t i = 0; i < p.n_path; i++)
        json_array_append_new(path, hex_json(p.path[i], ES_HASH_SIZE));
    json_object_set_new(o, "path", path);
    json_object_set_new(o, "digest", digest_json(&sd));
    print_json(o);
    rc = ESRC_OK;
done:
    es_store_close(st);
    return rc;
}

/* ---- check-proof: no store ---- */

static int verdict(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int verdict(int ok, const char *fmt, ...)
{
    va_list ap;
    printf(ok ? "ok: " : "FAILED: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    return ok ? ESRC_OK : ESRC_VERIFY;
}

/* The first line of a file, for the event (as `esrc read --json` prints it). */
static int read_event(esrc_line_event *e, json_t **raw, const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL, err[256];
    size_t cap = 0;
    ssize_t n;
    if (!f)
        return bad_input("--event %s: %s", path, strerror(errno));
    n = getline(&line, &cap, f);
    fclose(f);
    if (n <= 0) {
        free(line);
        return bad_input("--event %s is empty", path);
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    int rc = 0;
    if (esrc_line_decode(e, line, (size_t)n, err, sizeof err) != 0)
        rc = bad_input("--event %s: %s", path, err);
    else if (!(*raw = json_loads(line, 0, NULL)))
        rc = bad_input("--event %s is not JSON", path);
    free(line);
    return rc;
}

int esrc_check_proof(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"event", required_argument, NULL, 'e'},
                                          {"pubkey", required_argument, NULL, 'p'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc check-proof PROOF.json --event EVENT.json --pubkey HEX\n\n"
        "Check, with no store, a proof from `esrc prove`: the event (one line as\n"
        "`esrc read --json` prints it) hashes to the proof's event hash, the proof\n"
        "leads to the digest's root, and the digest is signed by the public key.\n"
        "Exit 0 when all hold, 4 when one does not.\n";
    const char *event_path = NULL, *pubkey = NULL;
    esrc_line_event ev;
    json_t *proof = NULL, *raw = NULL;
    signed_digest sd;
    es_inclusion_proof p;
    uint8_t prev[ES_HASH_SIZE], h[ES_HASH_SIZE];
    uint64_t seq;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'e')
            event_path = optarg;
        else if (c == 'p')
            pubkey = optarg;
        else
            return ESRC_USAGE;
    }
    if (argc - optind != 1 || !event_path || !pubkey)
        return usage_error("check-proof needs PROOF.json, --event FILE and --pubkey HEX");
    memset(&ev, 0, sizeof ev);
    memset(&p, 0, sizeof p);
    if (!(proof = load_json(argv[optind], "proof"))) {
        rc = ESRC_USAGE;
        goto done;
    }
    json_t *path = json_object_get(proof, "path");
    json_t *ph = json_object_get(proof, "prev_hash");
    if ((rc = digest_parse(&sd, json_object_get(proof, "digest"), "the proof's digest")))
        goto done;
    if (get_u64(&seq, proof, "seq") || get_u64(&p.position, proof, "position") ||
        get_u64(&p.index, proof, "leaf_index") || get_u64(&p.size, proof, "tree_size") ||
        get_hex(p.event_hash, ES_HASH_SIZE, proof, "event_hash") || !json_is_array(path) ||
        json_array_size(path) > ES_MERKLE_MAX_PATH ||
        (!json_is_null(ph) && get_hex(prev, ES_HASH_SIZE, proof, "prev_hash"))) {
        rc = bad_input("%s is not a proof from esrc prove", argv[optind]);
        goto done;
    }
    p.n_path = (uint32_t)json_array_size(path);
    for (uint32_t i = 0; i < p.n_path; i++)
        if (from_hex(p.path[i], ES_HASH_SIZE, json_string_value(json_array_get(path, i)))) {
            rc = bad_input("%s: path element %u is not a hash", argv[optind], i);
            goto done;
        }
    if ((rc = read_event(&ev, &raw, event_path)))
        goto done;
    if ((rc = check_signed(&sd, pubkey)))
        goto done;
    /* the event is the proof's: its stream and seq, position, and hash */
    es_event view;
    esrc_line_event_view(&view, &ev);
    json_t *mine = json_object();
    esrc_json_set_bytes(mine, "stream", ev.stream, ev.stream_len);
    json_t *a1 = json_object_get(mine, "stream"), *b1 = json_object_get(proof, "stream");
    json_t *a2 = json_object_get(mine, "stream_b64"), *b2 = json_object_get(proof, "stream_b64");
    bool same_stream = (a1 && b1 && json_equal(a1, b1)) || (a2 && b2 && json_equal(a2, b2));
    json_decref(mine);
    if (!same_stream || ev.seq != seq) {
        rc = verdict(0, "the event is not the one the proof is about (stream or seq differ)");
        goto done;
    }
    uint64_t epos;
    if (json_object_get(raw, "position") &&
        (get_u64(&epos, raw, "position") || epos != p.position)) {
        rc = verdict(0, "the event's position is not the proof's (%" PRIu64 ")", p.position);
        goto done;
    }
    if ((seq == 1) != json_is_null(ph)) {
        rc = verdict(0, "the proof's prev_hash does not fit seq %" PRIu64, seq);
        goto done;
    }
    if (es_event_hash(h, seq > 1 ? prev : NULL, &view) < 0 ||
        sodium_memcmp(h, p.event_hash, ES_HASH_SIZE) != 0 ||
        (ev.has_hash && sodium_memcmp(ev.hash, p.event_hash, ES_HASH_SIZE) != 0)) {
        rc = verdict(0, "the event does not hash to the proof's event hash");
        goto done;
    }
    if (es_verify_inclusion(&p, &sd.d) < 0) {
        rc = verdict(0, "%s", es_error_last());
        goto done;
    }
    char root[2 * ES_HASH_SIZE + 1];
    sodium_bin2hex(root, sizeof root, sd.d.root, ES_HASH_SIZE);
    rc = verdict(1,
                 "seq %" PRIu64 " (position %" PRIu64 ") is leaf %" PRIu64 " of the log of %" PRIu64
                 " events with root %s, signed by %s",
                 seq, p.position, p.index, p.size, root, pubkey);
done:
    esrc_line_event_free(&ev);
    json_decref(proof);
    json_decref(raw);
    return rc;
}

/* ---- verify --since ---- */

int esrc_verify_since(esrc_ctx *cx, es_store *st, const char *digest_path, const char *pubkey)
{
    signed_digest sd;
    es_verify_result v;
    es_digest now;
    int rc;
    json_t *j = load_json(digest_path, "digest");
    if (!j)
        return ESRC_USAGE;
    rc = digest_parse(&sd, j, digest_path);
    json_decref(j);
    if (rc)
        return rc;
    if (pubkey && (rc = check_signed(&sd, pubkey)))
        return rc;
    if ((rc = es_verify_since(&v, &now, st, &sd.d)) < 0)
        return fail_lib("verify --since", rc);
    if (cx->json) {
        json_t *o = json_object();
        json_object_set_new(o, "ok", json_boolean(v.ok));
        json_object_set_new(o, "since_size", json_integer((json_int_t)sd.d.size));
        json_object_set_new(o, "size", json_integer((json_int_t)now.size));
        json_object_set_new(o, "root", hex_json(now.root, ES_HASH_SIZE));
        if (!v.ok) {
            json_object_set_new(o, "position", json_integer((json_int_t)v.bad_position));
            json_object_set_new(o, "reason", json_string(v.reason));
        }
        print_json(o);
    } else if (v.ok) {
        printf("ok: the log of %" PRIu64 " events extends the digest of %" PRIu64
               " events (consistency proof checked)\n",
               now.size, sd.d.size);
    } else {
        printf("FAILED: %s\n", v.reason);
    }
    return v.ok ? ESRC_OK : ESRC_VERIFY;
}
