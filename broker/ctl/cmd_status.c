/* buurtbusctl status: one look at a deployment, read from Redis only.
 * Main thread.
 *
 * Streams: XLEN, XINFO GROUPS (lag, pending, last delivered id) and XINFO
 * CONSUMERS (pending, idle) of bb:reports, bb:report-status, bb:directory,
 * bb:out:{push,email,inbox,digest,social} and any other bb:out:* stream,
 * bb:receipts, bb:dead. Jobs: ZCOUNT of every bb:later:<inst> sorted set,
 * due now and later. Dead letters by reason among the newest N. Directory:
 * SCARD bb:users / bb:groups / bb:follows. The current dictionary. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "ctl.h"
#include "snapshot.h"

#define DEAD_PAGE 1000

static const char *const fixed_streams[] = {
    "bb:reports",   "bb:report-status", "bb:directory",  "bb:out:push", "bb:out:email",
    "bb:out:inbox", "bb:out:digest",    "bb:out:social", "bb:receipts", "bb:dead",
};
#define NFIXED (sizeof(fixed_streams) / sizeof(fixed_streams[0]))

static struct json_object *jint_or_null(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_INTEGER ? json_object_new_int64(r->integer) : NULL;
}

static int64_t int_of(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_int64(v) : 0;
}

static const char *str_of(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : NULL;
}

/* Its consumers: name, pending, idle_ms. */
static int consumers(struct ctl *ctl, const char *stream, const char *group,
                     struct json_object *arr)
{
    redisReply *r = ctl_redis(ctl, "XINFO CONSUMERS %s %s", stream, group);
    if (!r) {
        return CTL_ERR;
    }
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const redisReply *c = r->element[i];
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "name",
                               json_object_new_string(ctl_str(ctl_field(c, "name"), "")));
        json_object_object_add(o, "pending", jint_or_null(ctl_field(c, "pending")));
        json_object_object_add(o, "idle_ms", jint_or_null(ctl_field(c, "idle")));
        json_object_array_add(arr, o);
    }
    freeReplyObject(r);
    return CTL_OK;
}

/* One stream: {stream, exists, length, groups: [...]}. */
static int stream_status(struct ctl *ctl, const char *stream, struct json_object *out)
{
    redisReply *r = ctl_redis(ctl, "EXISTS %s", stream);
    if (!r) {
        return CTL_ERR;
    }
    bool exists = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    freeReplyObject(r);
    struct json_object *o = json_object_new_object();
    struct json_object *groups = json_object_new_array();
    json_object_object_add(o, "stream", json_object_new_string(stream));
    json_object_object_add(o, "exists", json_object_new_boolean(exists));
    json_object_object_add(o, "groups", groups);
    json_object_array_add(out, o);
    if (!exists) {
        json_object_object_add(o, "length", json_object_new_int64(0));
        return CTL_OK;
    }
    if (!(r = ctl_redis(ctl, "XLEN %s", stream))) {
        return CTL_ERR;
    }
    json_object_object_add(o, "length", jint_or_null(r));
    freeReplyObject(r);
    if (!(r = ctl_redis(ctl, "XINFO GROUPS %s", stream))) {
        return CTL_ERR;
    }
    int rc = CTL_OK;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && rc == CTL_OK; i++) {
        const redisReply *g = r->element[i];
        const char *name = ctl_str(ctl_field(g, "name"), "");
        struct json_object *go = json_object_new_object(), *cs = json_object_new_array();
        json_object_object_add(go, "name", json_object_new_string(name));
        /* lag is nil when Redis cannot tell (entries deleted mid-stream). */
        json_object_object_add(go, "lag", jint_or_null(ctl_field(g, "lag")));
        json_object_object_add(go, "pending", jint_or_null(ctl_field(g, "pending")));
        json_object_object_add(
            go, "last_delivered",
            json_object_new_string(ctl_str(ctl_field(g, "last-delivered-id"), "")));
        json_object_object_add(go, "entries_read", jint_or_null(ctl_field(g, "entries-read")));
        json_object_object_add(go, "consumers", cs);
        json_object_array_add(groups, go);
        rc = consumers(ctl, stream, name, cs);
    }
    freeReplyObject(r);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Keys matching pattern of the given type, sorted, as a NULL-terminated
 * array the caller frees (each string too). */
static char **scan_keys(struct ctl *ctl, const char *pattern, const char *type, size_t *n)
{
    char cursor[32] = "0";
    char **keys = NULL;
    size_t cap = 0;
    *n = 0;
    do {
        redisReply *r =
            ctl_redis(ctl, "SCAN %s MATCH %s COUNT 1000 TYPE %s", cursor, pattern, type);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            if (r) {
                ctl_error("SCAN: unexpected reply");
                freeReplyObject(r);
            }
            goto fail;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            if (*n + 2 > cap) {
                cap = cap ? cap * 2 : 16;
                char **nk = realloc(keys, cap * sizeof(*nk));
                if (!nk) {
                    freeReplyObject(r);
                    ctl_error("out of memory");
                    goto fail;
                }
                keys = nk;
            }
            keys[(*n)++] = strdup(r->element[1]->element[i]->str);
            keys[*n] = NULL;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    if (!keys && !(keys = calloc(1, sizeof(*keys)))) {
        ctl_error("out of memory");
        return NULL;
    }
    qsort(keys, *n, sizeof(*keys), cmp_str);
    return keys;

fail:
    for (size_t i = 0; i < *n; i++) {
        free(keys[i]);
    }
    free(keys);
    return NULL;
}

static void free_keys(char **keys, size_t n)
{
    for (size_t i = 0; keys && i < n; i++) {
        free(keys[i]);
    }
    free(keys);
}

static int streams_status(struct ctl *ctl, struct json_object *out)
{
    size_t n;
    char **extra = scan_keys(ctl, "bb:out:*", "stream", &n);
    if (!extra) {
        return CTL_ERR;
    }
    int rc = CTL_OK;
    for (size_t i = 0; i < NFIXED && rc == CTL_OK; i++) {
        rc = stream_status(ctl, fixed_streams[i], out);
    }
    for (size_t i = 0; i < n && rc == CTL_OK; i++) {
        bool fixed = false;
        for (size_t k = 0; k < NFIXED; k++) {
            fixed = fixed || strcmp(extra[i], fixed_streams[k]) == 0;
        }
        if (!fixed) {
            rc = stream_status(ctl, extra[i], out);
        }
    }
    free_keys(extra, n);
    return rc;
}

/* bb:later:<inst>: jobs due now and later (a leased job counts as later). */
static int jobs_status(struct ctl *ctl, struct json_object *out)
{
    size_t n;
    char **keys = scan_keys(ctl, "bb:later:*", "zset", &n);
    if (!keys) {
        return CTL_ERR;
    }
    long long now = (long long)ctl_now_ms();
    int rc = CTL_OK;
    for (size_t i = 0; i < n && rc == CTL_OK; i++) {
        redisReply *due = ctl_redis(ctl, "ZCOUNT %s -inf %lld", keys[i], now);
        redisReply *later = due ? ctl_redis(ctl, "ZCOUNT %s (%lld +inf", keys[i], now) : NULL;
        if (!due || !later) {
            rc = CTL_ERR;
        } else {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "instance",
                                   json_object_new_string(keys[i] + strlen("bb:later:")));
            json_object_object_add(o, "due", jint_or_null(due));
            json_object_object_add(o, "later", jint_or_null(later));
            json_object_array_add(out, o);
        }
        if (due) {
            freeReplyObject(due);
        }
        if (later) {
            freeReplyObject(later);
        }
    }
    free_keys(keys, n);
    return rc;
}

/* Dead letters by reason among the newest sample entries. */
static int dead_status(struct ctl *ctl, long sample, struct json_object *out)
{
    redisReply *r = ctl_redis(ctl, "XLEN bb:dead");
    if (!r) {
        return CTL_ERR;
    }
    json_object_object_add(out, "total", jint_or_null(r));
    freeReplyObject(r);
    struct json_object *by = json_object_new_object();
    json_object_object_add(out, "by_reason", by);
    char end[BB_STREAM_ID_MAX + 1] = "+";
    long seen = 0;
    while (seen < sample) {
        long want = sample - seen < DEAD_PAGE ? sample - seen : DEAD_PAGE;
        if (!(r = ctl_redis(ctl, "XREVRANGE bb:dead %s - COUNT %ld", end, want))) {
            return CTL_ERR;
        }
        size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
        for (size_t i = 0; i < n; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) {
                continue;
            }
            snprintf(end, sizeof(end), "(%s", e->element[0]->str);
            const char *reason = ctl_str(ctl_field(e->element[1], "reason"), "?");
            struct json_object *v;
            int64_t c = json_object_object_get_ex(by, reason, &v) ? json_object_get_int64(v) : 0;
            json_object_object_add(by, reason, json_object_new_int64(c + 1));
        }
        seen += (long)n;
        freeReplyObject(r);
        if ((long)n < want) {
            break;
        }
    }
    json_object_object_add(out, "sampled", json_object_new_int64(seen));
    return CTL_OK;
}

static int directory_status(struct ctl *ctl, struct json_object *out, struct json_object *st)
{
    static const char *const sets[][2] = {
        {"users", "bb:users"}, {"groups", "bb:groups"}, {"followed_reports", "bb:follows"}};
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
        redisReply *r = ctl_redis(ctl, "SCARD %s", sets[i][1]);
        if (!r) {
            return CTL_ERR;
        }
        json_object_object_add(out, sets[i][0], jint_or_null(r));
        freeReplyObject(r);
    }
    redisReply *r = ctl_redis(ctl, "GET bb:zdict:current");
    if (!r) {
        return CTL_ERR;
    }
    json_object_object_add(st, "dictionary",
                           r->type == REDIS_REPLY_STRING ? json_object_new_string(r->str) : NULL);
    freeReplyObject(r);
    return CTL_OK;
}

static void print_idle(int64_t ms, char *buf, size_t cap)
{
    if (ms < 1000) {
        snprintf(buf, cap, "%" PRId64 "ms", ms);
    } else if (ms < 120000) {
        snprintf(buf, cap, "%.1fs", (double)ms / 1000);
    } else if (ms < 7200000) {
        snprintf(buf, cap, "%" PRId64 "m", ms / 60000);
    } else {
        snprintf(buf, cap, "%" PRId64 "h", ms / 3600000);
    }
}

static void print_text(struct json_object *st)
{
    struct json_object *streams, *jobs, *dead, *dir, *by;
    json_object_object_get_ex(st, "streams", &streams);
    json_object_object_get_ex(st, "jobs", &jobs);
    json_object_object_get_ex(st, "dead", &dead);
    json_object_object_get_ex(st, "directory", &dir);
    printf("%-22s %10s  %-26s %8s %8s  %s\n", "STREAM", "LENGTH", "GROUP", "LAG", "PENDING",
           "LAST DELIVERED");
    for (size_t i = 0; i < json_object_array_length(streams); i++) {
        struct json_object *s = json_object_array_get_idx(streams, i), *groups, *v;
        json_object_object_get_ex(s, "groups", &groups);
        json_object_object_get_ex(s, "exists", &v);
        if (!json_object_get_boolean(v)) {
            printf("%-22s %10s\n", str_of(s, "stream"), "-");
            continue;
        }
        size_t ng = json_object_array_length(groups);
        printf("%-22s %10" PRId64 "%s\n", str_of(s, "stream"), int_of(s, "length"),
               ng ? "" : "  (no consumer group)");
        for (size_t k = 0; k < ng; k++) {
            struct json_object *g = json_object_array_get_idx(groups, k), *cs, *lag;
            char lagbuf[24] = "?";
            if (json_object_object_get_ex(g, "lag", &lag) && lag) {
                snprintf(lagbuf, sizeof(lagbuf), "%" PRId64, json_object_get_int64(lag));
            }
            printf("%-22s %10s  %-26s %8s %8" PRId64 "  %s\n", "", "", str_of(g, "name"), lagbuf,
                   int_of(g, "pending"), str_of(g, "last_delivered"));
            json_object_object_get_ex(g, "consumers", &cs);
            for (size_t c = 0; c < json_object_array_length(cs); c++) {
                struct json_object *co = json_object_array_get_idx(cs, c);
                char idle[24];
                print_idle(int_of(co, "idle_ms"), idle, sizeof(idle));
                printf("%-22s %10s    consumer %-40s pending %" PRId64 ", idle %s\n", "", "",
                       str_of(co, "name"), int_of(co, "pending"), idle);
            }
        }
    }
    printf("\njobs (bb:later:<instance>)");
    if (json_object_array_length(jobs) == 0) {
        printf(": none\n");
    } else {
        printf("\n");
    }
    for (size_t i = 0; i < json_object_array_length(jobs); i++) {
        struct json_object *j = json_object_array_get_idx(jobs, i);
        printf("  %-24s due now %" PRId64 ", later %" PRId64 "\n", str_of(j, "instance"),
               int_of(j, "due"), int_of(j, "later"));
    }
    printf("\ndead letters: %" PRId64 " (by reason, newest %" PRId64 ")\n", int_of(dead, "total"),
           int_of(dead, "sampled"));
    json_object_object_get_ex(dead, "by_reason", &by);
    json_object_object_foreach(by, reason, count)
    {
        printf("  %-32s %" PRId64 "\n", reason, json_object_get_int64(count));
    }
    const char *d = str_of(st, "dictionary");
    printf("\ndirectory: %" PRId64 " users, %" PRId64 " groups, %" PRId64 " followed reports\n",
           int_of(dir, "users"), int_of(dir, "groups"), int_of(dir, "followed_reports"));
    printf("dictionary: %s\n", d ? d : "none (brokers compress without one)");
}

int cmd_status(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"dead-sample", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    long sample = 10000;
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'd') {
            if (ctl_parse_long(cmd, "--dead-sample", optarg, 0, 10000000, &sample) != CTL_OK) {
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
    struct json_object *st = json_object_new_object();
    struct json_object *streams = json_object_new_array(), *jobs = json_object_new_array();
    struct json_object *dead = json_object_new_object(), *dir = json_object_new_object();
    json_object_object_add(st, "time_ms", json_object_new_int64(ctl_now_ms()));
    json_object_object_add(st, "streams", streams);
    json_object_object_add(st, "jobs", jobs);
    json_object_object_add(st, "dead", dead);
    json_object_object_add(st, "directory", dir);
    rc = streams_status(ctl, streams);
    if (rc == CTL_OK) {
        rc = jobs_status(ctl, jobs);
    }
    if (rc == CTL_OK) {
        rc = dead_status(ctl, sample, dead);
    }
    if (rc == CTL_OK) {
        rc = directory_status(ctl, dir, st);
    }
    if (rc != CTL_OK) {
        json_object_put(st);
        return rc;
    }
    if (ctl->json) {
        ctl_print_json(st);
    } else {
        print_text(st);
        json_object_put(st);
    }
    return CTL_OK;
}
