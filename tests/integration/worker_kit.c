/* Worker test kit (see worker_kit.h): Redis commands, DeliveryBatch
 * packing, the worker as a child process, receipts and dead letters, each
 * checked with cmocka.
 *
 * Threads: the test's main thread only; no state of its own. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "worker_kit.h"

#define MAX_RECIPIENTS 512
#define STOP_POLL_MS 50

/* ---- fixtures ---------------------------------------------------------------------------- */

int bb_kit_setup(const struct bb_redis_server **srv, redisContext **rc)
{
    *srv = bb_harness_redis_start();
    if (!*srv) {
        return -1;
    }
    *rc = bb_harness_redis_connect(*srv);
    return *rc ? 0 : -1;
}

void bb_kit_teardown(redisContext **rc, pid_t *worker, pid_t *stand_in)
{
    if (worker) {
        bb_kit_stop(worker, SIGKILL, BB_KIT_STOP_MS);
    }
    if (stand_in) {
        bb_kit_stop(stand_in, SIGTERM, BB_KIT_STOP_MS);
    }
    if (*rc) {
        redisFree(*rc);
        *rc = NULL;
    }
}

/* ---- Redis ------------------------------------------------------------------------------- */

redisReply *bb_kit_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    return r;
}

long long bb_kit_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

void bb_kit_xadd(redisContext *c, const char *stream, const void *p, size_t len)
{
    freeReplyObject(bb_kit_cmd(c, "XADD %s * p %b", stream, p, len));
}

/* ---- DeliveryBatch ----------------------------------------------------------------------- */

void bb_kit_report(Bb__Notification *nt, const char *report_id)
{
    bb__notification__init(nt);
    nt->schema_version = 1;
    nt->kind = BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT;
    nt->report_id = (char *)report_id;
    nt->time_ms = 1732800000000LL;
    nt->category = BB__CATEGORY__CATEGORY_BURGLARY;
    nt->urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    nt->source = BB__SOURCE__SOURCE_RESIDENT;
    nt->locale = "nl";
    nt->title = "Inbraak";
    nt->text = BB_KIT_TEXT;
    nt->author = "Jan";
    nt->cell = "u1hbcq7";
    nt->lat = 51.69;
    nt->lon = 5.30;
}

size_t bb_kit_batch(uint8_t *out, size_t cap, const Bb__Notification *nt,
                    const struct bb_kit_batch *b)
{
    size_t rawlen = bb__notification__get_packed_size(nt), zlen = 0;
    uint8_t *raw = malloc(rawlen + 1), *z = malloc(bb_zbound(rawlen));
    struct bb_zenc *enc = bb_zenc_new(3);
    assert_true(raw && z && enc);
    bb__notification__pack(nt, raw);
    assert_int_equal(bb_zenc_compress(enc, b->dict, raw, rawlen, z, bb_zbound(rawlen), &zlen), 0);
    bb_zenc_free(enc);
    free(raw);

    static uint64_t rcpt[MAX_RECIPIENTS];
    assert_true(b->n <= MAX_RECIPIENTS);
    for (size_t i = 0; i < b->n; i++) {
        rcpt[i] = b->first + i;
    }
    char key[128];
    if (b->key) {
        snprintf(key, sizeof(key), "%s", b->key);
    } else {
        snprintf(key, sizeof(key), "r:%s", nt->report_id);
    }
    Bb__DeliveryBatch db = BB__DELIVERY_BATCH__INIT;
    db.schema_version = 1;
    db.channel = b->channel;
    db.notification_key = key;
    db.locale = "nl";
    db.notification_zstd.data = z;
    db.notification_zstd.len = zlen;
    db.recipient_kind =
        b->recipient_kind ? b->recipient_kind : BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
    db.recipients = rcpt;
    db.n_recipients = b->n;
    db.batch_count = 1;
    db.urgency = nt->urgency;
    db.source_time_ms = b->source_time_ms;
    assert_true(bb__delivery_batch__get_packed_size(&db) <= cap);
    size_t len = bb__delivery_batch__pack(&db, out);
    free(z);
    return len;
}

void bb_kit_add_batch(redisContext *c, const char *stream, const Bb__Notification *nt,
                      const struct bb_kit_batch *b)
{
    static uint8_t buf[MAX_RECIPIENTS * 12 + 8192];
    bb_kit_xadd(c, stream, buf, bb_kit_batch(buf, sizeof(buf), nt, b));
}

/* ---- the worker -------------------------------------------------------------------------- */

pid_t bb_kit_spawn(const char *program, const char *conf_name, const char *conf,
                   const char *log_name)
{
    char cpath[512], logpath[512];
    assert_non_null(bb_harness_write_file(cpath, sizeof(cpath), conf_name, conf));
    bb_harness_path(logpath, sizeof(logpath), log_name);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(logpath, "a", stderr);
        (void)f;
        execl(program, program, "-c", cpath, (char *)NULL);
        _exit(127);
    }
    return pid;
}

pid_t bb_kit_spawn_worker(const char *worker, const char *conf, const char *log_name)
{
    return bb_kit_spawn(worker, "worker.conf", conf, log_name ? log_name : "worker.log");
}

pid_t bb_kit_stand_in(const char *script, const char *log_name, char *log, size_t cap, int *port)
{
    char portfile[512], name[256];
    snprintf(name, sizeof(name), "%s.port", log_name);
    bb_harness_path(portfile, sizeof(portfile), name);
    bb_harness_path(log, cap, log_name);
    unlink(log);
    *port = 0;
    pid_t pid = bb_harness_start_stand_in(script, portfile, log, port);
    assert_true(pid > 0 && *port > 0);
    return pid;
}

int bb_kit_stop(pid_t *pid, int sig, int timeout_ms)
{
    int st = 0;
    if (*pid <= 0) {
        return -1;
    }
    kill(*pid, sig);
    for (int t = 0; t < timeout_ms; t += STOP_POLL_MS) {
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
            *pid = 0;
            return st;
        }
        bb_harness_sleep_ms(STOP_POLL_MS);
    }
    kill(*pid, SIGKILL);
    waitpid(*pid, &st, 0);
    *pid = 0;
    return -1;
}

void bb_kit_check_config(const char *worker, const char *plugin_dir, const struct bb_kit_check *c)
{
    char conf[4096], cpath[512];
    int len = snprintf(conf, sizeof(conf), "redis 127.0.0.1:1\nplugin_dir \"%s\"\n%s", plugin_dir,
                       c->options);
    assert_true(len > 0 && (size_t)len < sizeof(conf));
    assert_non_null(bb_harness_write_file(cpath, sizeof(cpath), "check.conf", conf));
    const char *argv[] = {worker, "-c", cpath, "--check-config", NULL};
    struct bb_run_result res;
    assert_int_equal(bb_harness_run(argv, NULL, 30, &res), 0);
    if (res.status != c->status || (!strstr(res.out, c->says) && !strstr(res.err, c->says))) {
        print_error(
            "--check-config: status %d, wanted %d and \"%s\"\nconf:\n%s\nout: %s\nerr: %s\n",
            res.status, c->status, c->says, conf, res.out, res.err);
    }
    assert_int_equal(res.status, c->status);
    assert_true(strstr(res.out, c->says) || strstr(res.err, c->says));
    bb_run_result_free(&res);
}

void bb_kit_check_configs(const char *worker, const char *plugin_dir,
                          const struct bb_kit_check *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bb_kit_check_config(worker, plugin_dir, &cases[i]);
    }
}

/* ---- what the worker left ---------------------------------------------------------------- */

size_t bb_kit_receipts_read(redisContext *c, Bb__Receipt ***out)
{
    redisReply *r = bb_kit_cmd(c, "XRANGE bb:receipts - +");
    Bb__Receipt **rs = calloc(r->elements + 1, sizeof(*rs));
    assert_non_null(rs);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        assert_string_equal(f->element[0]->str, "p");
        rs[i] = bb__receipt__unpack(NULL, f->element[1]->len, (const uint8_t *)f->element[1]->str);
        assert_non_null(rs[i]);
    }
    size_t n = r->elements;
    freeReplyObject(r);
    *out = rs;
    return n;
}

void bb_kit_receipts_free(Bb__Receipt **rs, size_t n)
{
    for (size_t i = 0; rs && i < n; i++) {
        bb__receipt__free_unpacked(rs[i], NULL);
    }
    free(rs);
}

unsigned bb_kit_receipts(redisContext *c, int outcome, const char *delivery, const char *reason)
{
    Bb__Receipt **rs;
    size_t n = bb_kit_receipts_read(c, &rs);
    unsigned count = 0;
    for (size_t i = 0; i < n; i++) {
        count += (int)rs[i]->outcome == outcome &&
                 (!delivery || strcmp(rs[i]->delivery_id, delivery) == 0) &&
                 (!reason || strcmp(rs[i]->reason, reason) == 0);
    }
    bb_kit_receipts_free(rs, n);
    return count;
}

unsigned bb_kit_dead(redisContext *c, const char *reason)
{
    redisReply *r = bb_kit_cmd(c, "XRANGE bb:dead - +");
    unsigned count = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        assert_true(f->elements >= 2);
        assert_string_equal(f->element[0]->str, "reason");
        count += !reason || strcmp(f->element[1]->str, reason) == 0;
    }
    freeReplyObject(r);
    return count;
}
