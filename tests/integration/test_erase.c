/* GDPR erasure end to end: the built buurtbusctl, buurtbus-broker and
 * buurtbus-worker against the harness' redis-server. Two people, A (id 1)
 * and B (id 11, so that an id that merely contains A's digits is near),
 * in one group with an author (id 21) reporting; the worker runs
 *
 *   push    the webhook plug-in at a closed port: every delivery is parked
 *           as a retry in bb:later:push
 *   inbox   the inbox plug-in: bb:inbox:{id}, bb:sent records, receipts
 *   email   the file and inbox plug-ins, picked by push_platform, which
 *           names neither: a dead letter per delivery
 *   digest  the file plug-in collecting per user: bb:collect:digest:u{id}
 *
 * so each of A and B has inbox entries, a pending collection, a parked
 * retry, bb:sent records, receipts and dead letters; a digest receipt and
 * record and a job dead letter are added by hand in the workers' formats.
 * `erase-user 1 --settle 2s` must leave nothing that names A and all of
 * B's; `route` no longer lists A, and reports posted afterwards reach B
 * and never A, in any channel.
 *
 * Also: the worker guard (a provider answering only after the erasure:
 * the delivery is not parked again), a table of look-alike keys that must
 * stay, and the command's usage errors.
 *
 * Threads: the test's main thread only; the programs are child processes. */
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
#include "worker_kit.h"

#define USER_A 1
#define USER_B 11
#define AUTHOR 21
#define GROUP 5
#define LAT "51.69012"
#define LON "5.30198"

static const struct bb_redis_server *srv;
static redisContext *rc;
static pid_t broker_pid, worker_pid, provider_pid;

/* ---- running the programs ----------------------------------------------------------------- */

/* buurtbusctl --redis <srv> args...; asserts exit 0; returns stdout (caller frees). */
static char *ctl(const char *const *args)
{
    const char *argv[16] = {BB_CTL_PATH, "--redis", srv->addr};
    size_t n = 3;
    for (size_t i = 0; args[i]; i++) {
        assert_true(n < 15);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    struct bb_run_result res;
    assert_int_equal(bb_harness_run(argv, NULL, 60, &res), 0);
    if (res.status != 0) {
        fprintf(stderr, "buurtbusctl %s: exit %d\n%s\n%s\n", args[0], res.status, res.out, res.err);
    }
    assert_int_equal(res.status, 0);
    char *out = strndup(res.out, res.outlen); /* an empty output may hold no NUL */
    assert_non_null(out);
    bb_run_result_free(&res);
    return out;
}

static void load_directory(void)
{
    /* The digest hour half a day away, so no digest goes out during the test. */
    unsigned hour = (unsigned)((time(NULL) / 3600 + 12) % 24);
    char text[4096], path[512];
    size_t n =
        (size_t)snprintf(text, sizeof(text),
                         "{\"group\":{\"id\":%d,\"name\":\"Buurt\",\"cells\":[\"u1hbc\",\"u1hbf\"],"
                         "\"policy\":{\"min_urgency\":\"informational\"}}}\n",
                         GROUP);
    const int users[] = {USER_A, USER_B, AUTHOR};
    for (size_t i = 0; i < 3; i++) {
        n += (size_t)snprintf(
            text + n, sizeof(text) - n,
            "{\"user\":{\"id\":%d,\"screen_name\":\"Buur%d\",\"locale\":\"nl\",\"time_zone\":"
            "\"UTC\",\"prefs\":{\"in_progress\":[\"push\",\"inbox\",\"email\"],"
            "\"informational\":[\"inbox\",\"digest\"],\"digest_hour\":%u}}}\n"
            "{\"member\":{\"user\":%d,\"group\":%d}}\n",
            users[i], users[i], hour, users[i], GROUP);
    }
    assert_true(n < sizeof(text));
    assert_non_null(bb_harness_write_file(path, sizeof(path), "dir.jsonl", text));
    free(ctl((const char *[]){"load", path, NULL}));
    for (size_t i = 0; i < 3; i++) {
        /* Contact data as the app stores it; the platform names no plug-in of email. */
        bb_kit_int(rc,
                   "HSET bb:user:%d email u%d@erase.example push_token tok-%d push_platform web",
                   users[i], users[i], users[i]);
    }
}

/* Posts an in-progress report (push, inbox, email) and an informational
 * one (inbox, digest). */
static void post_reports(const char *in_progress, const char *informational)
{
    char text[2048], path[512];
    snprintf(text, sizeof(text),
             "{\"id\":\"%s\",\"author_id\":%d,\"author_screen_name\":\"Buur%d\",\"group_id\":%d,"
             "\"lat\":" LAT ",\"lon\":" LON
             ",\"category\":\"burglary\",\"urgency\":\"in_progress\","
             "\"source\":\"resident\",\"text\":\"Iemand bij de achterdeur\",\"locale\":\"nl\"}\n"
             "{\"id\":\"%s\",\"author_id\":%d,\"author_screen_name\":\"Buur%d\",\"group_id\":%d,"
             "\"lat\":" LAT ",\"lon\":" LON ",\"category\":\"burglary\","
             "\"urgency\":\"informational\",\"source\":\"resident\",\"text\":\"Let op je fiets\","
             "\"locale\":\"nl\"}\n",
             in_progress, AUTHOR, AUTHOR, GROUP, informational, AUTHOR, AUTHOR, GROUP);
    assert_non_null(bb_harness_write_file(path, sizeof(path), "reports.jsonl", text));
    free(ctl((const char *[]){"post", "--file", path, NULL}));
}

static void start_broker(void)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "redis %s\nname broker-erase\nrouter_threads 1\nblock 100ms\nclaim_idle 1s\n"
             "claim_interval 300ms\nmetrics_addr \"\"\n",
             srv->addr);
    broker_pid = bb_kit_spawn(BB_BROKER_PATH, "broker.conf", text, "broker.log");
}

static void start_worker(void)
{
    char conf[4096], secret[512], email[512], digest[512];
    int closed = bb_harness_free_port();
    assert_true(closed > 0);
    assert_non_null(bb_harness_write_file(secret, sizeof(secret), "webhook.secret", "s3cret\n"));
    bb_harness_path(email, sizeof(email), "email.jsonl");
    bb_harness_path(digest, sizeof(digest), "digest.jsonl");
    snprintf(conf, sizeof(conf),
             "redis %s\nname w-erase\nplugin_dir \"%s\"\nblock 100ms\nlater_poll 100ms\n"
             "retry_min 10m\nretry_max 10m\nchannels push,inbox,email,digest\n"
             "channel.push.plugin webhook\nchannel.push.url http://127.0.0.1:%d/\n"
             "channel.push.secret_file \"%s\"\nchannel.push.breaker_failures 1000\n"
             "channel.inbox.plugin inbox\n"
             "channel.email.plugin \"file,inbox\"\nchannel.email.file.path \"%s\"\n"
             "channel.digest.plugin file\nchannel.digest.path \"%s\"\n"
             "channel.digest.collect user\n",
             srv->addr, BB_PLUGIN_DIR, closed, secret, email, digest);
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, "worker.log");
}

/* ---- what the programs left --------------------------------------------------------------- */

/* s names user 1 the way workers write ids: a personal delivery id
 * "...:{1-4}:1", a digest's "...:u1:{due}", a collection "...:u1" or
 * "...:u1:sending", a job "c:u1". Written apart from buurtbusctl's own
 * matcher, on purpose. */
static bool names_a(const char *s)
{
    size_t n = strlen(s);
    static const char *const ends[] = {":1:1", ":2:1", ":3:1", ":4:1", ":u1", ":u1:sending"};
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        size_t e = strlen(ends[i]);
        if (n >= e && strcmp(s + n - e, ends[i]) == 0) {
            return true;
        }
    }
    return strstr(s, ":u1:") != NULL || strcmp(s, "c:u1") == 0 || strcmp(s, "bb:user:1") == 0 ||
           strncmp(s, "bb:user:1:", 10) == 0 || strcmp(s, "bb:inbox:1") == 0;
}

/* The same for user 11. */
static bool names_b(const char *s)
{
    size_t n = strlen(s);
    static const char *const ends[] = {":1:11", ":2:11", ":3:11", ":4:11", ":u11", ":u11:sending"};
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        size_t e = strlen(ends[i]);
        if (n >= e && strcmp(s + n - e, ends[i]) == 0) {
            return true;
        }
    }
    return strstr(s, ":u11:") != NULL || strcmp(s, "c:u11") == 0;
}

/* What names one person, by kind. */
struct traces {
    long long inbox;     /* entries of bb:inbox:{id} */
    long long collected; /* items in bb:collect:*:u{id} */
    long long jobs;      /* c:u{id} in bb:later:digest */
    long long retries;   /* r:... in bb:later:push:jobs */
    long long sent;      /* bb:sent keys */
    long long receipts;  /* receipts */
    long long dead;      /* dead letters with their delivery id or job */
    long long keys;      /* any key at all naming them */
    long long members;   /* bb:later members (zset) naming them */
};

static bool (*const namers[2])(const char *) = {names_a, names_b};

static void count_traces(int who, uint64_t id, struct traces *t)
{
    bool (*names)(const char *) = namers[who];
    memset(t, 0, sizeof(*t));
    t->inbox = bb_kit_int(rc, "XLEN bb:inbox:%" PRIu64, id);
    redisReply *r = bb_kit_cmd(rc, "KEYS *");
    for (size_t i = 0; i < r->elements; i++) {
        const char *k = r->element[i]->str;
        if (!names(k)) {
            continue;
        }
        t->keys++;
        if (strncmp(k, "bb:sent:", 8) == 0) {
            t->sent++;
        } else if (strncmp(k, "bb:collect:", 11) == 0) {
            t->collected += bb_kit_int(rc, "HLEN %s", k);
        }
    }
    freeReplyObject(r);
    static const char *const zsets[] = {"bb:later:push", "bb:later:digest"};
    for (size_t z = 0; z < 2; z++) {
        r = bb_kit_cmd(rc, "HKEYS %s:jobs", zsets[z]);
        for (size_t i = 0; i < r->elements; i++) {
            if (names(r->element[i]->str)) {
                t->jobs += r->element[i]->str[0] == 'c';
                t->retries += r->element[i]->str[0] == 'r';
            }
        }
        freeReplyObject(r);
        r = bb_kit_cmd(rc, "ZRANGE %s 0 -1", zsets[z]);
        for (size_t i = 0; i < r->elements; i++) {
            t->members += names(r->element[i]->str);
        }
        freeReplyObject(r);
    }
    Bb__Receipt **rs;
    size_t nr = bb_kit_receipts_read(rc, &rs);
    for (size_t i = 0; i < nr; i++) {
        t->receipts += names(rs[i]->delivery_id);
    }
    bb_kit_receipts_free(rs, nr);
    r = bb_kit_cmd(rc, "XRANGE bb:dead - +");
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        bool mine = false;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            const redisReply *v = f->element[k + 1];
            if (strcmp(f->element[k]->str, "delivery") == 0) {
                mine = mine || names(v->str);
            } else if (strcmp(f->element[k]->str, "p") == 0 &&
                       strcmp(f->element[1]->str, "bad_item") == 0) {
                Bb__PendingDelivery *pd =
                    bb__pending_delivery__unpack(NULL, v->len, (const uint8_t *)v->str);
                mine = mine || (pd && pd->recipient == id);
                if (pd) {
                    bb__pending_delivery__free_unpacked(pd, NULL);
                }
            }
        }
        t->dead += mine;
    }
    freeReplyObject(r);
}

static void print_traces(const char *who, const struct traces *t)
{
    fprintf(stderr,
            "%s: inbox %lld collected %lld jobs %lld retries %lld sent %lld receipts %lld dead "
            "%lld keys %lld members %lld\n",
            who, t->inbox, t->collected, t->jobs, t->retries, t->sent, t->receipts, t->dead,
            t->keys, t->members);
}

/* Waits until user id's traces reach at least want in every kind want sets. */
static void wait_traces(int who, uint64_t id, const struct traces *want)
{
    struct traces t;
    for (int ms = 0; ms < 20000; ms += 100) {
        count_traces(who, id, &t);
        if (t.inbox >= want->inbox && t.collected >= want->collected && t.jobs >= want->jobs &&
            t.retries >= want->retries && t.sent >= want->sent && t.receipts >= want->receipts &&
            t.dead >= want->dead) {
            return;
        }
        bb_harness_sleep_ms(100);
    }
    print_traces(who ? "B" : "A", &t);
    fail_msg("user %" PRIu64 ": the worker did not leave the expected traces", id);
}

/* Workers' records in their formats, added by hand: a digest's receipt
 * and record, and a job dead letter (no delivery id, p a PendingDelivery
 * of the collection); plus a batch-level dead letter that must stay. */
static void add_worker_records(uint64_t id)
{
    char did[64];
    snprintf(did, sizeof(did), "c:digest:u%" PRIu64 ":1732800000000", id);
    Bb__Receipt r = BB__RECEIPT__INIT;
    r.schema_version = 1;
    r.delivery_id = did;
    r.channel = BB__CHANNEL__CHANNEL_DIGEST;
    r.outcome = BB__OUTCOME__OUTCOME_OK;
    r.reason = "";
    r.time_ms = 1732800000000;
    r.attempts = 1;
    uint8_t buf[256];
    size_t n = bb__receipt__pack(&r, buf);
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:receipts * p %b", buf, n));
    freeReplyObject(bb_kit_cmd(rc, "SET bb:sent:digest:%s 1", did));

    Bb__PendingDelivery pd = BB__PENDING_DELIVERY__INIT;
    pd.schema_version = 1;
    pd.recipient = id;
    pd.recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
    pd.channel = BB__CHANNEL__CHANNEL_DIGEST;
    pd.due_ms = 1732800000000;
    n = bb__pending_delivery__pack(&pd, buf);
    freeReplyObject(bb_kit_cmd(rc,
                               "XADD bb:dead * reason bad_item detail collection stream "
                               "bb:out:digest id 1-0 p %b worker w-erase",
                               buf, n));
}

/* Everything user 1 (A) could have left is gone. */
static void assert_no_trace_of_a(void)
{
    struct traces t;
    count_traces(0, USER_A, &t);
    if (t.inbox || t.collected || t.jobs || t.retries || t.sent || t.receipts || t.dead || t.keys ||
        t.members) {
        print_traces("A", &t);
        fail_msg("user 1 is not erased everywhere");
    }
}

/* DeliveryBatches in bb:out:* for notification key; returns how many name id. */
static unsigned batches_naming(const char *key, uint64_t id, unsigned *batches)
{
    static const char *const streams[] = {"bb:out:push", "bb:out:email", "bb:out:inbox",
                                          "bb:out:digest", "bb:out:social"};
    unsigned naming = 0;
    for (size_t s = 0; s < sizeof(streams) / sizeof(streams[0]); s++) {
        redisReply *r = bb_kit_cmd(rc, "XRANGE %s - +", streams[s]);
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *p = r->element[i]->element[1]->element[1];
            Bb__DeliveryBatch *b =
                bb__delivery_batch__unpack(NULL, p->len, (const uint8_t *)p->str);
            assert_non_null(b);
            if (strcmp(b->notification_key, key) == 0) {
                (*batches)++;
                for (size_t j = 0; j < b->n_recipients; j++) {
                    naming += b->recipient_kind != BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP &&
                              b->recipients[j] == id;
                }
            }
            bb__delivery_batch__free_unpacked(b, NULL);
        }
        freeReplyObject(r);
    }
    return naming;
}

/* ---- the test ----------------------------------------------------------------------------- */

static void erasure_removes_everything_within_the_settle(void **state)
{
    (void)state;
    load_directory();
    start_broker();
    start_worker();
    post_reports("e1", "e2");

    /* Each of A and B: 2 inbox entries and records, 1 collected, 1 retry,
     * receipts (inbox ok x2, push retry, email permanent), 1 dead letter. */
    const struct traces want = {
        .inbox = 2, .collected = 1, .jobs = 1, .retries = 1, .sent = 2, .receipts = 4, .dead = 1};
    wait_traces(0, USER_A, &want);
    wait_traces(1, USER_B, &want);
    add_worker_records(USER_A);
    add_worker_records(USER_B);
    freeReplyObject(bb_kit_cmd(rc, "XADD bb:dead * reason decode_error detail x stream "
                                   "bb:out:inbox id 2-0 p garbage worker w-erase"));
    struct traces before_b;
    count_traces(1, USER_B, &before_b);
    print_traces("B before", &before_b);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char *out = ctl((const char *[]){"erase-user", "--settle", "2s", "--json", "1", NULL});
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    fprintf(stderr, "erase-user 1 --settle 2s took %.2f s: %s", took, out);
    json_object *o = json_tokener_parse(out), *v;
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "ok", &v) && json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(o, "user", &v));
    assert_string_equal(json_object_get_string(v), "1");
    static const char *const kinds[] = {"inbox_entries",   "collections", "collected",
                                        "collection_jobs", "retries",     "sent_records",
                                        "receipts",        "dead_letters"};
    static const long long at_least[] = {2, 1, 1, 1, 1, 3, 5, 2};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        assert_true(json_object_object_get_ex(o, kinds[k], &v));
        if (json_object_get_int64(v) < at_least[k]) {
            fail_msg("%s: removed %lld, expected at least %lld", kinds[k],
                     (long long)json_object_get_int64(v), at_least[k]);
        }
    }
    json_object_put(o);
    free(out);
    assert_true(took < 60.0); /* within the minute the erasure promises */

    assert_int_equal(bb_kit_int(rc, "EXISTS bb:user:1"), 0);
    assert_int_equal(bb_kit_int(rc, "SISMEMBER bb:group:%d:members 1", GROUP), 0);
    assert_no_trace_of_a();

    /* B's all still there; so is the batch-level dead letter. */
    struct traces after_b;
    count_traces(1, USER_B, &after_b);
    print_traces("B after", &after_b);
    assert_true(after_b.inbox == before_b.inbox && after_b.collected == before_b.collected &&
                after_b.jobs == before_b.jobs && after_b.retries == before_b.retries &&
                after_b.sent == before_b.sent && after_b.receipts == before_b.receipts &&
                after_b.dead == before_b.dead);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:user:11"), 1);
    assert_int_equal(bb_kit_dead(rc, "decode_error"), 1);

    /* route: A is no longer considered, B is. */
    char path[512];
    char report[512];
    snprintf(report, sizeof(report),
             "{\"id\":\"e9\",\"author_id\":%d,\"group_id\":%d,\"lat\":" LAT ",\"lon\":" LON
             ",\"category\":\"burglary\",\"urgency\":\"in_progress\",\"source\":\"resident\","
             "\"text\":\"x\"}",
             AUTHOR, GROUP);
    assert_non_null(bb_harness_write_file(path, sizeof(path), "route.json", report));
    out = ctl((const char *[]){"route", "--json", "--file", path, NULL});
    o = json_tokener_parse(out);
    assert_non_null(o);
    json_object *people;
    assert_true(json_object_object_get_ex(o, "people", &people));
    bool has_a = false, has_b = false;
    for (size_t i = 0; i < json_object_array_length(people); i++) {
        json_object *u;
        if (json_object_object_get_ex(json_object_array_get_idx(people, i), "user", &u)) {
            has_a = has_a || json_object_get_uint64(u) == USER_A;
            has_b = has_b || json_object_get_uint64(u) == USER_B;
        }
    }
    json_object_put(o);
    free(out);
    assert_false(has_a);
    assert_true(has_b);

    /* Reports after the erasure reach B and never A. */
    post_reports("e3", "e4");
    const struct traces more = {.inbox = before_b.inbox + 2,
                                .collected = before_b.collected + 1,
                                .jobs = 1,
                                .retries = before_b.retries + 1,
                                .sent = before_b.sent + 2,
                                .receipts = before_b.receipts + 4,
                                .dead = before_b.dead + 1};
    wait_traces(1, USER_B, &more);
    unsigned batches = 0;
    assert_int_equal(batches_naming("r:e3", USER_A, &batches), 0);
    assert_int_equal(batches_naming("r:e4", USER_A, &batches), 0);
    assert_true(batches >= 5); /* push, email, inbox for e3; inbox, digest for e4 */
    batches = 0;
    assert_true(batches_naming("r:e3", USER_B, &batches) >= 3);
    assert_no_trace_of_a();
    bb_harness_sleep_ms(300); /* anything late would have come by now */
    assert_no_trace_of_a();

    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    st = bb_kit_stop(&broker_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A provider that holds each request for a while, then answers 503; it
 * logs "got <delivery id>" when a request arrives and "answered" after. */
static const char slow_provider_py[] =
    "import http.server, sys, time\n"
    "log = open(sys.argv[2], 'a', buffering=1)\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers.get('Content-Length', '0')))\n"
    "        log.write('got %s\\n' % self.headers.get('X-Buurtbus-Delivery'))\n"
    "        time.sleep(3)\n"
    "        self.send_response(503)\n"
    "        self.send_header('Content-Length', '0')\n"
    "        self.end_headers()\n"
    "        log.write('answered\\n')\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
    "open(sys.argv[1] + '.tmp', 'w').write(str(s.server_address[1]))\n"
    "import os\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "s.serve_forever()\n";

static bool file_has(const char *path, const char *what)
{
    char line[512];
    bool found = false;
    FILE *f = fopen(path, "r");
    while (f && !found && fgets(line, sizeof(line), f)) {
        found = strstr(line, what) != NULL;
    }
    if (f) {
        fclose(f);
    }
    return found;
}

/* The worker guard: a delivery whose provider answers only after the
 * erasure (erase-user --settle 0 runs while the request hangs) must not
 * come back as a retry job in bb:later; the erasure's sweep ran before the
 * worker parks it. */
static void worker_parks_nothing_for_an_erased_user(void **state)
{
    (void)state;
    char script[512], log[512], conf[2048], secret[512];
    int port;
    assert_non_null(bb_harness_write_file(script, sizeof(script), "slow.py", slow_provider_py));
    provider_pid = bb_kit_stand_in(script, "slow.log", log, sizeof(log), &port);
    bb_kit_int(rc, "HSET bb:user:31 u x push_token tok-31");
    bb_kit_int(rc, "SADD bb:users 31");
    Bb__Notification nt;
    bb_kit_report(&nt, "g1");
    bb_kit_add_batch(
        rc, "bb:out:slow", &nt,
        &(struct bb_kit_batch){.channel = BB__CHANNEL__CHANNEL_PUSH, .first = 31, .n = 1});
    assert_non_null(bb_harness_write_file(secret, sizeof(secret), "slow.secret", "s3cret\n"));
    snprintf(conf, sizeof(conf),
             "redis %s\nname w-slow\nplugin_dir \"%s\"\nblock 100ms\nlater_poll 100ms\n"
             "retry_min 10m\nretry_max 10m\nchannels slow\n"
             "channel.slow.plugin webhook\nchannel.slow.url http://127.0.0.1:%d/\n"
             "channel.slow.secret_file \"%s\"\n",
             srv->addr, BB_PLUGIN_DIR, port, secret);
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, "worker-slow.log");
    for (int ms = 0; ms < 10000 && !file_has(log, "got r:g1:1:31"); ms += 20) {
        bb_harness_sleep_ms(20);
    }
    assert_true(file_has(log, "got r:g1:1:31"));
    free(ctl((const char *[]){"erase-user", "--settle", "0", "31", NULL}));
    assert_false(file_has(log, "answered")); /* the erasure ran while the request hung */
    /* The 503 comes; the worker writes its RETRY receipt, then tries to park. */
    for (int ms = 0;
         ms < 10000 && bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, "r:g1:1:31", NULL) == 0;
         ms += 20) {
        bb_harness_sleep_ms(20);
    }
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, "r:g1:1:31", NULL), 1);
    for (int ms = 0; ms < 10000 && bb_harness_stream_unfinished(rc, "bb:out:slow", "bb-workers");
         ms += 20) {
        bb_harness_sleep_ms(20);
    }
    assert_int_equal(bb_harness_stream_unfinished(rc, "bb:out:slow", "bb-workers"), 0);
    assert_int_equal(bb_kit_int(rc, "HEXISTS bb:later:slow:jobs r:r:g1:1:31"), 0);
    assert_int_equal(bb_kit_int(rc, "ZCARD bb:later:slow"), 0);
    assert_int_equal(bb_kit_int(rc, "EXISTS bb:sent:slow:r:g1:1:31"), 0);
    /* The refused park ends the delivery as for an unknown user. */
    assert_int_equal(
        bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, "r:g1:1:31", "unknown_user"), 1);
    /* What the late delivery wrote (its receipts) is what the settle pass is
     * for: a second run removes them. */
    char *out = ctl((const char *[]){"erase-user", "--settle", "0", "--json", "31", NULL});
    json_object *o = json_tokener_parse(out), *v;
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "receipts", &v));
    assert_int_equal(json_object_get_int64(v), 2);
    json_object_put(o);
    free(out);
    for (int outcome = 0; outcome <= 4; outcome++) {
        assert_int_equal(bb_kit_receipts(rc, outcome, "r:g1:1:31", NULL), 0);
    }
    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    bb_kit_stop(&provider_pid, SIGTERM, BB_KIT_STOP_MS);
}

/* Which keys and fields name user 1: a table of look-alikes (users 11
 * and 21, group 1 on the social channel, a channel number 11) that stay,
 * and user 1's own that go. */
static void matching_is_anchored_on_the_id(void **state)
{
    (void)state;
    static const struct {
        const char *cmd, *key, *field;
        bool gone;
    } cases[] = {
        {"SET %s 1", "bb:sent:inbox:r:a:3:1", NULL, true},
        {"SET %s 1", "bb:sent:push:s:st-9:1:1", NULL, true},
        {"SET %s 1", "bb:sent:digest:c:digest:u1:1732800000000", NULL, true},
        {"SET %s 1", "bb:sent:inbox:r:a:3:11", NULL, false},
        {"SET %s 1", "bb:sent:inbox:r:a:3:21", NULL, false},
        {"SET %s 1", "bb:sent:inbox:r:a:11:1", NULL, false},
        {"SET %s 1", "bb:sent:social:r:a:5:1", NULL, false},
        {"SET %s 1", "bb:sent:digest:c:digest:u11:1732800000000", NULL, false},
        {"SET %s 1", "bb:sent:social:c:social:g1:1732800000000", NULL, false},
        {"HSET %s %s x", "bb:collect:digest:u1", "r:a:4:1", true},
        {"HSET %s %s x", "bb:collect:digest:u1:sending", "r:b:4:1", true},
        {"HSET %s %s x", "bb:collect:digest:u11", "r:a:4:11", false},
        {"HSET %s %s x", "bb:collect:digest:u21:sending", "r:a:4:21", false},
        {"HSET %s %s x", "bb:collect:social:g1", "r:a:5:1", false},
        {"HSET %s %s x", "bb:later:mail:jobs", "r:r:a:2:1", true},
        {"HSET %s %s x", "bb:later:mail:jobs", "c:u1", true},
        {"HSET %s %s x", "bb:later:mail:jobs", "r:r:a:2:11", false},
        {"HSET %s %s x", "bb:later:mail:jobs", "r:r:a:5:1", false},
        {"HSET %s %s x", "bb:later:mail:jobs", "c:u11", false},
        {"HSET %s %s x", "bb:later:mail:jobs", "c:g1", false},
        {"XADD %s * %s x", "bb:inbox:1", "id", true},
        {"XADD %s * %s x", "bb:inbox:11", "id", false},
    };
    const size_t n = sizeof(cases) / sizeof(cases[0]);
    for (size_t i = 0; i < n; i++) {
        freeReplyObject(bb_kit_cmd(rc, cases[i].cmd, cases[i].key, cases[i].field));
        if (strncmp(cases[i].key, "bb:later:", 9) == 0) {
            freeReplyObject(bb_kit_cmd(rc, "ZADD bb:later:mail 1 %s", cases[i].field));
        }
    }
    free(ctl((const char *[]){"erase-user", "--settle", "0", "1", NULL}));
    for (size_t i = 0; i < n; i++) {
        long long there = cases[i].field && cases[i].cmd[0] == 'H'
                              ? bb_kit_int(rc, "HEXISTS %s %s", cases[i].key, cases[i].field)
                              : bb_kit_int(rc, "EXISTS %s", cases[i].key);
        if (there != !cases[i].gone) {
            fail_msg("%s %s: %s", cases[i].key, cases[i].field ? cases[i].field : "",
                     there ? "still there" : "removed");
        }
        if (strncmp(cases[i].key, "bb:later:", 9) == 0) {
            redisReply *r = bb_kit_cmd(rc, "ZSCORE bb:later:mail %s", cases[i].field);
            assert_int_equal(r->type == REDIS_REPLY_NIL, cases[i].gone);
            freeReplyObject(r);
        }
    }
}

/* The command's edges: usage errors, an unknown id erased without fuss. */
static void erase_user_usage(void **state)
{
    (void)state;
    static const struct {
        const char *args[6];
        int status;
        const char *says;
    } cases[] = {
        {{"erase-user", NULL}, 2, "give one or more user ids"},
        {{"erase-user", "0", NULL}, 2, "not a user id"},
        {{"erase-user", "--", "-3", NULL}, 2, "not a user id"},
        {{"erase-user", "-3", NULL}, 2, "invalid option"},
        {{"erase-user", "12x", NULL}, 2, "not a user id"},
        {{"erase-user", "--settle", "soon", "5", NULL}, 2, "--settle"},
        {{"erase-user", "--help", NULL}, 0, "Usage: buurtbusctl erase-user"},
        {{"erase-user", "--settle", "0", "987654", NULL}, 0, "user 987654: erased"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *argv[12] = {BB_CTL_PATH, "--redis", srv->addr};
        size_t n = 3;
        for (size_t k = 0; cases[i].args[k]; k++) {
            argv[n++] = cases[i].args[k];
        }
        argv[n] = NULL;
        struct bb_run_result res;
        assert_int_equal(bb_harness_run(argv, NULL, 30, &res), 0);
        /* Bounded searches: an empty output's buffer may hold no NUL. */
        size_t sl = strlen(cases[i].says);
        if (res.status != cases[i].status || (!memmem(res.out, res.outlen, cases[i].says, sl) &&
                                              !memmem(res.err, res.errlen, cases[i].says, sl))) {
            fail_msg("case %zu: exit %d, out: %.*s err: %.*s", i, res.status, (int)res.outlen,
                     res.out, (int)res.errlen, res.err);
        }
        bb_run_result_free(&res);
    }
}

static int setup(void **state)
{
    (void)state;
    return bb_kit_setup(&srv, &rc);
}

static int teardown(void **state)
{
    (void)state;
    bb_kit_teardown(&rc, &worker_pid, &provider_pid);
    if (broker_pid > 0) {
        bb_kit_stop(&broker_pid, SIGKILL, BB_KIT_STOP_MS);
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(erasure_removes_everything_within_the_settle),
        cmocka_unit_test(worker_parks_nothing_for_an_erased_user),
        cmocka_unit_test(matching_is_anchored_on_the_id),
        cmocka_unit_test(erase_user_usage),
    };
    int failures = cmocka_run_group_tests(tests, setup, teardown);
    bb_harness_finish(failures != 0);
    return failures;
}
