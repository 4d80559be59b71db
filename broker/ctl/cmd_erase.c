/* buurtbusctl erase-user: a person's GDPR erasure, everywhere buurtbus
 * keeps them. Main thread, one synchronous hiredis connection.
 *
 * Per id, in order:
 *   1. the directory change user_erase, through the same store as `load`
 *      (bb_store_apply): the keys go and the event lands on bb:directory,
 *      so brokers drop the person from their routing index, and workers
 *      (whose scripts refuse to collect or park for a user without
 *      bb:user:{id}, workers/host/later.c) add nothing of theirs any more;
 *   2. the sweep of what workers keep (docs/contracts.md "Workers"): the
 *      inbox, collections and their jobs, parked retries, bb:sent records,
 *      receipts, dead letters naming the person. Channel instances are
 *      found in Redis (SCAN), never in a worker's configuration;
 *   3. after --settle, the same sweep again: a delivery in flight at the
 *      erasure can still write its record, receipt or dead letter, or an
 *      inbox entry. Several ids share one settle.
 *
 * What names a user is decided in one place (the "names" section below):
 * the SCAN/HSCAN patterns narrow on the server, and every key, field and
 * delivery id found is checked again in C before anything is deleted. Ids
 * are anchored on the ':' (or 'u') before them, so user 1 never matches
 * user 11 or 21. Group recipients (the social channel) are never touched. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "config.h"
#include "ctl.h"
#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "snapshot.h"

#define SCAN_COUNT "1000"
#define RANGE_CHUNK 1000 /* stream entries per XRANGE */
#define DEL_CHUNK 500    /* keys, fields or entries per UNLINK, HDEL, XDEL */
#define STORE_TRIES 5    /* bb_store_apply attempts when its WATCH keeps failing */
#define DEFAULT_SETTLE_MS 30000
#define MAX_SETTLE_MS 600000

#define RECEIPTS_STREAM "bb:receipts"
#define DEAD_STREAM "bb:dead"

/* ---- names: which keys, fields and delivery ids belong to a user -------------------------- */

/* Delivery ids (common/wire.h bb_delivery_id, workers/host/stream.c):
 *   personal  "{notification key}:{channel}:{user}", channel 1..4
 *             (push, email, inbox, digest); 5 (social) has group recipients
 *   digest    "c:{instance}:u{user}:{due ms}", a collection sent as one
 * Keys:
 *   bb:inbox:{user}
 *   bb:collect:{instance}:u{user} and ...:sending
 *   bb:later:{instance} / ...:jobs members "c:u{user}" and "r:{delivery id}"
 *   bb:sent:{instance}:{delivery id} */

/* Server-side narrowing; whatever they return is checked by the functions below. */
#define PAT_JOBS_HASHES "bb:later:*:jobs"
#define PAT_COLLECT "bb:collect:*:u%" PRIu64 "*"
#define PAT_SENT "bb:sent:*[:u]%" PRIu64 "*"
#define PAT_RETRY "r:*:[1234]:%" PRIu64
#define FMT_INBOX "bb:inbox:%" PRIu64
#define FMT_COLLECTION_JOB "c:u%" PRIu64

/* s (len bytes) ends with the decimal id, right after the character before. */
static bool ends_with_id(const char *s, size_t len, char before, uint64_t id, size_t *start)
{
    char num[24];
    size_t n = (size_t)snprintf(num, sizeof(num), "%" PRIu64, id);
    if (len < n + 1 || memcmp(s + len - n, num, n) != 0 || s[len - n - 1] != before) {
        return false;
    }
    *start = len - n - 1; /* where `before` is */
    return true;
}

/* "...:{1-4}:{id}": a personal delivery to user id. */
static bool personal_to(const char *s, size_t len, uint64_t id)
{
    size_t at;
    return ends_with_id(s, len, ':', id, &at) && at >= 3 && s[at - 1] >= '1' && s[at - 1] <= '4' &&
           s[at - 2] == ':';
}

/* "...:u{id}:{digits}": the tail of a digest's delivery id to user id. */
static bool digest_tail_to(const char *s, size_t len, uint64_t id)
{
    size_t k = len;
    while (k > 0 && s[k - 1] >= '0' && s[k - 1] <= '9') {
        k--;
    }
    if (k == len || k < 1 || s[k - 1] != ':') {
        return false;
    }
    size_t at;
    return ends_with_id(s, k - 1, 'u', id, &at) && at >= 1 && s[at - 1] == ':';
}

/* A delivery id (a receipt's, a dead letter's `delivery`) naming user id. */
static bool delivery_names_user(const char *did, size_t len, uint64_t id)
{
    return personal_to(did, len, id) ||
           (len > 2 && memcmp(did, "c:", 2) == 0 && digest_tail_to(did, len, id));
}

/* bb:sent:{instance}:{delivery id} of user id. */
static bool sent_key_names_user(const char *key, size_t len, uint64_t id)
{
    return strncmp(key, "bb:sent:", 8) == 0 &&
           (personal_to(key, len, id) || (strstr(key, ":c:") && digest_tail_to(key, len, id)));
}

/* bb:collect:{instance}:u{id}, or the same with :sending. */
static bool collect_key_names_user(const char *key, size_t len, uint64_t id)
{
    static const char sending[] = ":sending";
    const size_t sl = sizeof(sending) - 1;
    size_t at;
    if (strncmp(key, "bb:collect:", 11) != 0) {
        return false;
    }
    if (len > sl && memcmp(key + len - sl, sending, sl) == 0) {
        len -= sl;
    }
    return ends_with_id(key, len, 'u', id, &at) && at > 11 && key[at - 1] == ':';
}

/* A bb:later job member "r:{delivery id}" retrying a delivery to user id. */
static bool retry_names_user(const char *member, size_t len, uint64_t id)
{
    return len > 2 && memcmp(member, "r:", 2) == 0 && personal_to(member + 2, len - 2, id);
}

/* A job dead letter's payload: a PendingDelivery for user id. */
static bool job_names_user(const char *p, size_t len, uint64_t id)
{
    Bb__PendingDelivery *pd = bb__pending_delivery__unpack(NULL, len, (const uint8_t *)p);
    if (!pd) {
        return false;
    }
    bool mine = pd->schema_version >= 1 &&
                pd->recipient_kind == BB__RECIPIENT_KIND__RECIPIENT_KIND_USER &&
                pd->recipient == id;
    bb__pending_delivery__free_unpacked(pd, NULL);
    return mine;
}

/* ---- what was removed ----------------------------------------------------------------------- */

struct counts {
    long long inbox;       /* inbox entries */
    long long collections; /* bb:collect keys */
    long long collected;   /* notifications in them */
    long long jobs;        /* collection jobs c:u{id} */
    long long retries;     /* retry jobs r:{delivery id} */
    long long sent;        /* bb:sent records */
    long long receipts;
    long long dead;
};

/* Keys, fields and entries removed (the collected items go with their collection). */
static long long counts_total(const struct counts *c)
{
    return c->inbox + c->collections + c->jobs + c->retries + c->sent + c->receipts + c->dead;
}

static void counts_add(struct counts *to, const struct counts *c)
{
    to->inbox += c->inbox;
    to->collections += c->collections;
    to->collected += c->collected;
    to->jobs += c->jobs;
    to->retries += c->retries;
    to->sent += c->sent;
    to->receipts += c->receipts;
    to->dead += c->dead;
}

/* ---- Redis helpers ------------------------------------------------------------------------ */

struct eraser {
    redisContext *c;
    uint64_t id;
    char *err;
    size_t errlen;
};

static int fail_reply(struct eraser *e, redisReply *r, const char *what)
{
    if (!r) {
        snprintf(e->err, e->errlen, "redis: %s: %s", what, e->c->errstr);
    } else {
        snprintf(e->err, e->errlen, "redis: %s: %.200s", what,
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
    }
    return BB_EIO;
}

/* A command with binary-safe arguments, collected and sent in chunks:
 * "UNLINK k...", "HDEL key f...", "XDEL stream id...". The integer
 * replies add up in *removed. */
struct multi_del {
    const char *head[3];
    int nhead;
    char *args[DEL_CHUNK];
    size_t lens[DEL_CHUNK];
    int n;
    long long *removed;
};

static int multi_del_flush(struct eraser *e, struct multi_del *m)
{
    const char *argv[3 + DEL_CHUNK];
    size_t lens[3 + DEL_CHUNK];
    int rc = BB_OK;
    if (m->n == 0) {
        return BB_OK;
    }
    for (int i = 0; i < m->nhead; i++) {
        argv[i] = m->head[i];
        lens[i] = strlen(m->head[i]);
    }
    for (int i = 0; i < m->n; i++) {
        argv[m->nhead + i] = m->args[i];
        lens[m->nhead + i] = m->lens[i];
    }
    redisReply *r = redisCommandArgv(e->c, m->nhead + m->n, argv, lens);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        rc = fail_reply(e, r, m->head[0]);
    } else {
        *m->removed += r->integer;
        freeReplyObject(r);
    }
    for (int i = 0; i < m->n; i++) {
        free(m->args[i]);
    }
    m->n = 0;
    return rc;
}

static int multi_del_add(struct eraser *e, struct multi_del *m, const char *s, size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy) {
        snprintf(e->err, e->errlen, "out of memory");
        return BB_ENOMEM;
    }
    memcpy(copy, s, len);
    copy[len] = '\0';
    m->args[m->n] = copy;
    m->lens[m->n] = len;
    m->n++;
    return m->n == DEL_CHUNK ? multi_del_flush(e, m) : BB_OK;
}

static void multi_del_drop(struct multi_del *m)
{
    for (int i = 0; i < m->n; i++) {
        free(m->args[i]);
    }
    m->n = 0;
}

/* Calls fn for every key SCAN MATCH pattern finds. */
typedef int key_fn(struct eraser *e, const redisReply *key, void *arg);

static int scan_keys(struct eraser *e, const char *pattern, key_fn *fn, void *arg)
{
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(e->c, "SCAN %s MATCH %s COUNT " SCAN_COUNT, cursor, pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            return fail_reply(e, r, "SCAN");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            const redisReply *k = r->element[1]->element[i];
            int rc = k->type == REDIS_REPLY_STRING ? fn(e, k, arg) : BB_OK;
            if (rc != BB_OK) {
                freeReplyObject(r);
                return rc;
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return BB_OK;
}

/* Calls fn for every entry of stream, oldest first, RANGE_CHUNK at a time.
 * fn gets the entry id and its field/value array. */
typedef int entry_fn(struct eraser *e, const redisReply *id, const redisReply *fields, void *arg);

static int range_stream(struct eraser *e, const char *stream, entry_fn *fn, void *arg)
{
    char start[BB_STREAM_ID_MAX + 1] = "-";
    for (;;) {
        redisReply *r = redisCommand(e->c, "XRANGE %s %s + COUNT %d", stream, start, RANGE_CHUNK);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            return fail_reply(e, r, "XRANGE");
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++) {
            const redisReply *en = r->element[i];
            if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
                en->element[0]->type != REDIS_REPLY_STRING) {
                continue;
            }
            int rc = fn(e, en->element[0], en->element[1], arg);
            if (rc != BB_OK) {
                freeReplyObject(r);
                return rc;
            }
            snprintf(start, sizeof(start), "(%s", en->element[0]->str); /* after this one */
        }
        freeReplyObject(r);
        if (n < RANGE_CHUNK) {
            return BB_OK;
        }
    }
}

/* A field of a stream entry, or NULL. */
static const redisReply *entry_field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; fields && fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements;
         i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            strcmp(k->str, name) == 0) {
            return v;
        }
    }
    return NULL;
}

/* ---- the sweep ---------------------------------------------------------------------------- */

static int sweep_inbox(struct eraser *e, struct counts *n)
{
    char key[48];
    snprintf(key, sizeof(key), FMT_INBOX, e->id);
    redisReply *r = redisCommand(e->c, "XLEN %s", key);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        return fail_reply(e, r, "XLEN");
    }
    long long len = r->integer;
    freeReplyObject(r);
    r = redisCommand(e->c, "UNLINK %s", key);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        return fail_reply(e, r, "UNLINK");
    }
    if (r->integer > 0) {
        n->inbox += len;
    }
    freeReplyObject(r);
    return BB_OK;
}

/* One instance's jobs: the collection job c:u{id} and every retry r:{delivery id}. */
struct jobs_walk {
    struct counts *n;
    char zset[256];
};

static int sweep_jobs_of(struct eraser *e, const redisReply *key, void *arg)
{
    struct jobs_walk *w = arg;
    struct counts *n = w->n;
    char member[40], pattern[64], cursor[32] = "0";
    static const char suffix[] = ":jobs";
    if (key->len <= sizeof(suffix) - 1 || key->len - (sizeof(suffix) - 1) >= sizeof(w->zset)) {
        return BB_OK;
    }
    snprintf(w->zset, sizeof(w->zset), "%.*s", (int)(key->len - (sizeof(suffix) - 1)), key->str);

    snprintf(member, sizeof(member), FMT_COLLECTION_JOB, e->id);
    redisReply *r = redisCommand(e->c, "HDEL %b %s", key->str, key->len, member);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        return fail_reply(e, r, "HDEL");
    }
    n->jobs += r->integer;
    freeReplyObject(r);
    r = redisCommand(e->c, "ZREM %s %s", w->zset, member);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        return fail_reply(e, r, "ZREM");
    }
    freeReplyObject(r);

    long long zremoved = 0;
    struct multi_del hdel = {.head = {"HDEL", key->str}, .nhead = 2, .removed = &n->retries};
    struct multi_del zrem = {.head = {"ZREM", w->zset}, .nhead = 2, .removed = &zremoved};
    int rc = BB_OK;
    snprintf(pattern, sizeof(pattern), PAT_RETRY, e->id);
    do {
        r = redisCommand(e->c, "HSCAN %b %s MATCH %s COUNT " SCAN_COUNT, key->str, key->len, cursor,
                         pattern);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            rc = fail_reply(e, r, "HSCAN");
            goto drop;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        const redisReply *kv = r->element[1];
        for (size_t i = 0; rc == BB_OK && i + 1 < kv->elements; i += 2) {
            const redisReply *f = kv->element[i];
            if (f->type != REDIS_REPLY_STRING || !retry_names_user(f->str, f->len, e->id)) {
                continue;
            }
            rc = multi_del_add(e, &hdel, f->str, f->len);
            if (rc == BB_OK) {
                rc = multi_del_add(e, &zrem, f->str, f->len);
            }
        }
        freeReplyObject(r);
        if (rc != BB_OK) {
            goto drop;
        }
    } while (strcmp(cursor, "0") != 0);
    rc = multi_del_flush(e, &hdel);
    if (rc == BB_OK) {
        rc = multi_del_flush(e, &zrem);
    }
drop:
    multi_del_drop(&hdel);
    multi_del_drop(&zrem);
    return rc;
}

static int sweep_collection(struct eraser *e, const redisReply *key, void *arg)
{
    struct counts *n = arg;
    if (!collect_key_names_user(key->str, key->len, e->id)) {
        return BB_OK;
    }
    redisReply *r = redisCommand(e->c, "HLEN %b", key->str, key->len);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        return fail_reply(e, r, "HLEN");
    }
    long long items = r->integer;
    freeReplyObject(r);
    r = redisCommand(e->c, "UNLINK %b", key->str, key->len);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        return fail_reply(e, r, "UNLINK");
    }
    if (r->integer > 0) {
        n->collections += r->integer;
        n->collected += items;
    }
    freeReplyObject(r);
    return BB_OK;
}

static int sweep_sent_key(struct eraser *e, const redisReply *key, void *arg)
{
    struct multi_del *m = arg;
    if (!sent_key_names_user(key->str, key->len, e->id)) {
        return BB_OK;
    }
    return multi_del_add(e, m, key->str, key->len);
}

static int sweep_receipt(struct eraser *e, const redisReply *id, const redisReply *fields,
                         void *arg)
{
    struct multi_del *m = arg;
    const redisReply *p = entry_field(fields, "p");
    if (!p) {
        return BB_OK;
    }
    Bb__Receipt *r = bb__receipt__unpack(NULL, p->len, (const uint8_t *)p->str);
    if (!r) {
        return BB_OK;
    }
    bool mine =
        r->delivery_id && delivery_names_user(r->delivery_id, strlen(r->delivery_id), e->id);
    bb__receipt__free_unpacked(r, NULL);
    return mine ? multi_del_add(e, m, id->str, id->len) : BB_OK;
}

/* A worker's dead letter for one of the user's deliveries (its `delivery`
 * field), or a job's (its `p` a PendingDelivery to the user). Dead letters
 * of whole batches, and the broker's, stay. */
static int sweep_dead(struct eraser *e, const redisReply *id, const redisReply *fields, void *arg)
{
    struct multi_del *m = arg;
    const redisReply *delivery = entry_field(fields, "delivery");
    const redisReply *p = entry_field(fields, "p");
    bool mine = delivery && delivery_names_user(delivery->str, delivery->len, e->id);
    if (!mine && p && entry_field(fields, "worker") && !entry_field(fields, "broker")) {
        mine = job_names_user(p->str, p->len, e->id);
    }
    return mine ? multi_del_add(e, m, id->str, id->len) : BB_OK;
}

/* Everything workers keep about e->id; adds what went to n. */
static int sweep(struct eraser *e, struct counts *n)
{
    char pattern[96];
    int rc = sweep_inbox(e, n);
    if (rc != BB_OK) {
        return rc;
    }
    struct jobs_walk w = {.n = n};
    if ((rc = scan_keys(e, PAT_JOBS_HASHES, sweep_jobs_of, &w)) != BB_OK) {
        return rc;
    }
    snprintf(pattern, sizeof(pattern), PAT_COLLECT, e->id);
    if ((rc = scan_keys(e, pattern, sweep_collection, n)) != BB_OK) {
        return rc;
    }
    struct multi_del m = {.head = {"UNLINK"}, .nhead = 1, .removed = &n->sent};
    snprintf(pattern, sizeof(pattern), PAT_SENT, e->id);
    rc = scan_keys(e, pattern, sweep_sent_key, &m);
    if (rc == BB_OK) {
        rc = multi_del_flush(e, &m);
    }
    multi_del_drop(&m);
    if (rc != BB_OK) {
        return rc;
    }
    m = (struct multi_del){.head = {"XDEL", RECEIPTS_STREAM}, .nhead = 2, .removed = &n->receipts};
    rc = range_stream(e, RECEIPTS_STREAM, sweep_receipt, &m);
    if (rc == BB_OK) {
        rc = multi_del_flush(e, &m);
    }
    multi_del_drop(&m);
    if (rc != BB_OK) {
        return rc;
    }
    m = (struct multi_del){.head = {"XDEL", DEAD_STREAM}, .nhead = 2, .removed = &n->dead};
    rc = range_stream(e, DEAD_STREAM, sweep_dead, &m);
    if (rc == BB_OK) {
        rc = multi_del_flush(e, &m);
    }
    multi_del_drop(&m);
    return rc;
}

/* ---- the command -------------------------------------------------------------------------- */

static int erase_directory(struct eraser *e)
{
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    ev.schema_version = 1;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
    ev.user_erase = e->id;
    int rc = BB_RETRY;
    for (int i = 0; i < STORE_TRIES && rc == BB_RETRY; i++) {
        rc = bb_store_apply(e->c, &ev, e->err, e->errlen);
    }
    if (rc == BB_RETRY) {
        snprintf(e->err, e->errlen, "the user kept changing under the erasure; try again");
    }
    return rc;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static bool parse_id(const char *s, uint64_t *out)
{
    char *end;
    if (s[0] < '0' || s[0] > '9') {
        return false;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v == 0) {
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

static void print_result(const struct ctl *ctl, uint64_t id, const struct counts *n,
                         const struct counts *late, int64_t settle_ms, double secs, const char *err)
{
    if (ctl->json) {
        struct json_object *o = json_object_new_object();
        char sid[24];
        snprintf(sid, sizeof(sid), "%" PRIu64, id);
        json_object_object_add(o, "user", json_object_new_string(sid));
        json_object_object_add(o, "ok", json_object_new_boolean(!err));
        if (err) {
            json_object_object_add(o, "error", json_object_new_string(err));
        }
        json_object_object_add(o, "inbox_entries", json_object_new_int64(n->inbox));
        json_object_object_add(o, "collections", json_object_new_int64(n->collections));
        json_object_object_add(o, "collected", json_object_new_int64(n->collected));
        json_object_object_add(o, "collection_jobs", json_object_new_int64(n->jobs));
        json_object_object_add(o, "retries", json_object_new_int64(n->retries));
        json_object_object_add(o, "sent_records", json_object_new_int64(n->sent));
        json_object_object_add(o, "receipts", json_object_new_int64(n->receipts));
        json_object_object_add(o, "dead_letters", json_object_new_int64(n->dead));
        json_object_object_add(o, "removed_after_settle",
                               json_object_new_int64(counts_total(late)));
        json_object_object_add(o, "settle_ms", json_object_new_int64(settle_ms));
        json_object_object_add(o, "seconds", json_object_new_double(secs));
        ctl_print_json(o);
        return;
    }
    if (err) {
        return; /* ctl_error said it */
    }
    printf("user %" PRIu64 ": erased from the directory; removed %lld inbox entries, %lld "
           "collections (%lld notifications), %lld collection jobs, %lld retries, %lld sent "
           "records, %lld receipts, %lld dead letters (%lld of all these after the %.1f s settle) "
           "in %.2f s\n",
           id, n->inbox, n->collections, n->collected, n->jobs, n->retries, n->sent, n->receipts,
           n->dead, counts_total(late), (double)settle_ms / 1000.0, secs);
}

/* One person's erasure: what was removed so far, and how it ended. */
struct erasure {
    uint64_t id;
    struct counts all, late;
    int rc;
    char err[512];
};

static int erase_step(struct ctl *ctl, struct erasure *x, bool directory, struct counts *into)
{
    struct eraser e = {.c = ctl->c, .id = x->id, .err = x->err, .errlen = sizeof(x->err)};
    x->rc = directory ? erase_directory(&e) : BB_OK;
    if (x->rc == BB_OK) {
        x->rc = sweep(&e, into);
    }
    if (x->rc != BB_OK) {
        ctl_error("erase-user %" PRIu64 ": %s", x->id, x->err);
    }
    return x->rc;
}

/* Every id: the directory change and the sweep; then one settle for all,
 * and the sweep again. An id that failed is not swept again; the others go
 * on (a Redis outage fails them all). */
static int erase_all(struct ctl *ctl, struct erasure *xs, size_t n, int64_t settle_ms)
{
    double t0 = mono_s();
    bool any_ok = false;
    int rc = CTL_OK;
    for (size_t i = 0; i < n; i++) {
        any_ok = erase_step(ctl, &xs[i], true, &xs[i].all) == BB_OK || any_ok;
    }
    if (any_ok) {
        sleep_ms(settle_ms);
    }
    for (size_t i = 0; i < n; i++) {
        if (xs[i].rc == BB_OK && erase_step(ctl, &xs[i], false, &xs[i].late) == BB_OK) {
            counts_add(&xs[i].all, &xs[i].late);
        }
    }
    double secs = mono_s() - t0;
    for (size_t i = 0; i < n; i++) {
        print_result(ctl, xs[i].id, &xs[i].all, &xs[i].late, settle_ms, secs,
                     xs[i].rc != BB_OK ? xs[i].err : NULL);
        rc = xs[i].rc != BB_OK ? CTL_ERR : rc;
    }
    return rc;
}

int cmd_erase(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"settle", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    int64_t settle_ms = DEFAULT_SETTLE_MS;
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 's') {
            if (bb_parse_duration_ms(optarg, &settle_ms) != BB_OK || settle_ms < 0 ||
                settle_ms > MAX_SETTLE_MS) {
                return ctl_usage(cmd, "--settle: expected a duration 0..10m (30s, 2s, 0), got '%s'",
                                 optarg);
            }
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind == argc) {
        return ctl_usage(cmd, "whose erasure? give one or more user ids");
    }
    size_t n = (size_t)(argc - optind);
    struct erasure *xs = calloc(n, sizeof(*xs));
    if (!xs) {
        return ctl_error("out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        if (!parse_id(argv[optind + (int)i], &xs[i].id)) {
            rc = ctl_usage(cmd, "'%s' is not a user id (a decimal number > 0)",
                           argv[optind + (int)i]);
            goto free_erasures;
        }
    }
    rc = ctl_connect(ctl);
    if (rc == CTL_OK) {
        rc = erase_all(ctl, xs, n, settle_ms);
    }
free_erasures:
    free(xs);
    return rc;
}
