/* buurtbusctl dict train / rotate / show: the zstd dictionary brokers
 * compress notifications with (bb:zdict:{id}, named by bb:zdict:current).
 * Main thread. Training samples are what readers get: each recent report
 * turned into its Notification (precision 7, no group name) and packed.
 * rotate --prune deletes old dictionaries no entry of bb:out:* names in its
 * frame (the frame header carries the dictionary id). */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "config.h"
#include "ctl.h"
#include "delivery.pb-c.h"
#include "output.h"
#include "report.pb-c.h"
#include "snapshot.h"
#include "wire.h"

#define MIN_SAMPLES 10
#define SAMPLE_PRECISION 7

struct samples {
    uint8_t *buf;
    size_t len, cap;
    size_t *sizes;
    unsigned n;
    unsigned skipped;
};

static int samples_add(struct samples *s, const Bb__Report *rep)
{
    Bb__Notification n;
    char cell[16];
    bb_notification_from_report(&n, rep, NULL, SAMPLE_PRECISION, cell);
    size_t len = bb__notification__get_packed_size(&n);
    if (s->len + len > s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 1 << 20;
        while (nc < s->len + len) {
            nc *= 2;
        }
        uint8_t *b = realloc(s->buf, nc);
        if (!b) {
            return BB_ENOMEM;
        }
        s->buf = b;
        s->cap = nc;
    }
    bb__notification__pack(&n, s->buf + s->len);
    s->sizes[s->n++] = len;
    s->len += len;
    return BB_OK;
}

static int collect(redisContext *c, long want, struct samples *s)
{
    redisReply *r = redisCommand(c, "XREVRANGE bb:reports + - COUNT %ld", want);
    int rc = CTL_OK;
    if (!r) {
        return ctl_error("redis: %s", c->errstr);
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        rc = ctl_error("XREVRANGE bb:reports: %s",
                       r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        goto free_reply;
    }
    if (!(s->sizes = calloc(r->elements + 1, sizeof(size_t)))) {
        rc = ctl_error("out of memory");
        goto free_reply;
    }
    for (size_t i = 0; i < r->elements && rc == CTL_OK; i++) {
        const redisReply *e = r->element[i], *p = NULL;
        if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
            e->element[1]->type == REDIS_REPLY_ARRAY) {
            const redisReply *f = e->element[1];
            for (size_t j = 0; j + 1 < f->elements; j += 2) {
                if (f->element[j]->type == REDIS_REPLY_STRING &&
                    strcmp(f->element[j]->str, "p") == 0) {
                    p = f->element[j + 1];
                }
            }
        }
        Bb__Report *rep = p && p->type == REDIS_REPLY_STRING
                              ? bb__report__unpack(NULL, p->len, (const uint8_t *)p->str)
                              : NULL;
        if (!rep) {
            s->skipped++;
            continue;
        }
        if (samples_add(s, rep) != BB_OK) {
            rc = ctl_error("out of memory");
        }
        bb__report__free_unpacked(rep, NULL);
    }

free_reply:
    freeReplyObject(r);
    return rc;
}

/* Bytes after compressing every sample on its own, with dict or without. */
static int compressed_total(struct bb_zenc *z, const struct bb_zdict *dict, const struct samples *s,
                            size_t *total)
{
    size_t off = 0, max = 0;
    for (unsigned i = 0; i < s->n; i++) {
        max = s->sizes[i] > max ? s->sizes[i] : max;
    }
    size_t cap = bb_zbound(max);
    uint8_t *dst = malloc(cap);
    if (!dst) {
        return BB_ENOMEM;
    }
    *total = 0;
    for (unsigned i = 0; i < s->n; i++) {
        size_t out;
        int rc = bb_zenc_compress(z, dict, s->buf + off, s->sizes[i], dst, cap, &out);
        if (rc != BB_OK) {
            free(dst);
            return rc;
        }
        *total += out;
        off += s->sizes[i];
    }
    free(dst);
    return BB_OK;
}

static int store_dict(redisContext *c, uint32_t id, const void *dict, size_t len)
{
    char key[48], sid[16];
    snprintf(key, sizeof(key), "bb:zdict:%" PRIu32, id);
    snprintf(sid, sizeof(sid), "%" PRIu32, id);
    redisAppendCommand(c, "MULTI");
    redisAppendCommand(c, "SET %s %b", key, dict, len);
    redisAppendCommand(c, "SET bb:zdict:current %s", sid);
    redisAppendCommand(c, "EXEC");
    int rc = CTL_OK;
    for (int i = 0; i < 4; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
            return ctl_error("redis: %s", c->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR && rc == CTL_OK) {
            rc = ctl_error("storing the dictionary: %s", r->str);
        }
        freeReplyObject(r);
    }
    return rc;
}

static int prune(struct ctl *ctl, uint32_t current, const char *previous, struct json_object *out);

static int dict_train(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv,
                      bool rotate)
{
    static const struct option train_opts[] = {
        CTL_COMMON_OPTS,
        {"samples", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},
        {"level", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0},
    };
    static const struct option rotate_opts[] = {
        CTL_COMMON_OPTS,
        {"samples", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},
        {"level", required_argument, NULL, 'l'},
        {"prune", no_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    long nsamples = 2000, level = 3;
    int64_t size = 16 * 1024;
    bool do_prune = false;
    char previous[32] = "";
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", rotate ? rotate_opts : train_opts, NULL)) != -1) {
        if (opt == 'p') {
            do_prune = true;
        } else if (opt == 'n') {
            if (ctl_parse_long(cmd, "--samples", optarg, 1, 1000000, &nsamples) != CTL_OK) {
                return CTL_USAGE;
            }
        } else if (opt == 's') {
            if (bb_parse_bytes(optarg, &size) != BB_OK || size < 1024 || size > 1024 * 1024) {
                return ctl_usage(cmd, "--size: expected 1kb..1mb, got '%s'", optarg);
            }
        } else if (opt == 'l') {
            if (ctl_parse_long(cmd, "--level", optarg, 1, 19, &level) != CTL_OK) {
                return CTL_USAGE;
            }
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind < argc) {
        return ctl_usage(cmd, "unexpected argument '%s'", argv[optind]);
    }
    if (ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }

    if (rotate) {
        redisReply *cur = ctl_redis(ctl, "GET bb:zdict:current");
        if (!cur) {
            return CTL_ERR;
        }
        if (cur->type == REDIS_REPLY_STRING) {
            snprintf(previous, sizeof(previous), "%s", cur->str);
        }
        freeReplyObject(cur);
    }

    struct samples s = {0};
    struct bb_zdict *d = NULL;
    struct bb_zenc *z = NULL;
    uint8_t *dict = NULL;
    size_t dlen = 0, plain = 0, with = 0;
    rc = CTL_ERR;
    if (collect(ctl->c, nsamples, &s) != CTL_OK) {
        goto free_samples;
    }
    if (s.n < MIN_SAMPLES) {
        ctl_error("only %u reports in bb:reports; a dictionary needs a few hundred samples", s.n);
        goto free_samples;
    }
    if (!(dict = malloc((size_t)size))) {
        ctl_error("out of memory");
        goto free_samples;
    }
    int r = bb_zdict_train(s.buf, s.sizes, s.n, dict, (size_t)size, &dlen);
    if (r == BB_EINVAL) {
        ctl_error("zstd could not train on %u samples (%zu bytes): it wants a few hundred, and "
                  "varied",
                  s.n, s.len);
        goto free_dict;
    }
    if (r != BB_OK) {
        ctl_error("training: %s", bb_strerror(r));
        goto free_dict;
    }
    if (!(d = bb_zdict_new(dict, dlen, (int)level)) || !(z = bb_zenc_new((int)level))) {
        ctl_error("the trained dictionary does not load (or out of memory)");
        goto free_zstd;
    }
    if (compressed_total(z, NULL, &s, &plain) != BB_OK ||
        compressed_total(z, d, &s, &with) != BB_OK) {
        ctl_error("compressing the samples failed");
        goto free_zstd;
    }
    uint32_t id = bb_zdict_id(d);
    if (store_dict(ctl->c, id, dict, dlen) != CTL_OK) {
        goto free_zstd;
    }
    double r_plain = plain ? (double)s.len / (double)plain : 0;
    double r_with = with ? (double)s.len / (double)with : 0;
    struct json_object *pruned = do_prune ? json_object_new_object() : NULL;
    if (pruned && prune(ctl, id, previous, pruned) != CTL_OK) {
        json_object_put(pruned);
        goto free_zstd;
    }
    if (ctl->json) {
        struct json_object *o = json_object_new_object();
        if (rotate) {
            json_object_object_add(o, "previous",
                                   previous[0] ? json_object_new_string(previous) : NULL);
        }
        if (pruned) {
            json_object_object_add(o, "prune", pruned);
            pruned = NULL;
        }
        json_object_object_add(o, "id", json_object_new_int64(id));
        json_object_object_add(o, "bytes", json_object_new_int64((int64_t)dlen));
        json_object_object_add(o, "samples", json_object_new_int64(s.n));
        json_object_object_add(o, "skipped", json_object_new_int64(s.skipped));
        json_object_object_add(o, "raw_bytes", json_object_new_int64((int64_t)s.len));
        json_object_object_add(o, "zstd_bytes", json_object_new_int64((int64_t)plain));
        json_object_object_add(o, "zstd_dict_bytes", json_object_new_int64((int64_t)with));
        json_object_object_add(o, "ratio", json_object_new_double(r_plain));
        json_object_object_add(o, "ratio_dict", json_object_new_double(r_with));
        char key[32];
        snprintf(key, sizeof(key), "bb:zdict:%" PRIu32, id);
        json_object_object_add(o, "key", json_object_new_string(key));
        ctl_print_json(o);
    } else {
        printf("dictionary %" PRIu32 ": %zu bytes, trained on %u notifications (%zu skipped "
               "entries)\n",
               id, dlen, s.n, (size_t)s.skipped);
        printf("stored at bb:zdict:%" PRIu32 " and made current; brokers switch within their "
               "dict_check interval\n",
               id);
        printf("on the samples: %.0f B raw per notification, %.2fx without it (%.0f B), "
               "%.2fx with it (%.0f B)\n",
               (double)s.len / s.n, r_plain, (double)plain / s.n, r_with, (double)with / s.n);
        if (rotate) {
            printf("previous current: %s (kept)\n", previous[0] ? previous : "none");
        }
        if (pruned) {
            struct json_object *v;
            json_object_object_get_ex(pruned, "deleted", &v);
            printf("pruned: deleted %s", json_object_to_json_string(v));
            json_object_object_get_ex(pruned, "in_use", &v);
            printf("; kept in use by bb:out:* entries %s\n", json_object_to_json_string(v));
        }
    }
    json_object_put(pruned);
    rc = CTL_OK;

free_zstd:
    bb_zenc_free(z);
    bb_zdict_unref(d);
free_dict:
    free(dict);
free_samples:
    free(s.buf);
    free(s.sizes);
    return rc;
}

static int dict_show(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {CTL_COMMON_OPTS, {NULL, 0, NULL, 0}};
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind < argc) {
        return ctl_usage(cmd, "unexpected argument '%s'", argv[optind]);
    }
    if (ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }
    redisReply *cur = redisCommand(ctl->c, "GET bb:zdict:current");
    if (!cur) {
        return ctl_error("redis: %s", ctl->c->errstr);
    }
    if (cur->type == REDIS_REPLY_ERROR) {
        rc = ctl_error("GET bb:zdict:current: %s", cur->str);
        freeReplyObject(cur);
        return rc;
    }
    const char *current = cur->type == REDIS_REPLY_STRING ? cur->str : NULL;
    struct json_object *arr = json_object_new_array();
    char cursor[32] = "0";
    rc = CTL_OK;
    do {
        redisReply *r = redisCommand(ctl->c, "SCAN %s MATCH bb:zdict:* COUNT 1000", cursor);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            rc = ctl_error("SCAN: %s", r ? (r->type == REDIS_REPLY_ERROR ? r->str : "bad reply")
                                         : ctl->c->errstr);
            if (r) {
                freeReplyObject(r);
            }
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *k = keys->element[i]->str;
            if (strcmp(k, "bb:zdict:current") == 0) {
                continue;
            }
            redisReply *v = redisCommand(ctl->c, "GET %s", k);
            if (!v || v->type != REDIS_REPLY_STRING) {
                if (v) {
                    freeReplyObject(v);
                }
                continue;
            }
            struct bb_zdict *d = bb_zdict_new(v->str, v->len, 3);
            struct json_object *o = json_object_new_object();
            bool is_cur = current && strcmp(k + 9, current) == 0;
            json_object_object_add(o, "key", json_object_new_string(k));
            json_object_object_add(o, "bytes", json_object_new_int64((int64_t)v->len));
            json_object_object_add(o, "valid", json_object_new_boolean(d != NULL));
            json_object_object_add(o, "id_matches",
                                   json_object_new_boolean(d && (uint64_t)bb_zdict_id(d) ==
                                                                    strtoull(k + 9, NULL, 10)));
            json_object_object_add(o, "current", json_object_new_boolean(is_cur));
            json_object_array_add(arr, o);
            bb_zdict_unref(d);
            freeReplyObject(v);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    if (rc == CTL_OK) {
        if (ctl->json) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "current", current ? json_object_new_string(current) : NULL);
            json_object_object_add(o, "dictionaries", json_object_get(arr));
            ctl_print_json(o);
        } else {
            printf("current: %s\n", current ? current : "none (brokers compress without one)");
            for (size_t i = 0; i < json_object_array_length(arr); i++) {
                struct json_object *o = json_object_array_get_idx(arr, i), *f;
                json_object_object_get_ex(o, "key", &f);
                const char *key = json_object_get_string(f);
                json_object_object_get_ex(o, "bytes", &f);
                int64_t bytes = json_object_get_int64(f);
                json_object_object_get_ex(o, "valid", &f);
                bool valid = json_object_get_boolean(f);
                json_object_object_get_ex(o, "id_matches", &f);
                bool match = json_object_get_boolean(f);
                json_object_object_get_ex(o, "current", &f);
                printf("  %-24s %8" PRId64 " bytes%s%s\n", key, bytes,
                       json_object_get_boolean(f) ? "  (current)" : "",
                       !valid   ? "  NOT A ZSTD DICTIONARY"
                       : !match ? "  ID DOES NOT MATCH"
                                : "");
            }
            if (current && json_object_array_length(arr) == 0) {
                printf("  bb:zdict:%s is missing\n", current);
            }
        }
    }
    json_object_put(arr);
    freeReplyObject(cur);
    return rc;
}

int cmd_dict_train(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    return dict_train(ctl, cmd, argc, argv, false);
}

int cmd_dict_rotate(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    return dict_train(ctl, cmd, argc, argv, true);
}

int cmd_dict_show(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    return dict_show(ctl, cmd, argc, argv);
}

/* ---- pruning ----------------------------------------------------------------------------- */

#define MAX_IDS 4096

struct idset {
    uint32_t v[MAX_IDS];
    size_t n;
    bool full; /* more ids than fit: prune nothing */
};

static bool idset_has(const struct idset *s, uint32_t id)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i] == id) {
            return true;
        }
    }
    return false;
}

static void idset_add(struct idset *s, uint32_t id)
{
    if (!idset_has(s, id)) {
        if (s->n == MAX_IDS) {
            s->full = true;
            return;
        }
        s->v[s->n++] = id;
    }
}

/* The dictionary ids the frames of one stream's entries name (0: none). */
static int ids_in_stream(struct ctl *ctl, const char *stream, struct idset *used)
{
    char start[BB_STREAM_ID_MAX + 1] = "-";
    for (;;) {
        redisReply *r = ctl_redis(ctl, "XRANGE %s %s + COUNT 1000", stream, start);
        if (!r) {
            return CTL_ERR;
        }
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        for (size_t i = 0; i < n; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) {
                continue;
            }
            snprintf(start, sizeof(start), "(%s", e->element[0]->str);
            const redisReply *p = ctl_field(e->element[1], "p");
            if (!p || p->type != REDIS_REPLY_STRING) {
                continue;
            }
            Bb__DeliveryBatch *b =
                bb__delivery_batch__unpack(NULL, p->len, (const uint8_t *)p->str);
            if (b) {
                idset_add(used,
                          bb_zframe_dict_id(b->notification_zstd.data, b->notification_zstd.len));
                bb__delivery_batch__free_unpacked(b, NULL);
            }
        }
        freeReplyObject(r);
        if (n < 1000) {
            return CTL_OK;
        }
    }
}

/* Every SCAN match of pattern (of type, or any type if type is NULL) into *keys. */
static int scan_all(struct ctl *ctl, const char *pattern, const char *type,
                    struct json_object *keys)
{
    char cursor[32] = "0";
    do {
        redisReply *r =
            type ? ctl_redis(ctl, "SCAN %s MATCH %s COUNT 1000 TYPE %s", cursor, pattern, type)
                 : ctl_redis(ctl, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
        if (!r) {
            return CTL_ERR;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return ctl_error("SCAN: unexpected reply");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            json_object_array_add(keys, json_object_new_string(r->element[1]->element[i]->str));
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return CTL_OK;
}

/* Deletes bb:zdict:<id> unless it is current, the previous current, or
 * named by the frame of a batch in bb:out:* or in a dead letter of
 * bb:dead. Fills out with deleted and in_use. */
static int prune(struct ctl *ctl, uint32_t current, const char *previous, struct json_object *out)
{
    struct idset *used = calloc(1, sizeof(*used));
    struct json_object *streams = json_object_new_array(), *dicts = json_object_new_array();
    struct json_object *deleted = json_object_new_array(), *in_use = json_object_new_array();
    int rc = CTL_ERR;
    if (!used) {
        ctl_error("out of memory");
        goto done;
    }
    if (scan_all(ctl, "bb:out:*", "stream", streams) != CTL_OK ||
        scan_all(ctl, "bb:zdict:*", NULL, dicts) != CTL_OK) {
        goto done;
    }
    for (size_t i = 0; i < json_object_array_length(streams); i++) {
        const char *st = json_object_get_string(json_object_array_get_idx(streams, i));
        if (ids_in_stream(ctl, st, used) != CTL_OK) {
            goto done;
        }
    }
    /* Batches in dead letters may be replayed: their dictionaries stay too. */
    if (ids_in_stream(ctl, "bb:dead", used) != CTL_OK) {
        goto done;
    }
    if (used->full) {
        ctl_error("more than %d dictionary ids in bb:out:*; pruning nothing", MAX_IDS);
        goto done;
    }
    rc = CTL_OK;
    for (size_t i = 0; i < json_object_array_length(dicts) && rc == CTL_OK; i++) {
        const char *key = json_object_get_string(json_object_array_get_idx(dicts, i));
        const char *sid = key + strlen("bb:zdict:");
        char *end;
        unsigned long long id = strtoull(sid, &end, 10);
        if (strcmp(key, "bb:zdict:current") == 0 || *end || end == sid || id > UINT32_MAX ||
            id == current || strcmp(sid, previous) == 0) {
            continue; /* not a dictionary of ours, or one to keep whatever happens */
        }
        if (idset_has(used, (uint32_t)id)) {
            json_object_array_add(in_use, json_object_new_int64((int64_t)id));
            continue;
        }
        redisReply *r = ctl_redis(ctl, "DEL %s", key);
        if (!r) {
            rc = CTL_ERR;
            break;
        }
        freeReplyObject(r);
        json_object_array_add(deleted, json_object_new_int64((int64_t)id));
    }

done:
    json_object_object_add(out, "deleted", deleted);
    json_object_object_add(out, "in_use", in_use);
    json_object_put(streams);
    json_object_put(dicts);
    free(used);
    return rc;
}
