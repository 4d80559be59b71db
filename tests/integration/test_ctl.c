/* buurtbusctl for operators: the built tool against the harness'
 * redis-server.
 *
 *   status          on an empty Redis and on a busy one (a consumer group
 *                   with pending entries read by XREADGROUP, jobs due now
 *                   and later, dead letters); --json parses and holds the
 *                   numbers
 *   dead            list with filters; replay of a broker dead letter (back
 *                   in bb:reports), of a worker delivery dead letter (its
 *                   bb:sent record deleted, the batch in bb:out:push again,
 *                   the others' records kept) and of a retry job (parked
 *                   again, attempts 0); refusals (no payload, bad_job, a
 *                   batch older than the records' TTL unless --force);
 *                   purge by reason, by age, all
 *   dict rotate     trains a new current dictionary; --prune deletes only
 *                   the old one nothing names (the previous current and
 *                   one a bb:out:push frame names stay)
 *   directory       export -> flush -> load -> export again: identical
 *   old names       load, snapshot, erase-user, dead
 *
 * Dead letters are written in the exact formats broker/consumer.c and
 * workers/host/stream.c write them; one case (with BB_BROKER_PATH) has the
 * built broker dead-letter a report, replays it and sees the broker
 * dead-letter it again.
 *
 * Threads: the test's main thread only; buurtbusctl runs as a child. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "delivery.pb-c.h"
#include "harness.h"
#include "wire.h"
#include "worker_kit.h"

static const struct bb_redis_server *srv;
static redisContext *rc;

/* ---- helpers ----------------------------------------------------------------------------- */

static struct bb_run_result ctl(const char *in, ...)
{
    const char *argv[40] = {BB_CTL_PATH, "--redis", srv->addr};
    int n = 3;
    va_list ap;
    va_start(ap, in);
    for (const char *a; n < 39 && (a = va_arg(ap, const char *));) {
        argv[n++] = a;
    }
    va_end(ap);
    argv[n] = NULL;
    struct bb_run_result res;
    assert_int_equal(bb_harness_run(argv, in, 60, &res), 0);
    return res;
}

static void expect_status(const struct bb_run_result *res, int status)
{
    if (res->status != status) {
        fail_msg("buurtbusctl exited %d, expected %d\nstdout: %s\nstderr: %s", res->status, status,
                 res->out, res->err);
    }
}

/* Runs buurtbusctl, expects status, frees the result. */
#define CTL_EXPECT(status, ...)                                                                    \
    do {                                                                                           \
        struct bb_run_result res_ = ctl(NULL, __VA_ARGS__, NULL);                                  \
        expect_status(&res_, (status));                                                            \
        bb_run_result_free(&res_);                                                                 \
    } while (0)

static struct json_object *parse_json(const char *text)
{
    struct json_object *o = json_tokener_parse(text);
    if (!o) {
        fail_msg("not JSON: %s", text);
    }
    return o;
}

static struct json_object *get(struct json_object *o, const char *key)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v)) {
        fail_msg("no \"%s\" in %s", key, json_object_to_json_string(o));
    }
    return v;
}

static int64_t get_int(struct json_object *o, const char *key)
{
    return json_object_get_int64(get(o, key));
}

/* The element of array arr whose key is value. */
static struct json_object *find(struct json_object *arr, const char *key, const char *value)
{
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        struct json_object *e = json_object_array_get_idx(arr, i), *v;
        if (json_object_object_get_ex(e, key, &v) &&
            strcmp(json_object_get_string(v), value) == 0) {
            return e;
        }
    }
    fail_msg("no %s=%s in %s", key, value, json_object_to_json_string(arr));
    return NULL;
}

static void flush_all(void)
{
    freeReplyObject(bb_kit_cmd(rc, "FLUSHALL"));
}

static long long xlen(const char *stream)
{
    return bb_kit_int(rc, "XLEN %s", stream);
}

/* The id of the newest entry of stream, into buf. */
static char *last_id(const char *stream, char *buf, size_t cap)
{
    redisReply *r = bb_kit_cmd(rc, "XREVRANGE %s + - COUNT 1", stream);
    assert_int_equal(r->elements, 1);
    snprintf(buf, cap, "%s", r->element[0]->element[0]->str);
    freeReplyObject(r);
    return buf;
}

/* The payload p of the newest entry of stream; caller frees. */
static char *last_payload(const char *stream, size_t *len)
{
    redisReply *r = bb_kit_cmd(rc, "XREVRANGE %s + - COUNT 1", stream);
    assert_int_equal(r->elements, 1);
    const redisReply *f = r->element[0]->element[1];
    char *p = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (strcmp(f->element[i]->str, "p") == 0) {
            p = malloc(f->element[i + 1]->len + 1);
            memcpy(p, f->element[i + 1]->str, f->element[i + 1]->len);
            *len = f->element[i + 1]->len;
        }
    }
    freeReplyObject(r);
    assert_non_null(p);
    return p;
}

/* A broker's dead letter (broker/consumer.c commit()). */
static void broker_dead(const char *reason, const char *stream, const char *id, const void *p,
                        size_t len)
{
    freeReplyObject(bb_kit_cmd(rc,
                               "XADD bb:dead * reason %s detail %s stream %s id %s p %b broker %s",
                               reason, "test", stream, id, p, len, "broker-1"));
}

/* A worker's dead letter (workers/host/stream.c dead_letter()); delivery may be NULL. */
static void worker_dead(const char *reason, const char *stream, const char *id, const void *p,
                        size_t len, const char *delivery, const char *instance)
{
    if (delivery) {
        freeReplyObject(bb_kit_cmd(rc,
                                   "XADD bb:dead * reason %s detail %s stream %s id %s p %b "
                                   "worker %s delivery %s instance %s",
                                   reason, "", stream, id, p, len, "worker-1", delivery, instance));
    } else {
        freeReplyObject(bb_kit_cmd(rc,
                                   "XADD bb:dead * reason %s detail %s stream %s id %s p %b "
                                   "worker %s instance %s",
                                   reason, "", stream, id, p, len, "worker-1", instance));
    }
}

static const char report_json[] =
    "{\"id\":\"r1\",\"author_id\":3,\"author_screen_name\":\"Piet\",\"group_id\":2,"
    "\"lat\":51.6901,\"lon\":5.3001,\"category\":\"burglary\",\"urgency\":\"in_progress\","
    "\"source\":\"resident\",\"text\":\"Iemand klimt over de schutting\","
    "\"anonymity\":\"screen_name\",\"locale\":\"nl\"}";

/* ---- status ------------------------------------------------------------------------------ */

static void status_empty_and_busy(void **state)
{
    (void)state;
    flush_all();
    struct bb_run_result res = ctl(NULL, "--json", "status", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out);
    struct json_object *s = find(get(o, "streams"), "stream", "bb:reports");
    assert_false(json_object_get_boolean(get(s, "exists")));
    assert_int_equal(get_int(get(o, "dead"), "total"), 0);
    assert_int_equal(get_int(get(o, "directory"), "users"), 0);
    assert_true(json_object_is_type(get(o, "dictionary"), json_type_null));
    json_object_put(o);
    bb_run_result_free(&res);
    res = ctl(NULL, "status", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "bb:reports"));
    bb_run_result_free(&res);

    /* Busy: 5 reports, a group that read 3 (one consumer, 3 pending). */
    for (int i = 0; i < 5; i++) {
        freeReplyObject(bb_kit_cmd(rc, "XADD bb:reports * p x%d", i));
    }
    freeReplyObject(bb_kit_cmd(rc, "XGROUP CREATE bb:reports brokers 0"));
    freeReplyObject(
        bb_kit_cmd(rc, "XREADGROUP GROUP brokers broker-a COUNT 3 STREAMS bb:reports >"));
    freeReplyObject(bb_kit_cmd(rc, "XGROUP CREATE bb:out:push workers $ MKSTREAM"));
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:out:custom * p y"));
    long long now = (long long)time(NULL) * 1000;
    freeReplyObject(bb_kit_cmd(rc, "ZADD bb:later:email %lld r:a %lld r:b %lld r:c", now - 1000,
                               now - 500, now + 3600000));
    freeReplyObject(bb_kit_cmd(rc, "HSET bb:later:email:jobs r:a x"));
    broker_dead("decode_error", "bb:reports", "1-0", "zz", 2);
    broker_dead("decode_error", "bb:reports", "1-1", "zz", 2);
    broker_dead("unknown_category", "bb:reports", "1-2", "zz", 2);
    freeReplyObject(bb_kit_cmd(rc, "SADD bb:users 1 2 3"));
    freeReplyObject(bb_kit_cmd(rc, "SADD bb:groups 7"));
    freeReplyObject(bb_kit_cmd(rc, "SET bb:zdict:current 12345"));

    res = ctl(NULL, "--json", "status", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    s = find(get(o, "streams"), "stream", "bb:reports");
    assert_true(json_object_get_boolean(get(s, "exists")));
    assert_int_equal(get_int(s, "length"), 5);
    struct json_object *g = find(get(s, "groups"), "name", "brokers");
    assert_int_equal(get_int(g, "pending"), 3);
    assert_int_equal(get_int(g, "lag"), 2);
    struct json_object *c = find(get(g, "consumers"), "name", "broker-a");
    assert_int_equal(get_int(c, "pending"), 3);
    assert_true(get_int(c, "idle_ms") >= 0);
    s = find(get(o, "streams"), "stream", "bb:out:push");
    assert_int_equal(get_int(s, "length"), 0);
    find(get(s, "groups"), "name", "workers");
    find(get(o, "streams"), "stream", "bb:out:custom"); /* found by SCAN */
    struct json_object *j = find(get(o, "jobs"), "instance", "email");
    assert_int_equal(get_int(j, "due"), 2);
    assert_int_equal(get_int(j, "later"), 1);
    assert_int_equal(json_object_array_length(get(o, "jobs")), 1); /* not :jobs */
    struct json_object *d = get(o, "dead");
    assert_int_equal(get_int(d, "total"), 3);
    assert_int_equal(get_int(get(d, "by_reason"), "decode_error"), 2);
    assert_int_equal(get_int(get(d, "by_reason"), "unknown_category"), 1);
    assert_int_equal(get_int(get(o, "directory"), "users"), 3);
    assert_int_equal(get_int(get(o, "directory"), "groups"), 1);
    assert_string_equal(json_object_get_string(get(o, "dictionary")), "12345");
    json_object_put(o);
    bb_run_result_free(&res);

    res = ctl(NULL, "status", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "brokers"));
    assert_non_null(strstr(res.out, "broker-a"));
    assert_non_null(strstr(res.out, "decode_error"));
    assert_non_null(strstr(res.out, "due now 2, later 1"));
    bb_run_result_free(&res);

    CTL_EXPECT(0, "status", "--help");
    CTL_EXPECT(2, "status", "extra");
}

/* ---- dead letters ------------------------------------------------------------------------ */

#ifdef BB_BROKER_PATH
static pid_t start_broker(void)
{
    char text[512];
    snprintf(text, sizeof(text),
             "redis %s\nname broker-t\nblock 200ms\nclaim_idle 1s\nclaim_interval 300ms\n"
             "metrics_addr \"\"\nlog_level info\n",
             srv->addr);
    return bb_kit_spawn(BB_BROKER_PATH, "broker.conf", text, "broker.log");
}

static void wait_dead(long long n)
{
    for (int i = 0; i < 200 && xlen("bb:dead") < n; i++) {
        bb_harness_sleep_ms(50);
    }
    assert_int_equal(xlen("bb:dead"), n);
}

/* The built broker dead-letters a report; replay puts it back; the broker
 * dead-letters it again: the bytes survived the round trip. */
static void dead_from_real_broker(void **state)
{
    (void)state;
    flush_all();
    struct bb_run_result res =
        ctl(NULL, "post", "--no-validate", "{\"id\":\"bad\",\"category\":\"burglary\"}", NULL);
    expect_status(&res, 0);
    bb_run_result_free(&res);
    size_t plen;
    char *p = last_payload("bb:reports", &plen);
    pid_t broker = start_broker();
    wait_dead(1);

    res = ctl(NULL, "--json", "dead", "list", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out);
    struct json_object *e = json_object_array_get_idx(o, 0);
    assert_string_equal(json_object_get_string(get(e, "reason")), "missing_field:author_id");
    assert_string_equal(json_object_get_string(get(e, "kind")), "broker");
    assert_string_equal(json_object_get_string(get(e, "broker")), "broker-t");
    assert_int_equal(get_int(e, "bytes"), plen);
    json_object_put(o);
    bb_run_result_free(&res);

    /* status sees the broker's group on bb:reports, all acked. */
    res = ctl(NULL, "--json", "status", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    struct json_object *s = find(get(o, "streams"), "stream", "bb:reports");
    assert_true(json_object_array_length(get(s, "groups")) >= 1);
    struct json_object *g = json_object_array_get_idx(get(s, "groups"), 0);
    assert_int_equal(get_int(g, "pending"), 0);
    assert_int_equal(get_int(get(get(o, "dead"), "by_reason"), "missing_field:author_id"), 1);
    json_object_put(o);
    bb_run_result_free(&res);

    res = ctl(NULL, "dead", "replay", "--reason", "missing_field:author_id", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "1 replayed"));
    bb_run_result_free(&res);
    /* The broker reads the replayed entry and dead-letters it again. */
    wait_dead(1);
    redisReply *r = bb_kit_cmd(rc, "XRANGE bb:dead - +");
    assert_int_equal(r->elements, 1);
    const redisReply *f = r->element[0]->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if (strcmp(f->element[i]->str, "p") == 0) {
            assert_int_equal(f->element[i + 1]->len, plen);
            assert_memory_equal(f->element[i + 1]->str, p, plen);
        }
    }
    freeReplyObject(r);
    assert_int_equal(xlen("bb:reports") >= 1, 1);
    free(p);
    kill(broker, SIGTERM);
    waitpid(broker, NULL, 0);
}
#endif

static void dead_broker_replay(void **state)
{
    (void)state;
    flush_all();
    /* An invalid report, posted without the checks, as the broker would
     * dead-letter it. */
    struct bb_run_result res =
        ctl(NULL, "post", "--no-validate", "{\"id\":\"bad\",\"category\":\"burglary\"}", NULL);
    expect_status(&res, 0);
    bb_run_result_free(&res);
    char src[64], dead_id[64];
    size_t plen;
    char *p = last_payload("bb:reports", &plen);
    last_id("bb:reports", src, sizeof(src));
    freeReplyObject(bb_kit_cmd(rc, "DEL bb:reports"));
    broker_dead("missing_field:lat", "bb:reports", src, p, plen);
    last_id("bb:dead", dead_id, sizeof(dead_id));

    res = ctl(NULL, "--json", "dead", "list", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out);
    assert_int_equal(json_object_array_length(o), 1);
    struct json_object *e = json_object_array_get_idx(o, 0);
    assert_string_equal(json_object_get_string(get(e, "kind")), "broker");
    assert_true(json_object_get_boolean(get(e, "replayable")));
    json_object_put(o);
    bb_run_result_free(&res);

    res = ctl(NULL, "dead", "replay", dead_id, NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "1 replayed"));
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:reports"), 1);
    assert_int_equal(xlen("bb:dead"), 0);
    size_t qlen;
    char *q = last_payload("bb:reports", &qlen);
    assert_int_equal(qlen, plen);
    assert_memory_equal(q, p, plen);
    free(q);
    free(p);

    /* A named id that is not there, and one that is not an id. */
    res = ctl(NULL, "dead", "replay", dead_id, NULL);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "no dead letter"));
    bb_run_result_free(&res);
    CTL_EXPECT(2, "dead", "replay", "nonsense");
    CTL_EXPECT(2, "dead", "replay", "--all", dead_id);
}

static void dead_worker_replay(void **state)
{
    (void)state;
    flush_all();
    Bb__Notification nt;
    bb_kit_report(&nt, "r7");
    uint8_t batch[4096];
    struct bb_kit_batch spec = {.channel = BB__CHANNEL__CHANNEL_PUSH, .first = 1, .n = 3};
    size_t blen = bb_kit_batch(batch, sizeof(batch), &nt, &spec);
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:out:push * p %b", batch, blen));
    char src[64], dead_id[64];
    last_id("bb:out:push", src, sizeof(src));
    /* The worker sent 1 and 3, delivery 2 failed for good. */
    freeReplyObject(bb_kit_cmd(rc, "SET bb:sent:push:r:r7:1:1 1 EX 600"));
    freeReplyObject(bb_kit_cmd(rc, "SET bb:sent:push:r:r7:1:2 1 EX 600"));
    freeReplyObject(bb_kit_cmd(rc, "SET bb:sent:push:r:r7:1:3 1 EX 600"));
    worker_dead("http_410", "bb:out:push", src, batch, blen, "r:r7:1:2", "push");
    last_id("bb:dead", dead_id, sizeof(dead_id));

    /* A dry run and a list by stream change nothing. */
    struct bb_run_result res = ctl(NULL, "dead", "replay", "--dry-run", dead_id, NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "would replay to bb:out:push, deleting bb:sent:push:r:r7:1:2"));
    bb_run_result_free(&res);
    res = ctl(NULL, "--json", "dead", "list", "--stream", "bb:out:push", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out);
    assert_int_equal(json_object_array_length(o), 1);
    assert_string_equal(json_object_get_string(get(json_object_array_get_idx(o, 0), "delivery")),
                        "r:r7:1:2");
    json_object_put(o);
    bb_run_result_free(&res);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:sent:push:r:r7:1:2"), 1);
    assert_int_equal(xlen("bb:dead"), 1);

    res = ctl(NULL, "--json", "dead", "replay", dead_id, NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_int_equal(get_int(o, "replayed"), 1);
    struct json_object *e = json_object_array_get_idx(get(o, "entries"), 0);
    assert_string_equal(json_object_get_string(get(e, "kind")), "batch");
    json_object_put(o);
    bb_run_result_free(&res);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:sent:push:r:r7:1:2"), 0);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:sent:push:r:r7:1:1"), 1);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:sent:push:r:r7:1:3"), 1);
    assert_int_equal(xlen("bb:out:push"), 2);
    assert_int_equal(xlen("bb:dead"), 0);
    size_t qlen;
    char *q = last_payload("bb:out:push", &qlen);
    assert_int_equal(qlen, blen);
    assert_memory_equal(q, batch, blen);
    free(q);

    /* A batch older than the records: refused, then --force. */
    worker_dead("http_410", "bb:out:push", "1000-0", batch, blen, "r:r7:1:2", "push");
    last_id("bb:dead", dead_id, sizeof(dead_id));
    res = ctl(NULL, "dead", "replay", dead_id, NULL);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "older than"));
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:dead"), 1);
    assert_int_equal(xlen("bb:out:push"), 2);
    res = ctl(NULL, "dead", "replay", "--force", dead_id, NULL);
    expect_status(&res, 0);
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:dead"), 0);
    assert_int_equal(xlen("bb:out:push"), 3);

    /* A whole batch's dead letter (no delivery): the batch goes back. */
    worker_dead("unknown_dictionary", "bb:out:push", src, batch, blen, NULL, "push");
    res = ctl(NULL, "dead", "replay", "--reason", "unknown_dictionary", NULL);
    expect_status(&res, 0);
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:out:push"), 4);
    assert_int_equal(xlen("bb:dead"), 0);

    /* A retry job that ran out of attempts: parked again, due now. */
    uint8_t note[2048];
    size_t nlen = bb__notification__pack(&nt, note);
    Bb__PendingDelivery pd = BB__PENDING_DELIVERY__INIT;
    pd.schema_version = 1;
    pd.notification_key = "r:r7";
    pd.notification.data = note;
    pd.notification.len = nlen;
    pd.recipient = 5;
    pd.recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
    pd.channel = BB__CHANNEL__CHANNEL_PUSH;
    pd.attempts = 50;
    pd.first_ms = 1000;
    pd.last_reason = "http_503";
    pd.source = src;
    uint8_t job[4096];
    size_t jlen = bb__pending_delivery__pack(&pd, job);
    freeReplyObject(bb_kit_cmd(rc, "SET bb:sent:push:r:r7:1:5 1"));
    worker_dead("retries_exhausted", "bb:out:push", src, job, jlen, "r:r7:1:5", "push");
    last_id("bb:dead", dead_id, sizeof(dead_id));
    res = ctl(NULL, "--json", "dead", "list", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_string_equal(json_object_get_string(get(json_object_array_get_idx(o, 0), "kind")),
                        "job");
    json_object_put(o);
    bb_run_result_free(&res);
    CTL_EXPECT(0, "dead", "replay", dead_id);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:sent:push:r:r7:1:5"), 0);
    long long now = (long long)time(NULL) * 1000;
    redisReply *r = bb_kit_cmd(rc, "ZSCORE bb:later:push r:r:r7:1:5");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_true(atoll(r->str) <= now + 1000);
    freeReplyObject(r);
    r = bb_kit_cmd(rc, "HGET bb:later:push:jobs r:r:r7:1:5");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    Bb__PendingDelivery *back = bb__pending_delivery__unpack(NULL, r->len, (const uint8_t *)r->str);
    assert_non_null(back);
    assert_int_equal(back->attempts, 0);
    assert_int_equal(back->recipient, 5);
    assert_int_equal(back->notification.len, nlen);
    bb__pending_delivery__free_unpacked(back, NULL);
    freeReplyObject(r);
    assert_int_equal(xlen("bb:dead"), 0);
}

static void dead_refusals_and_purge(void **state)
{
    (void)state;
    flush_all();
    char id1[64], id2[64];
    /* No payload: the trim alert and a trimmed entry. */
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:dead * reason entries_trimmed_unread stream "
                                   "bb:out:push group workers after 5-0 lost 3"));
    last_id("bb:dead", id1, sizeof(id1));
    worker_dead("entry_trimmed", "bb:out:push", "5-0", "", 0, NULL, "push");
    /* An unreadable job. */
    worker_dead("bad_job", "bb:out:push", "", "\xff\xff", 2, NULL, "push");
    last_id("bb:dead", id2, sizeof(id2));

    struct bb_run_result res = ctl(NULL, "dead", "replay", id1, NULL);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "no payload"));
    bb_run_result_free(&res);
    res = ctl(NULL, "dead", "replay", id2, NULL);
    expect_status(&res, 1);
    assert_non_null(strstr(res.err, "bad_job"));
    bb_run_result_free(&res);
    /* A bulk replay passes over them and says so. */
    res = ctl(NULL, "--json", "dead", "replay", "--all", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out);
    assert_int_equal(get_int(o, "replayed"), 0);
    assert_int_equal(get_int(o, "refused"), 3);
    json_object_put(o);
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:dead"), 3);

    /* list filters */
    res = ctl(NULL, "--json", "dead", "list", "--reason", "bad_job", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_int_equal(json_object_array_length(o), 1);
    json_object_put(o);
    bb_run_result_free(&res);
    res = ctl(NULL, "dead", "--count", "1", NULL); /* the old name */
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "bad_job"));
    assert_null(strstr(res.out, "entry_trimmed"));
    bb_run_result_free(&res);

    /* purge: a selector is required; by reason; by age; all. */
    CTL_EXPECT(2, "dead", "purge");
    CTL_EXPECT(2, "dead", "purge", "--all", "--reason", "x");
    CTL_EXPECT(2, "dead", "purge", "--older-than", "soon");
    res = ctl(NULL, "--json", "dead", "purge", "--reason", "bad_job", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_int_equal(get_int(o, "purged"), 1);
    json_object_put(o);
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:dead"), 2);
    res = ctl(NULL, "--json", "dead", "purge", "--older-than", "1h", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_int_equal(get_int(o, "purged"), 0); /* both are new */
    json_object_put(o);
    bb_run_result_free(&res);
    res = ctl(NULL, "dead", "purge", "--all", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "purged 2 dead letters"));
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:dead"), 0);

    /* XTRIM keeps the stream's last id; ids from 1970 need a new stream. */
    freeReplyObject(bb_kit_cmd(rc, "DEL bb:dead"));
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:dead 1000-0 reason decode_error"));
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:dead 2000-0 reason other"));
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:dead * reason other"));
    res = ctl(NULL, "dead", "purge", "--older-than", "1h", "--reason", "other", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "purged 1 dead letter"));
    bb_run_result_free(&res);
    res = ctl(NULL, "--json", "dead", "purge", "--older-than", "1h", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_int_equal(get_int(o, "purged"), 1);
    json_object_put(o);
    bb_run_result_free(&res);
    assert_int_equal(xlen("bb:dead"), 1);
    res = ctl(NULL, "--json", "dead", "list", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "\"reason\":\"other\""));
    bb_run_result_free(&res);
    CTL_EXPECT(0, "dead", "purge", "--help");
    CTL_EXPECT(0, "dead", "replay", "--help");
    CTL_EXPECT(0, "dead", "--help");
}

/* ---- dictionaries ------------------------------------------------------------------------ */

static const char *const words[] = {"schutting", "fiets",  "auto",  "raam",   "deur",
                                    "tuin",      "garage", "steeg", "schuur", "balkon",
                                    "zwart",     "wit",    "rood",  "snel",   "langzaam"};

static void post_reports(int n)
{
    size_t cap = (size_t)n * 512, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < n; i++) {
        len += (size_t)snprintf(
            buf + len, cap - len,
            "{\"id\":\"d%d\",\"author_id\":%d,\"author_screen_name\":\"Buur %d\",\"group_id\":2,"
            "\"lat\":51.%04d,\"lon\":5.%04d,\"category\":\"%s\",\"urgency\":\"%s\","
            "\"source\":\"resident\",\"text\":\"Iemand bij de %s met een %s %s, %d\","
            "\"anonymity\":\"screen_name\",\"locale\":\"nl\"}\n",
            i, 1 + i % 50, i % 50, 6000 + i % 997, 3000 + i % 991,
            i % 3 ? "burglary" : "suspicious_person", i % 2 ? "in_progress" : "recent",
            words[i % 15], words[(i / 3) % 15], words[(i / 7) % 15], i * 37);
    }
    char path[512];
    assert_non_null(bb_harness_write_file(path, sizeof(path), "reports.jsonl", buf));
    free(buf);
    struct bb_run_result res = ctl(NULL, "post", "--file", path, NULL);
    expect_status(&res, 0);
    bb_run_result_free(&res);
}

static char *current_dict(char *buf, size_t cap)
{
    redisReply *r = bb_kit_cmd(rc, "GET bb:zdict:current");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    snprintf(buf, cap, "%s", r->str);
    freeReplyObject(r);
    return buf;
}

static void dict_rotate_prunes_unused(void **state)
{
    (void)state;
    flush_all();
    post_reports(600);
    char a[32], b[32], c[32], d[32];
    CTL_EXPECT(0, "dict", "train", "--size", "2kb");
    current_dict(a, sizeof(a));
    /* A batch compressed with A stays in bb:out:push. */
    redisReply *r = bb_kit_cmd(rc, "GET bb:zdict:%s", a);
    struct bb_zdict *zd = bb_zdict_new(r->str, r->len, 3);
    assert_non_null(zd);
    freeReplyObject(r);
    Bb__Notification nt;
    bb_kit_report(&nt, "r9");
    struct bb_kit_batch spec = {
        .channel = BB__CHANNEL__CHANNEL_PUSH, .first = 1, .n = 2, .dict = zd};
    bb_kit_add_batch(rc, "bb:out:push", &nt, &spec);
    bb_zdict_unref(zd);
    CTL_EXPECT(0, "dict", "train", "--size", "3kb");
    current_dict(b, sizeof(b));
    CTL_EXPECT(0, "dict", "train", "--size", "4kb");
    current_dict(c, sizeof(c));
    assert_string_not_equal(a, b);
    assert_string_not_equal(b, c);

    struct bb_run_result res =
        ctl(NULL, "--json", "dict", "rotate", "--prune", "--size", "5kb", NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out);
    current_dict(d, sizeof(d));
    assert_string_not_equal(d, c);
    assert_int_equal(get_int(o, "id"), atoll(d));
    assert_string_equal(json_object_get_string(get(o, "previous")), c);
    struct json_object *pr = get(o, "prune");
    assert_int_equal(json_object_array_length(get(pr, "deleted")), 1);
    assert_int_equal(json_object_get_int64(json_object_array_get_idx(get(pr, "deleted"), 0)),
                     atoll(b));
    assert_int_equal(json_object_array_length(get(pr, "in_use")), 1);
    assert_int_equal(json_object_get_int64(json_object_array_get_idx(get(pr, "in_use"), 0)),
                     atoll(a));
    json_object_put(o);
    bb_run_result_free(&res);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", a), 1);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", b), 0);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", c), 1);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", d), 1);

    /* A dead letter's batch keeps its dictionary: C is no longer the
     * previous one after the next rotation, but a batch in bb:dead names it. */
    r = bb_kit_cmd(rc, "GET bb:zdict:%s", c);
    zd = bb_zdict_new(r->str, r->len, 3);
    assert_non_null(zd);
    freeReplyObject(r);
    uint8_t batch[4096];
    spec.dict = zd;
    size_t blen = bb_kit_batch(batch, sizeof(batch), &nt, &spec);
    bb_zdict_unref(zd);
    worker_dead("unknown_dictionary", "bb:out:push", "1-0", batch, blen, NULL, "push");
    CTL_EXPECT(0, "dict", "rotate", "--size", "6kb"); /* without --prune: nothing goes */
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", c), 1);
    res = ctl(NULL, "--json", "dict", "rotate", "--prune", "--size", "7kb", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    pr = get(o, "prune");
    /* D goes (the one before the previous), A and C stay in use. */
    assert_int_equal(json_object_array_length(get(pr, "deleted")), 1);
    assert_int_equal(json_object_get_int64(json_object_array_get_idx(get(pr, "deleted"), 0)),
                     atoll(d));
    assert_int_equal(json_object_array_length(get(pr, "in_use")), 2);
    json_object_put(o);
    bb_run_result_free(&res);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", a), 1);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", c), 1);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:zdict:%s", d), 0);
    res = ctl(NULL, "dict", "show", NULL);
    expect_status(&res, 0);
    assert_non_null(strstr(res.out, "(current)"));
    bb_run_result_free(&res);
    CTL_EXPECT(0, "dict", "show");
    CTL_EXPECT(0, "dict", "rotate", "--help");
    CTL_EXPECT(2, "dict");
    CTL_EXPECT(2, "dict", "spin");
    CTL_EXPECT(2, "dict", "train", "--prune"); /* rotate's option only */
}

/* ---- directory export -------------------------------------------------------------------- */

static const char directory_jsonl[] =
    "{\"group\":{\"id\":2,\"name\":\"De Muntel\",\"cells\":[\"u1hbc\",\"u1hbf\"],"
    "\"policy\":{\"categories\":[\"burglary\",\"suspicious_person\"],\"min_urgency\":"
    "\"in_progress\",\"sources\":[\"resident\",\"police\"],\"public_posting\":true},"
    "\"location_precision\":7}}\n"
    "{\"group\":{\"id\":3,\"name\":\"Empty\"}}\n"
    "{\"user\":{\"id\":1,\"screen_name\":\"Jan\",\"locale\":\"nl\",\"time_zone\":"
    "\"Europe/Amsterdam\",\"watch\":{\"lat\":51.69,\"lon\":5.3,\"radius_m\":500},"
    "\"prefs\":{\"categories\":[\"burglary\"],\"min_urgency\":\"recent\",\"in_progress\":"
    "[\"push\",\"inbox\"],\"recent\":[],\"quiet\":{\"from\":\"22:00\",\"to\":\"07:30\"},"
    "\"max_per_hour\":5,\"digest_hour\":8,\"digest_weekly\":true},\"muted_authors\":[7],"
    "\"muted_groups\":[3]}}\n"
    "{\"user\":{\"id\":7,\"screen_name\":\"Ütrecht ☂\"}}\n"
    "{\"user\":{\"id\":12,\"screen_name\":\"Piet\",\"prefs\":{\"informational\":[\"digest\"]}}}\n"
    "{\"user\":{\"id\":9007199254740993}}\n"
    "{\"member\":{\"user\":1,\"group\":2}}\n"
    "{\"member\":{\"user\":12,\"group\":2}}\n"
    "{\"member\":{\"user\":7,\"group\":3}}\n"
    "{\"follow\":{\"user\":1,\"report\":\"r-1\"}}\n"
    "{\"follow\":{\"user\":12,\"report\":\"r-1\"}}\n"
    "{\"follow\":{\"user\":7,\"report\":\"a-2\"}}\n";

static void directory_export_round_trip(void **state)
{
    (void)state;
    flush_all();
    char src[512], first[512];
    assert_non_null(bb_harness_write_file(src, sizeof(src), "dir.jsonl", directory_jsonl));
    CTL_EXPECT(0, "directory", "load", src);
    bb_harness_path(first, sizeof(first), "export1.jsonl");
    struct bb_run_result res = ctl(NULL, "--json", "directory", "export", "--file", first, NULL);
    expect_status(&res, 0);
    struct json_object *o = parse_json(res.out);
    assert_int_equal(get_int(o, "groups"), 2);
    assert_int_equal(get_int(o, "users"), 4);
    assert_int_equal(get_int(o, "memberships"), 3);
    assert_int_equal(get_int(o, "follows"), 3);
    json_object_put(o);
    bb_run_result_free(&res);

    /* To standard output, the same lines. */
    struct bb_run_result one = ctl(NULL, "directory", "export", NULL);
    expect_status(&one, 0);
    assert_non_null(strstr(one.out, "\"digest_weekly\":true"));
    assert_non_null(strstr(one.out, "\"recent\":[]"));
    assert_non_null(strstr(one.out, "\"9007199254740993\""));
    assert_non_null(strstr(one.out, "\"muted_groups\":[3]"));

    flush_all();
    CTL_EXPECT(0, "load", first); /* the old name */
    struct bb_run_result two = ctl(NULL, "directory", "export", NULL);
    expect_status(&two, 0);
    assert_string_equal(one.out, two.out);
    /* And the directory loads as a broker loads it. */
    res = ctl(NULL, "--json", "snapshot", NULL);
    expect_status(&res, 0);
    o = parse_json(res.out);
    assert_int_equal(get_int(o, "users"), 4);
    assert_int_equal(get_int(o, "memberships"), 3);
    assert_int_equal(get_int(o, "bad_users"), 0);
    json_object_put(o);
    bb_run_result_free(&res);
    bb_run_result_free(&one);
    bb_run_result_free(&two);
    CTL_EXPECT(0, "directory", "snapshot");
    CTL_EXPECT(0, "directory", "export", "--help");
    CTL_EXPECT(2, "directory", "export", "extra");
    CTL_EXPECT(1, "directory", "export", "--file", "/nonexistent/dir/x.jsonl");
}

/* ---- old names --------------------------------------------------------------------------- */

static void old_names_still_work(void **state)
{
    (void)state;
    flush_all();
    char src[512];
    assert_non_null(bb_harness_write_file(src, sizeof(src), "dir2.jsonl", directory_jsonl));
    CTL_EXPECT(0, "load", src);
    CTL_EXPECT(0, "snapshot");
    CTL_EXPECT(0, "dead");
    CTL_EXPECT(0, "post", report_json);
    CTL_EXPECT(0, "route", report_json);
    CTL_EXPECT(0, "outputs");
    CTL_EXPECT(0, "dict", "show");
    struct bb_run_result res = ctl(NULL, "erase-user", "--settle", "0", "12", NULL);
    expect_status(&res, 0);
    bb_run_result_free(&res);
    assert_int_equal(bb_kit_int(rc, "SISMEMBER bb:users 12"), 0);
    CTL_EXPECT(0, "directory", "erase-user", "--settle", "0", "7");
    assert_int_equal(bb_kit_int(rc, "SISMEMBER bb:users 7"), 0);
    CTL_EXPECT(0, "load", "--help");
    CTL_EXPECT(0, "help", "directory", "export");
    CTL_EXPECT(0, "help", "dead");
    CTL_EXPECT(0, "--help");
    CTL_EXPECT(2, "directory");
    CTL_EXPECT(2, "directory", "frob");
    CTL_EXPECT(2, "frobnicate");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_empty_and_busy),     cmocka_unit_test(dead_broker_replay),
        cmocka_unit_test(dead_worker_replay),        cmocka_unit_test(dead_refusals_and_purge),
        cmocka_unit_test(dict_rotate_prunes_unused), cmocka_unit_test(directory_export_round_trip),
        cmocka_unit_test(old_names_still_work),
#ifdef BB_BROKER_PATH
        cmocka_unit_test(dead_from_real_broker),
#endif
    };
    if (argc > 1) {
        cmocka_set_test_filter(argv[1]);
    }
    if (bb_kit_setup(&srv, &rc) != 0) {
        bb_harness_finish(true);
        return 1;
    }
    int failed = cmocka_run_group_tests_name("ctl", tests, NULL, NULL);
    bb_kit_teardown(&rc, NULL, NULL);
    bb_harness_finish(failed != 0);
    return failed ? 1 : 0;
}
