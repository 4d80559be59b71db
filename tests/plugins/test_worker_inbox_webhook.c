/* buurtbus-worker end to end with the inbox and webhook plug-ins: a real
 * redis-server, DeliveryBatch entries written by hand into bb:out:inbox
 * and bb:out:webhook, the built worker as a child process, and a stand-in
 * webhook receiver (webhook_server.py) that records every request.
 * Checked: inbox entries and their live PUBLISH (seen by a subscriber),
 * the webhook body and its HMAC signature (recomputed here with
 * libcrypto), 410 -> gone (dead letter), 503 -> retried then delivered
 * once. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bb_conn.h"
#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "harness.h"
#include "worker_kit.h"

#define SECRET "s3cr3t-webhook-key"

static const struct bb_redis_server *srv;
static redisContext *rc;
static pid_t worker_pid, server_pid;

/* The standard report n1 with a photo, to recipients 1..n on stream. */
static void add_batch(const char *stream, int channel, size_t n)
{
    Bb__Media m = BB__MEDIA__INIT;
    Bb__Media *mp = &m;
    m.url = "https://media.example.org/a.jpg";
    m.mime_type = "image/jpeg";
    Bb__Notification nt;
    bb_kit_report(&nt, "n1");
    nt.media = &mp;
    nt.n_media = 1;
    bb_kit_add_batch(rc, stream, &nt,
                     &(struct bb_kit_batch){.channel = channel, .first = 1, .n = n});
}

/* The instances are named after their streams' last part (bb:out:<inst>). */
static long long unfinished(const char *stream)
{
    return bb_harness_worker_unfinished(rc, stream, "bb-workers", strrchr(stream, ':') + 1);
}

static const char *jstr(json_object *o, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_string(v);
}

static void check_notification(json_object *o)
{
    assert_string_equal(jstr(o, "kind"), "report");
    assert_string_equal(jstr(o, "report_id"), "n1");
    assert_string_equal(jstr(o, "text"), BB_KIT_TEXT);
    assert_string_equal(jstr(o, "title"), "Inbraak");
    assert_string_equal(jstr(o, "category_name"), "burglary");
    assert_string_equal(jstr(o, "urgency"), "in_progress");
    assert_string_equal(jstr(o, "author"), "Jan");
    assert_string_equal(jstr(o, "cell"), "u1hbcq7");
    json_object *v;
    assert_true(json_object_object_get_ex(o, "time_ms", &v));
    assert_int_equal(json_object_get_int64(v), 1732800000000LL);
    assert_true(json_object_object_get_ex(o, "lat", &v));
    assert_true(json_object_get_double(v) > 51.68 && json_object_get_double(v) < 51.70);
    assert_true(json_object_object_get_ex(o, "media", &v));
    assert_int_equal(json_object_array_length(v), 1);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(v, 0)),
                        "https://media.example.org/a.jpg");
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static int setup(void **state)
{
    return bb_kit_setup(&srv, &rc);
}

static int teardown(void **state)
{
    bb_kit_teardown(&rc, &worker_pid, &server_pid);
    return 0;
}

/* ---- the case ---------------------------------------------------------------------------- */

static void inbox_and_webhook(void **state)
{
    freeReplyObject(bb_kit_cmd(rc, "FLUSHALL"));
    for (uint64_t u = 1; u <= 4; u++) {
        Bb__User user = BB__USER__INIT;
        user.id = u;
        user.screen_name = "buur";
        user.locale = "nl";
        uint8_t buf[256];
        size_t len = bb__user__pack(&user, buf);
        freeReplyObject(bb_kit_cmd(
            rc, "HSET bb:user:%" PRIu64 " u %b push_token tok-%" PRIu64 " push_platform fcm", u,
            buf, len, u));
    }
    /* The live feed, followed before anything is sent. */
    redisContext *sub = bb_harness_redis_connect(srv);
    assert_non_null(sub);
    redisReply *r = redisCommand(sub, "PSUBSCRIBE bb:inbox-live:*");
    assert_non_null(r);
    freeReplyObject(r);

    char log[512], secret[512], conf[2048];
    assert_non_null(bb_harness_write_file(secret, sizeof(secret), "webhook.secret", SECRET "\n"));
    int port;
    server_pid = bb_kit_stand_in(BB_WEBHOOK_SERVER, "webhook.jsonl", log, sizeof(log), &port);

    add_batch("bb:out:inbox", BB__CHANNEL__CHANNEL_INBOX, 3);
    add_batch("bb:out:webhook", BB__CHANNEL__CHANNEL_PUSH, 4);

    snprintf(conf, sizeof(conf),
             "redis %s\nname w-iw\nplugin_dir \"%s\"\nblock 100ms\nretry_min 10ms\n"
             "retry_max 2s\nchannels inbox,webhook\nchannel.inbox.plugin inbox\n"
             "channel.inbox.max_items 50\nchannel.webhook.plugin webhook\n"
             "channel.webhook.url http://127.0.0.1:%d/hook\n"
             "channel.webhook.secret_file \"%s\"\n",
             srv->addr, BB_PLUGIN_DIR, port, secret);
    int64_t t0 = bb_mono_ms();
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, NULL);
    bool done = false;
    for (int t = 0; t < 20000 && !done; t += 50) {
        done = unfinished("bb:out:inbox") == 0 && unfinished("bb:out:webhook") == 0;
        if (!done) {
            bb_harness_sleep_ms(50);
        }
    }
    int64_t took = bb_mono_ms() - t0;
    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    bb_kit_stop(&server_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(done);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(took >= 900); /* Retry-After: 1 was honoured */

    /* Inbox: one entry per user, id then p, the notification JSON. */
    for (uint64_t u = 1; u <= 3; u++) {
        r = bb_kit_cmd(rc, "XRANGE bb:inbox:%" PRIu64 " - +", u);
        assert_int_equal(r->elements, 1);
        redisReply *f = r->element[0]->element[1];
        assert_int_equal(f->elements, 4);
        assert_string_equal(f->element[0]->str, "id");
        char id[64];
        snprintf(id, sizeof(id), "r:n1:3:%" PRIu64, u);
        assert_string_equal(f->element[1]->str, id);
        assert_string_equal(f->element[2]->str, "p");
        json_object *o = json_tokener_parse(f->element[3]->str);
        assert_non_null(o);
        check_notification(o);
        json_object_put(o);
        freeReplyObject(r);
    }

    /* The live feed: three messages, one per user, the same JSON. */
    struct timeval tv = {5, 0};
    redisSetTimeout(sub, tv);
    unsigned seen = 0;
    for (int i = 0; i < 3; i++) {
        void *vr = NULL;
        assert_int_equal(redisGetReply(sub, &vr), REDIS_OK);
        r = vr;
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        assert_int_equal(r->elements, 4);
        assert_string_equal(r->element[0]->str, "pmessage");
        unsigned u = 0;
        assert_int_equal(sscanf(r->element[2]->str, "bb:inbox-live:%u", &u), 1);
        assert_true(u >= 1 && u <= 3);
        seen |= 1u << u;
        json_object *o = json_tokener_parse(r->element[3]->str);
        assert_non_null(o);
        check_notification(o);
        json_object_put(o);
        freeReplyObject(r);
    }
    assert_int_equal(seen, 0xe);
    redisFree(sub);

    /* Webhook: 1 and 4 once, 2 once (410), 3 twice (503 then 200). */
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[16384];
    unsigned ok[5] = {0}, gone = 0, unavailable = 0;
    while (fgets(line, sizeof(line), f)) {
        json_object *o = json_tokener_parse(line), *h, *v;
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "headers", &h));
        assert_true(json_object_object_get_ex(o, "status", &v));
        int status = json_object_get_int(v);
        assert_string_equal(jstr(o, "path"), "/hook");
        const char *body = jstr(o, "body");
        const char *delivery = jstr(h, "x-buurtbus-delivery");
        assert_string_equal(jstr(h, "idempotency-key"), delivery);
        assert_string_equal(jstr(h, "content-type"), "application/json");
        /* The signature verifies with the shared secret. */
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned maclen = 0;
        assert_non_null(HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)body,
                             strlen(body), mac, &maclen));
        char want[80] = "sha256=";
        for (unsigned i = 0; i < maclen; i++) {
            snprintf(want + 7 + 2 * i, 3, "%02x", mac[i]);
        }
        assert_string_equal(jstr(h, "x-buurtbus-signature"), want);
        json_object *b = json_tokener_parse(body);
        assert_non_null(b);
        check_notification(b);
        assert_string_equal(jstr(b, "delivery_id"), delivery);
        assert_string_equal(jstr(b, "recipient_kind"), "user");
        json_object_put(b);
        unsigned u = 0;
        assert_int_equal(sscanf(delivery, "r:n1:1:%u", &u), 1);
        assert_true(u >= 1 && u <= 4);
        ok[u] += status == 200;
        gone += status == 410 && u == 2;
        unavailable += status == 503 && u == 3;
        json_object_put(o);
    }
    fclose(f);
    assert_int_equal(ok[1], 1);
    assert_int_equal(ok[2], 0);
    assert_int_equal(ok[3], 1);
    assert_int_equal(ok[4], 1);
    assert_int_equal(gone, 1);
    assert_int_equal(unavailable, 1);

    /* Receipts: 3 inbox + 3 webhook ok, one retry http_503, one permanent http_410. */
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_OK, NULL, NULL), 6);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_RETRY, "r:n1:1:3", "http_503"), 1);
    assert_int_equal(bb_kit_receipts(rc, BB__OUTCOME__OUTCOME_PERMANENT, "r:n1:1:2", "http_410"),
                     1);

    /* The gone address is a dead letter. */
    assert_int_equal(bb_kit_int(rc, "XLEN bb:dead"), 1);
    assert_int_equal(bb_kit_dead(rc, "http_410"), 1);
    /* GONE, not just PERMANENT: the address is removed from the user's
     * record, the others' stay, and the directory hears of it. */
    assert_int_equal(bb_kit_int(rc, "HEXISTS bb:user:2 push_token"), 0);
    assert_int_equal(bb_kit_int(rc, "HEXISTS bb:user:2 push_platform"), 0);
    assert_int_equal(bb_kit_int(rc, "HEXISTS bb:user:1 push_token"), 1);
    assert_int_equal(bb_kit_int(rc, "HEXISTS bb:user:3 push_token"), 1);
    r = bb_kit_cmd(rc, "XRANGE bb:directory - +");
    assert_int_equal(r->elements, 1);
    redisReply *fr = r->element[0]->element[1];
    assert_string_equal(fr->element[0]->str, "p");
    Bb__DirectoryEvent *ev = bb__directory_event__unpack(NULL, fr->element[1]->len,
                                                         (const uint8_t *)fr->element[1]->str);
    assert_non_null(ev);
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_CONTACT_GONE);
    assert_int_equal(ev->contact_gone->user_id, 2);
    assert_string_equal(ev->contact_gone->field, "push_token");
    assert_string_equal(ev->contact_gone->reason, "http_410");
    bb__directory_event__free_unpacked(ev, NULL);
    freeReplyObject(r);
}

/* format() output and option checks through --check-config. */
static void config_checks(void **state)
{
    char secret[512];
    assert_non_null(bb_harness_write_file(secret, sizeof(secret), "check.secret", SECRET "\n"));
    char ok_webhook[1024], no_secret[1024];
    snprintf(ok_webhook, sizeof(ok_webhook),
             "channels inbox,webhook\nchannel.inbox.plugin inbox\nchannel.webhook.plugin webhook\n"
             "channel.webhook.url http://127.0.0.1:1/\nchannel.webhook.secret_file \"%s\"\n",
             secret);
    snprintf(no_secret, sizeof(no_secret),
             "channels webhook\nchannel.webhook.plugin webhook\n"
             "channel.webhook.url http://127.0.0.1:1/\n");
    const struct bb_kit_check cases[] = {
        {ok_webhook, 0, "configuration ok"},
        {no_secret, 1, "channel.webhook.secret_file: required"},
        {"channels inbox\nchannel.inbox.plugin inbox\nchannel.inbox.max_items 0\n", 1,
         "max_items: must be at least 1"},
    };
    bb_kit_check_configs(BB_WORKER_PATH, BB_PLUGIN_DIR, cases, sizeof(cases) / sizeof(cases[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(inbox_and_webhook),
        cmocka_unit_test(config_checks),
    };
    int failures = cmocka_run_group_tests(tests, setup, teardown);
    bb_harness_finish(failures != 0);
    return failures;
}
