/* Redis least privilege end to end (deploy/redis/): the ACL file
 * make-acl.sh writes from users.acl.in, loaded by a redis-server started
 * with deploy/redis/redis.conf, and every program authenticating as its
 * own user:
 *
 * - acl_refuses: without AUTH nothing runs (NOAUTH); each user is refused
 *   (NOPERM) what it must not do: the worker cannot post reports, write
 *   contact data, FLUSHALL or CONFIG GET, nor reach other keys from a
 *   script; the broker cannot SCRIPT FLUSH, KEYS or read the batches it
 *   wrote (not from a script either); the app cannot read worker state, the outputs or dead
 * letters, nor write receipts or batches.
 * - acl_end_to_end: buurtbusctl loads the directory as buurtbus-ctl; the
 *   app (buurtbus-app) stores contact data, changes the directory (a
 *   follow and an unfollow: its EVAL) and posts reports; the real broker
 *   and worker route and deliver (file plug-in on push, the inbox plug-in,
 *   a digest collected and sent, retries parked in Redis), so every
 *   command and Lua script of theirs runs under its user. Redis' ACL LOG
 *   must stay empty through it: no program was refused anything. The
 *   passwords never appear in the logs or in any process' argv.
 * - acl_user_needs_password: redis_user (--redis-user) without a password
 *   file is refused by the broker's and the worker's --check-config and
 *   by buurtbusctl.
 *
 * The passwords and the ACL file live in a directory of their own (the
 * file must exist before redis-server starts), removed after a passing
 * run.
 *
 * Threads: the test's main thread only; the programs are child processes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "worker_kit.h"

#define FIRST_USER 201
#define NUSERS 4

enum who { BROKER, WORKER, CTL, APP, ADMIN, NWHO };
static const char *const who_file[NWHO] = {"broker", "worker", "ctl", "app", "admin"};
static const char *const who_user[NWHO] = {"buurtbus-broker", "buurtbus-worker", "buurtbus-ctl",
                                           "buurtbus-app", "buurtbus-admin"};

static char secrets[256];        /* the passwords, the ACL file, the config */
static char password[NWHO][128]; /* first line of each password file */
static const struct bb_redis_server *srv;
static redisContext *admin; /* buurtbus-admin: the test's own look at Redis */
static pid_t broker_pid, worker_pid;

/* ---- helpers ----------------------------------------------------------------------------- */

static char *secret_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", secrets, name);
    return buf;
}

static char *password_file(char *buf, size_t cap, enum who w)
{
    char name[64];
    snprintf(name, sizeof(name), "%s.password", who_file[w]);
    return secret_path(buf, cap, name);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A connection authenticated as w's user; asserts AUTH succeeded. */
static redisContext *connect_as(enum who w)
{
    redisContext *c = bb_harness_redis_connect(srv);
    assert_non_null(c);
    redisReply *r = redisCommand(c, "AUTH %s %s", who_user[w], password[w]);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_STATUS) {
        fprintf(stderr, "AUTH %s: %s\n", who_user[w], r->str);
    }
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    return c;
}

/* The command (hiredis format) is refused with an error starting with
 * prefix (NOPERM, NOAUTH, WRONGPASS, ...). */
static void refused(redisContext *c, const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_ERROR || strncmp(r->str, prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "'%s': expected %s, got type %d '%s'\n", fmt, prefix, r->type,
                r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STRING ? r->str : "");
        fail();
    }
    freeReplyObject(r);
}

/* The command is allowed (any reply but an error). */
static void allowed(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "'%s': %s\n", fmt, r->str);
        fail();
    }
    freeReplyObject(r);
}

/* buurtbusctl as user w: --redis-user, --password-file, then args. Returns
 * the exit status; stderr in err (may be NULL). */
static int ctl_as(enum who w, const char *const args[], char *err, size_t cap)
{
    char pwfile[512];
    password_file(pwfile, sizeof(pwfile), w);
    const char *argv[16] = {BB_CTL_PATH, "--redis",         srv->addr, "--redis-user",
                            who_user[w], "--password-file", pwfile};
    size_t n = 7;
    for (size_t i = 0; args[i] && n < 15; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    struct bb_run_result res;
    assert_int_equal(bb_harness_run(argv, NULL, 30, &res), 0);
    if (err) {
        snprintf(err, cap, "%s", res.err);
    }
    int status = res.status;
    if (status != 0) {
        fprintf(stderr, "buurtbusctl %s as %s: %d\n%s\n%s\n", args[0], who_user[w], status, res.out,
                res.err);
    }
    bb_run_result_free(&res);
    return status;
}

/* Fails if text holds the password of any user. */
static void refuse_passwords(const char *what, const char *text, size_t len)
{
    for (int w = 0; w < NWHO; w++) {
        if (memmem(text, len, password[w], strlen(password[w]))) {
            fprintf(stderr, "%s holds the password of %s\n", what, who_user[w]);
            fail();
        }
    }
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* A process' argv (/proc/<pid>/cmdline) holds no password. */
static void argv_clean(const char *what, pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    size_t len;
    char *text = slurp(path, &len);
    assert_true(len > 0);
    refuse_passwords(what, text, len);
    free(text);
}

static void log_clean(const char *name)
{
    char path[512];
    size_t len;
    char *text = slurp(bb_harness_path(path, sizeof(path), name), &len);
    refuse_passwords(name, text, len);
    /* No program met a refusal it logged. */
    if (strstr(text, "NOPERM") || strstr(text, "no permissions")) {
        fprintf(stderr, "%s mentions a refusal:\n%s\n", name, text);
        fail();
    }
    free(text);
}

static unsigned count_lines(const char *name)
{
    char path[512];
    bb_harness_path(path, sizeof(path), name);
    FILE *f = fopen(path, "r");
    unsigned n = 0;
    int ch;
    while (f && (ch = fgetc(f)) != EOF) {
        n += ch == '\n';
    }
    if (f) {
        fclose(f);
    }
    return n;
}

static bool wait_int_at_least(long long want, int timeout_ms, const char *fmt, const char *arg)
{
    for (int t = 0; t < timeout_ms; t += 20) {
        if (bb_kit_int(admin, fmt, arg) >= want) {
            return true;
        }
        bb_harness_sleep_ms(20);
    }
    return false;
}

/* ---- the cases --------------------------------------------------------------------------- */

static void acl_refuses(void **state)
{
    (void)state;
    /* No AUTH: nothing. The default user is off, with or without a password. */
    redisContext *c = bb_harness_redis_connect(srv);
    assert_non_null(c);
    refused(c, "NOAUTH", "PING");
    refused(c, "NOAUTH", "XADD bb:reports * p x");
    refused(c, "WRONGPASS", "AUTH %s", "");
    refused(c, "WRONGPASS", "AUTH default %s", "anything");
    refused(c, "WRONGPASS", "AUTH buurtbus-worker %s", password[BROKER]);
    redisFree(c);

    c = connect_as(WORKER);
    refused(c, "NOPERM", "XADD bb:reports * p x");
    refused(c, "NOPERM", "XADD bb:out:push * p x");
    refused(c, "NOPERM", "FLUSHALL");
    refused(c, "NOPERM", "CONFIG GET maxmemory");
    refused(c, "NOPERM", "KEYS *");
    refused(c, "NOPERM", "SCRIPT FLUSH");
    refused(c, "NOPERM", "FUNCTION FLUSH");
    refused(c, "NOPERM", "HSET bb:user:%d email %s", FIRST_USER, "evil@example.org");
    refused(c, "NOPERM", "XRANGE bb:dead - +");
    refused(c, "NOPERM", "PUBLISH bb:reports x");
    /* A script runs with the caller's rights, key by key: a permitted key
     * in KEYS does not open the others. */
    allowed(c, "EVAL %s 1 %s", "return redis.call('ZCARD', KEYS[1])", "bb:later:acl");
    redisReply *r =
        redisCommand(c, "EVAL %s 1 %s", "return redis.call('XADD', 'bb:reports', '*', 'p', 'x')",
                     "bb:later:acl");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "can't access at least one of the keys"));
    freeReplyObject(r);
    r = redisCommand(c, "EVAL %s 1 %s", "return redis.call('FLUSHALL')", "bb:later:acl");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "can't run this command"));
    freeReplyObject(r);
    refused(c, "NOPERM", "EVAL %s 1 %s", "return 1", "bb:reports");
    /* The gone script's shape (workers/host/stream.c): a dead address
     * removed and the event appended, under the worker's rights. */
    freeReplyObject(bb_kit_cmd(admin, "HSET bb:user:999 email gone@example.org u x"));
    r = redisCommand(c, "EVAL %s 2 bb:user:999 bb:directory email gone@example.org p",
                     "if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end\n"
                     "redis.call('HDEL', KEYS[1], ARGV[1])\n"
                     "redis.call('XADD', KEYS[2], '*', 'p', ARGV[3])\n"
                     "return 1\n");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    assert_int_equal(bb_kit_int(admin, "HEXISTS bb:user:999 email"), 0);
    /* (not a real event: gone before any broker reads the stream) */
    assert_int_equal(bb_kit_int(admin, "DEL bb:user:999 bb:directory"), 2);
    redisFree(c);

    c = connect_as(BROKER);
    refused(c, "NOPERM", "SCRIPT FLUSH");
    refused(c, "NOPERM", "SCRIPT KILL");
    refused(c, "NOPERM", "KEYS *");
    refused(c, "NOPERM", "FLUSHDB");
    refused(c, "NOPERM", "EVAL %s 1 %s", "return 1", "bb:user:1");
    /* Not even a script reads a batch's content back. */
    r = redisCommand(c, "EVAL %s 1 %s", "return redis.call('XRANGE', KEYS[1], '-', '+')",
                     "bb:out:push");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "can't access at least one of the keys"));
    freeReplyObject(r);
    refused(c, "NOPERM", "XRANGE bb:out:push - +"); /* it writes batches, never reads them */
    refused(c, "NOPERM", "HSET bb:user:%d u x", FIRST_USER);
    refused(c, "NOPERM", "HGETALL bb:user:%d", FIRST_USER);
    /* (It may XADD to its own input: the console's replay of a dead letter.) */
    refused(c, "NOPERM", "XADD bb:directory * p x");
    refused(c, "NOPERM", "XADD bb:receipts * p x");
    refused(c, "NOPERM", "GET bb:sent:push:x");
    redisFree(c);

    c = connect_as(APP);
    /* The app owns contact data and shows people their inbox ... */
    allowed(c, "HSET bb:user:%d email %s", FIRST_USER, "app-test@example.org");
    allowed(c, "HDEL bb:user:%d email", FIRST_USER);
    allowed(c, "XREVRANGE bb:inbox:%d + - COUNT 10", FIRST_USER);
    allowed(c, "PING");
    /* ... but sees nothing of the pipeline and cannot forge its output. */
    refused(c, "NOPERM", "XRANGE bb:out:inbox - +");
    refused(c, "NOPERM", "XRANGE bb:dead - +");
    refused(c, "NOPERM", "XRANGE bb:reports - +");
    refused(c, "NOPERM", "HGETALL bb:collect:digest:u%d", FIRST_USER);
    refused(c, "NOPERM", "GET bb:sent:push:x");
    refused(c, "NOPERM", "ZRANGE bb:later:email 0 -1");
    refused(c, "NOPERM", "XADD bb:receipts * p x");
    refused(c, "NOPERM", "XADD bb:out:push * p x");
    refused(c, "NOPERM", "XADD bb:inbox:%d * p x", FIRST_USER);
    refused(c, "NOPERM", "PUBLISH bb:inbox-live:%d x", FIRST_USER);
    refused(c, "NOPERM", "CONFIG GET maxmemory");
    refused(c, "NOPERM", "FLUSHALL");
    redisFree(c);

    c = connect_as(CTL);
    refused(c, "NOPERM", "CONFIG GET maxmemory");
    refused(c, "NOPERM", "FLUSHALL");
    refused(c, "NOPERM", "SHUTDOWN");
    refused(c, "NOPERM", "KEYS *");
    /* (It may XADD to bb:out:*: dead replay puts a batch back.) */
    refused(c, "NOPERM", "XADD bb:inbox:%d * p x", FIRST_USER);
    refused(c, "NOPERM", "XADD bb:receipts * p x");
    redisFree(c);

    /* buurtbusctl --redis-user: the worker's user cannot post. */
    char err[4096];
    const char *post[] = {"post", "--no-validate", "{\"id\":\"x\"}", NULL};
    assert_int_equal(ctl_as(WORKER, post, err, sizeof(err)), 1);
    assert_non_null(strstr(err, "NOPERM"));
}

static void load_directory(void)
{
    static char text[8192];
    size_t n = 0;
    n += (size_t)snprintf(text + n, sizeof(text) - n,
                          "{\"group\":{\"id\":1,\"name\":\"Centrum\",\"cells\":[\"u15y0\"],"
                          "\"location_precision\":7}}\n");
    for (int k = 0; k < NUSERS; k++) {
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "{\"user\":{\"id\":%d,\"screen_name\":\"Buur%d\",\"locale\":\"nl\","
                              "\"time_zone\":\"Europe/Amsterdam\",\"prefs\":{\"in_progress\":"
                              "[\"push\",\"inbox\",\"email\",\"digest\"]}}}\n"
                              "{\"member\":{\"user\":%d,\"group\":1}}\n",
                              FIRST_USER + k, FIRST_USER + k, FIRST_USER + k);
    }
    char path[512];
    assert_non_null(bb_harness_write_file(path, sizeof(path), "dir.jsonl", text));
    const char *load[] = {"load", path, NULL};
    assert_int_equal(ctl_as(CTL, load, NULL, 0), 0);
}

/* What the app does: contact data, a directory change of its own (follow,
 * then unfollow: the clean-up script), and reports. */
static void app_work(void)
{
    redisContext *c = connect_as(APP);
    for (int k = 0; k < NUSERS; k++) {
        redisReply *r = redisCommand(c,
                                     "HSET bb:user:%d email user%d@prive.example push_token "
                                     "TOKEN-%d push_platform file",
                                     FIRST_USER + k, FIRST_USER + k, FIRST_USER + k);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        freeReplyObject(r);
    }
    redisFree(c);
    char path[512];
    assert_non_null(bb_harness_write_file(path, sizeof(path), "follow.jsonl",
                                          "{\"follow\":{\"user\":201,\"report\":\"acl-0\"}}\n"
                                          "{\"unfollow\":{\"user\":201,\"report\":\"acl-0\"}}\n"));
    const char *load[] = {"load", path, NULL};
    assert_int_equal(ctl_as(APP, load, NULL, 0), 0);
    assert_int_equal(bb_kit_int(admin, "SISMEMBER bb:follows acl-0"), 0);
}

static void post_reports(void)
{
    static char text[2048];
    size_t n = 0;
    for (int i = 1; i <= 2; i++) {
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "{\"id\":\"acl-%d\",\"author_id\":%d,\"author_screen_name\":"
                              "\"Buur%d\",\"group_id\":1,\"lat\":51.6901,\"lon\":5.3019,"
                              "\"category\":\"burglary\",\"urgency\":\"in_progress\","
                              "\"source\":\"resident\",\"text\":\"Inbraak %d\","
                              "\"anonymity\":\"screen_name\",\"locale\":\"nl\"}\n",
                              i, FIRST_USER + NUSERS - 1, FIRST_USER + NUSERS - 1, i);
    }
    char path[512];
    assert_non_null(bb_harness_write_file(path, sizeof(path), "reports.jsonl", text));
    const char *post[] = {"post", "--file", path, NULL};
    assert_int_equal(ctl_as(APP, post, NULL, 0), 0);
}

static void start_broker(void)
{
    char text[1536], pwfile[512];
    password_file(pwfile, sizeof(pwfile), BROKER);
    snprintf(text, sizeof(text),
             "redis %s\nredis_user buurtbus-broker\nredis_password_file \"%s\"\n"
             "name broker-acl\nrouter_threads 1\nblock 200ms\nclaim_idle 1s\n"
             "claim_interval 300ms\ndict_check 1s\nmetrics_addr \"\"\nlog_level debug\n",
             srv->addr, pwfile);
    broker_pid = bb_kit_spawn(BB_BROKER_PATH, "broker.conf", text, "broker.log");
}

static void start_worker(void)
{
    char conf[4096], pwfile[512], push[512], digest[512];
    password_file(pwfile, sizeof(pwfile), WORKER);
    bb_harness_path(push, sizeof(push), "push.jsonl");
    bb_harness_path(digest, sizeof(digest), "digest.jsonl");
    /* email writes to /dev/full: every send fails for retry, and the
     * retries are parked in bb:later:email (the park script). */
    snprintf(conf, sizeof(conf),
             "redis %s\nredis_user buurtbus-worker\nredis_password_file \"%s\"\n"
             "name w-acl\nplugin_dir \"%s\"\nblock 100ms\nlog_level debug\nlater_poll 50ms\n"
             "claim_idle 1s\nclaim_interval 200ms\n"
             "retry_min 2s\nretry_max 5s\nchannels push,inbox,email,digest\n"
             "channel.push.plugin file\nchannel.push.path \"%s\"\n"
             "channel.inbox.plugin inbox\n"
             "channel.email.plugin file\nchannel.email.path /dev/full\n"
             "channel.digest.plugin file\nchannel.digest.path \"%s\"\n"
             "channel.digest.collect user\n",
             srv->addr, pwfile, BB_PLUGIN_DIR, push, digest);
    worker_pid = bb_kit_spawn_worker(BB_WORKER_PATH, conf, "worker.log");
}

/* bb:reports read and acked by the broker. */
static bool broker_drained(void)
{
    return bb_kit_int(admin, "XLEN bb:reports") == 2 &&
           bb_harness_stream_unfinished(admin, "bb:reports", "bb-brokers") == 0;
}

static void acl_end_to_end(void **state)
{
    (void)state;
    freeReplyObject(bb_kit_cmd(admin, "ACL LOG RESET"));
    load_directory();
    app_work();
    start_broker();
    start_worker();
    post_reports();

    bool drained = false;
    for (int i = 0; i < 400 && !drained; i++) {
        drained = broker_drained();
        bb_harness_sleep_ms(50);
    }
    assert_true(drained);
    assert_int_equal(bb_kit_int(admin, "XLEN bb:dead"), 0);
    for (int i = 0; i < 4; i++) {
        static const char *const out[] = {"bb:out:push", "bb:out:inbox", "bb:out:email",
                                          "bb:out:digest"};
        assert_true(bb_kit_int(admin, "XLEN %s", out[i]) >= 1);
    }

    /* push and inbox delivered, the digest collected. */
    long long left = -1;
    for (int i = 0; i < 400 && left != 0; i++) {
        left = bb_harness_worker_unfinished(admin, "bb:out:push", "bb-workers", "push") +
               bb_harness_worker_unfinished(admin, "bb:out:inbox", "bb-workers", "inbox") +
               bb_harness_stream_unfinished(admin, "bb:out:digest", "bb-workers");
        bb_harness_sleep_ms(50);
    }
    assert_int_equal(left, 0);
    assert_true(count_lines("push.jsonl") >= NUSERS);
    char key[64];
    snprintf(key, sizeof(key), "bb:inbox:%d", FIRST_USER);
    assert_int_equal(bb_kit_int(admin, "XLEN %s", key), 2);
    redisContext *app = connect_as(APP);
    redisReply *r = redisCommand(app, "XREVRANGE %s + - COUNT 10", key);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    freeReplyObject(r);
    redisFree(app);

    /* The digest: collected (the collect script), then made due now: taken
     * (the take script), sent, and closed (the flushed script). */
    snprintf(key, sizeof(key), "bb:collect:digest:u%d", FIRST_USER);
    assert_true(wait_int_at_least(2, 10000, "HLEN %s", key));
    assert_int_equal(count_lines("digest.jsonl"), 0);
    freeReplyObject(bb_kit_cmd(admin, "ZADD bb:later:digest 0 c:u%d", FIRST_USER));
    for (int t = 0; t < 10000 && count_lines("digest.jsonl") == 0; t += 20) {
        bb_harness_sleep_ms(20);
    }
    assert_int_equal(count_lines("digest.jsonl"), 1);

    /* email: retries parked in Redis (the park script). */
    assert_true(wait_int_at_least(1, 10000, "ZCARD %s", "bb:later:email"));
    assert_true(wait_int_at_least(1, 10000, "HLEN %s", "bb:later:email:jobs"));

    /* No password in any argv, while they run. */
    argv_clean("broker argv", broker_pid);
    argv_clean("worker argv", worker_pid);
    argv_clean("redis-server argv", srv->pid);

    /* The operator's read-only commands, as buurtbus-ctl. */
    static const char *const snapshot[] = {"snapshot", NULL};
    static const char *const dead[] = {"dead", NULL};
    static const char *const outputs[] = {"outputs", NULL};
    static const char *const dict[] = {"dict", "show", NULL};
    static const char *const *const reads[] = {snapshot, dead, outputs, dict};
    for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
        assert_int_equal(ctl_as(CTL, reads[i], NULL, 0), 0);
    }

    /* Nothing any program did was refused, periodic work included (the
     * claim ticks: XAUTOCLAIM, XINFO GROUPS, ZCARD; the broker's
     * dictionary check). */
    bb_harness_sleep_ms(1500);
    r = bb_kit_cmd(admin, "ACL LOG");
    if (r->elements) {
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *e = r->element[i];
            for (size_t k = 0; k + 1 < e->elements; k += 2) {
                if (e->element[k + 1]->type == REDIS_REPLY_STRING) {
                    fprintf(stderr, "%s=%s ", e->element[k]->str, e->element[k + 1]->str);
                }
            }
            fprintf(stderr, "\n");
        }
    }
    assert_int_equal(r->elements, 0);
    freeReplyObject(r);

    int st = bb_kit_stop(&worker_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    st = bb_kit_stop(&broker_pid, SIGTERM, BB_KIT_STOP_MS);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    log_clean("broker.log");
    log_clean("worker.log");
    log_clean("redis.log");

    /* Erasure, as buurtbus-ctl: the directory, the inbox, the collection,
     * the parked retries and records of one person go; nothing refused. */
    char id[16];
    snprintf(id, sizeof(id), "%d", FIRST_USER);
    const char *erase[] = {"erase-user", "--settle", "0", id, NULL};
    assert_int_equal(ctl_as(CTL, erase, NULL, 0), 0);
    assert_int_equal(bb_kit_int(admin, "EXISTS bb:user:%d bb:inbox:%d", FIRST_USER, FIRST_USER), 0);
    r = bb_kit_cmd(admin, "ACL LOG");
    assert_int_equal(r->elements, 0);
    freeReplyObject(r);
    /* The logs do say who connected: the user name is not a secret. */
}

/* A user without a password is a configuration error, not a silent
 * connection as nobody. */
static void run_refused(const char *const argv[], const char *says)
{
    struct bb_run_result res;
    assert_int_equal(bb_harness_run(argv, NULL, 30, &res), 0);
    if (res.status == 0 || !strstr(res.err, says)) {
        fprintf(stderr, "%s: %d\n%s\n%s\n", argv[0], res.status, res.out, res.err);
    }
    assert_int_not_equal(res.status, 0);
    assert_non_null(strstr(res.err, says));
    bb_run_result_free(&res);
}

static void acl_user_needs_password(void **state)
{
    (void)state;
    char conf[512], text[1024];
    snprintf(text, sizeof(text), "redis %s\nredis_user buurtbus-broker\n", srv->addr);
    assert_non_null(bb_harness_write_file(conf, sizeof(conf), "nopass-broker.conf", text));
    const char *broker[] = {BB_BROKER_PATH, "-c", conf, "--check-config", NULL};
    run_refused(broker, "redis_user buurtbus-broker needs redis_password_file");

    snprintf(text, sizeof(text),
             "redis %s\nredis_user buurtbus-worker\nplugin_dir \"%s\"\nchannels push\n"
             "channel.push.plugin file\nchannel.push.path /dev/null\n",
             srv->addr, BB_PLUGIN_DIR);
    assert_non_null(bb_harness_write_file(conf, sizeof(conf), "nopass-worker.conf", text));
    const char *worker[] = {BB_WORKER_PATH, "-c", conf, "--check-config", NULL};
    run_refused(worker, "redis_user buurtbus-worker needs redis_password_file");

    const char *ctl[] = {BB_CTL_PATH,    "--redis", srv->addr, "--redis-user",
                         "buurtbus-ctl", "dead",    NULL};
    run_refused(ctl, "--redis-user buurtbus-ctl needs --password-file");
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(secrets, sizeof(secrets), "%s/bb-acl-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(secrets)) {
        fprintf(stderr, "mkdtemp %s: %s\n", secrets, strerror(errno));
        return -1;
    }
    /* The admin's password by hand (make-acl.sh -n makes only the four
     * programs' ones); 24 random bytes, hex. */
    char path[512], acl[512], conf[512];
    unsigned char raw[24];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(raw, 1, sizeof(raw), f) != sizeof(raw)) {
        return -1;
    }
    fclose(f);
    f = fopen(password_file(path, sizeof(path), ADMIN), "w");
    if (!f) {
        return -1;
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        fprintf(f, "%02x", raw[i]);
    }
    fputc('\n', f);
    fclose(f);

    secret_path(acl, sizeof(acl), "users.acl");
    const char *make[] = {"/bin/sh", BB_REDIS_DEPLOY_DIR "/make-acl.sh", "-n", secrets, acl, NULL};
    struct bb_run_result res;
    if (bb_harness_run(make, NULL, 30, &res) != 0 || res.status != 0) {
        fprintf(stderr, "make-acl.sh: %d\n%s\n%s\n", res.status, res.out, res.err);
        return -1;
    }
    bb_run_result_free(&res);
    for (int w = 0; w < NWHO; w++) {
        f = fopen(password_file(path, sizeof(path), w), "r");
        if (!f || !fgets(password[w], sizeof(password[w]), f)) {
            return -1;
        }
        fclose(f);
        password[w][strcspn(password[w], "\r\n")] = '\0';
    }
    /* Only hashes in the ACL file. */
    size_t len;
    char *text = slurp(acl, &len);
    refuse_passwords("users.acl", text, len);
    free(text);

    /* deploy/redis/redis.conf as it is, but for "dir" (Redis changes into
     * it while reading the file; the harness gives its own after). */
    FILE *in = fopen(BB_REDIS_DEPLOY_DIR "/redis.conf", "r");
    FILE *out = fopen(secret_path(conf, sizeof(conf), "redis.conf"), "w");
    if (!in || !out) {
        return -1;
    }
    char line[1024];
    while (fgets(line, sizeof(line), in)) {
        if (strncmp(line, "dir ", 4) != 0) {
            fputs(line, out);
        }
    }
    fclose(in);
    fclose(out);

    static char aclarg[512];
    snprintf(aclarg, sizeof(aclarg), "%s", acl);
    const char *extra[] = {"--aclfile", aclarg, "--maxmemory", "256mb", NULL};
    srv = bb_harness_redis_start_ex(conf, extra);
    if (!srv) {
        return -1;
    }
    admin = bb_harness_redis_connect(srv);
    if (!admin) {
        return -1;
    }
    redisReply *r = redisCommand(admin, "AUTH %s %s", who_user[ADMIN], password[ADMIN]);
    bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (!ok) {
        fprintf(stderr, "AUTH as admin: %s\n", r ? r->str : admin->errstr);
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (worker_pid > 0) {
        bb_kit_stop(&worker_pid, SIGKILL, BB_KIT_STOP_MS);
    }
    if (broker_pid > 0) {
        bb_kit_stop(&broker_pid, SIGKILL, BB_KIT_STOP_MS);
    }
    if (admin) {
        redisFree(admin);
        admin = NULL;
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(acl_refuses),
        cmocka_unit_test(acl_end_to_end),
        cmocka_unit_test(acl_user_needs_password),
    };
    int failures = cmocka_run_group_tests(tests, setup, teardown);
    bb_harness_finish(failures != 0);
    if (secrets[0] && failures == 0) {
        nftw(secrets, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    } else if (secrets[0]) {
        fprintf(stderr, "test_acl: kept %s (passwords, users.acl, redis.conf)\n", secrets);
    }
    return failures;
}
