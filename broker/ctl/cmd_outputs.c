/* buurtbusctl outputs: what the broker wrote to bb:out:*, per report —
 * how many people got it on which channel, with a few example recipients
 * by screen name. Decodes the batches and their zstd notifications
 * (fetching dictionaries from bb:zdict:{id}) exactly as a worker would.
 * Main thread. */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "ctl.h"
#include "delivery.pb-c.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "route.h"
#include "wire.h"

#define MAX_EXAMPLES 8
#define PAGE 1000

struct summary {
    char key[80];
    char title[64];
    char first_id[48]; /* first output entry, for ordering */
    int category, urgency;
    uint64_t count[BB_CHANNELS];
    uint64_t examples[MAX_EXAMPLES];
    unsigned nexamples;
};

struct outputs {
    struct summary *s;
    size_t n, cap;
    struct bb_zdict *dicts[16];
    unsigned ndicts;
    struct bb_zdec *z;
    redisContext *c;
};

static struct summary *find(struct outputs *o, const char *key, const char *entry_id)
{
    for (size_t i = 0; i < o->n; i++) {
        if (strcmp(o->s[i].key, key) == 0) {
            return &o->s[i];
        }
    }
    if (o->n == o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 64;
        struct summary *s = realloc(o->s, nc * sizeof(*s));
        if (!s) {
            return NULL;
        }
        o->s = s;
        o->cap = nc;
    }
    struct summary *s = &o->s[o->n++];
    memset(s, 0, sizeof(*s));
    snprintf(s->key, sizeof(s->key), "%s", key);
    snprintf(s->first_id, sizeof(s->first_id), "%s", entry_id);
    return s;
}

static const struct bb_zdict *dict_for(struct outputs *o, uint32_t id)
{
    if (!id) {
        return NULL;
    }
    for (unsigned i = 0; i < o->ndicts; i++) {
        if (bb_zdict_id(o->dicts[i]) == id) {
            return o->dicts[i];
        }
    }
    redisReply *r = redisCommand(o->c, "GET bb:zdict:%u", id);
    struct bb_zdict *d = NULL;
    if (r && r->type == REDIS_REPLY_STRING) {
        d = bb_zdict_new(r->str, r->len, 3);
    }
    freeReplyObject(r);
    if (d && o->ndicts < 16) {
        o->dicts[o->ndicts++] = d;
    } else if (d) {
        bb_zdict_unref(d);
        d = NULL;
    }
    return d;
}

/* Adds one bb:out entry to the summaries. */
static void take(struct outputs *o, const char *entry_id, const redisReply *fields)
{
    const redisReply *p = NULL;
    for (size_t k = 0; k + 1 < fields->elements; k += 2) {
        if (strcmp(fields->element[k]->str, "p") == 0) {
            p = fields->element[k + 1];
        }
    }
    if (!p) {
        return;
    }
    Bb__DeliveryBatch *b = bb__delivery_batch__unpack(NULL, p->len, (const uint8_t *)p->str);
    if (!b) {
        fprintf(stderr, "buurtbusctl: entry %s is not a DeliveryBatch\n", entry_id);
        return;
    }
    struct summary *s = find(o, b->notification_key, entry_id);
    if (s && !s->title[0]) {
        const uint8_t *raw;
        size_t rawlen;
        uint32_t did = bb_zframe_dict_id(b->notification_zstd.data, b->notification_zstd.len);
        if (bb_zdec_decompress(o->z, dict_for(o, did), b->notification_zstd.data,
                               b->notification_zstd.len, &raw, &rawlen) == BB_OK) {
            Bb__Notification *n = bb__notification__unpack(NULL, rawlen, raw);
            if (n) {
                snprintf(s->title, sizeof(s->title), "%s", n->title);
                s->category = n->category;
                s->urgency = n->urgency;
                bb__notification__free_unpacked(n, NULL);
            }
        }
    }
    if (s && b->channel >= 1 && b->channel <= BB_CHANNELS) {
        s->count[b->channel - 1] += b->n_recipients;
        for (size_t i = 0; i < b->n_recipients && s->nexamples < MAX_EXAMPLES; i++) {
            if (b->recipient_kind != BB__RECIPIENT_KIND__RECIPIENT_KIND_USER) {
                break;
            }
            bool dup = false;
            for (unsigned k = 0; k < s->nexamples && !dup; k++) {
                dup = s->examples[k] == b->recipients[i];
            }
            if (!dup) {
                s->examples[s->nexamples++] = b->recipients[i];
            }
        }
    }
    bb__delivery_batch__free_unpacked(b, NULL);
}

static int read_stream(struct outputs *o, const char *stream, const char *since)
{
    char start[64];
    snprintf(start, sizeof(start), "%s", since);
    for (;;) {
        redisReply *r = redisCommand(o->c, "XRANGE %s %s + COUNT %d", stream, start, PAGE);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            int rc = ctl_error("XRANGE %s: %s", stream,
                               r && r->type == REDIS_REPLY_ERROR ? r->str : o->c->errstr);
            freeReplyObject(r);
            return rc;
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++) {
            take(o, r->element[i]->element[0]->str, r->element[i]->element[1]);
        }
        if (n) {
            snprintf(start, sizeof(start), "(%s", r->element[n - 1]->element[0]->str);
        }
        freeReplyObject(r);
        if (n < PAGE) {
            return CTL_OK;
        }
    }
}

/* The screen name of a user, for the examples; "#id" if unknown. */
static void screen_name(redisContext *c, uint64_t id, char *buf, size_t cap)
{
    snprintf(buf, cap, "#%llu", (unsigned long long)id);
    redisReply *r = redisCommand(c, "HGET bb:user:%llu u", (unsigned long long)id);
    if (r && r->type == REDIS_REPLY_STRING) {
        Bb__User *u = bb__user__unpack(NULL, r->len, (const uint8_t *)r->str);
        if (u && u->screen_name[0]) {
            snprintf(buf, cap, "%s", u->screen_name);
        }
        bb__user__free_unpacked(u, NULL);
    }
    freeReplyObject(r);
}

static int by_first_entry(const void *a, const void *b)
{
    const struct summary *x = a, *y = b;
    long long xm = atoll(x->first_id), ym = atoll(y->first_id);
    if (xm != ym) {
        return xm < ym ? -1 : 1;
    }
    return strcmp(x->key, y->key);
}

int cmd_outputs(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"since", required_argument, NULL, 's'},
        {"examples", required_argument, NULL, 'e'},
        {NULL, 0, NULL, 0},
    };
    const char *since = "-";
    long examples = 3;
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 's') {
            since = optarg;
        } else if (opt == 'e') {
            if (ctl_parse_long(cmd, "--examples", optarg, 0, MAX_EXAMPLES, &examples) != CTL_OK) {
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
    struct outputs o = {.c = ctl->c, .z = bb_zdec_new(1 << 20)};
    if (!o.z) {
        return ctl_error("out of memory");
    }
    static const char *streams[BB_CHANNELS] = {"bb:out:push", "bb:out:email", "bb:out:inbox",
                                               "bb:out:digest", "bb:out:social"};
    rc = CTL_OK;
    for (unsigned s = 0; s < BB_CHANNELS && rc == CTL_OK; s++) {
        rc = read_stream(&o, streams[s], since);
    }
    if (rc == CTL_OK) {
        if (o.n > 1) {
            qsort(o.s, o.n, sizeof(*o.s), by_first_entry);
        }
        struct json_object *arr = ctl->json ? json_object_new_array() : NULL;
        if (!arr && o.n == 0) {
            printf("no deliveries\n");
        }
        for (size_t i = 0; i < o.n; i++) {
            struct summary *s = &o.s[i];
            char name[80];
            if (arr) {
                struct json_object *j = json_object_new_object(), *ch = json_object_new_object();
                json_object_object_add(j, "key", json_object_new_string(s->key));
                json_object_object_add(j, "title", json_object_new_string(s->title));
                json_object_object_add(j, "urgency", json_object_new_int(s->urgency));
                for (unsigned c = 0; c < BB_CHANNELS; c++) {
                    json_object_object_add(ch, bb_channel_name(c),
                                           json_object_new_int64((int64_t)s->count[c]));
                }
                json_object_object_add(j, "channels", ch);
                struct json_object *ex = json_object_new_array();
                for (unsigned k = 0; k < s->nexamples && k < (unsigned)examples; k++) {
                    screen_name(ctl->c, s->examples[k], name, sizeof(name));
                    json_object_array_add(ex, json_object_new_string(name));
                }
                json_object_object_add(j, "examples", ex);
                json_object_array_add(arr, j);
                continue;
            }
            printf("%-28s %-20s", s->key, s->title);
            for (unsigned c = 0; c < BB_CHANNELS; c++) {
                if (s->count[c]) {
                    printf("  %s=%llu", bb_channel_name(c), (unsigned long long)s->count[c]);
                }
            }
            if (s->nexamples && examples) {
                printf("  e.g.");
                for (unsigned k = 0; k < s->nexamples && k < (unsigned)examples; k++) {
                    screen_name(ctl->c, s->examples[k], name, sizeof(name));
                    printf(" %s", name);
                }
            }
            printf("\n");
        }
        if (arr) {
            ctl_print_json(arr);
        }
    }
    for (unsigned i = 0; i < o.ndicts; i++) {
        bb_zdict_unref(o.dicts[i]);
    }
    bb_zdec_free(o.z);
    free(o.s);
    return rc;
}
