/* Worker throughput benchmark: a backlog of DeliveryBatch entries in one
 * bb:out stream, the built buurtbus-worker draining it, and the figures of
 * that drain.
 *
 *   bench_worker load --redis ADDR --users N [--platform fcm]
 *       writes N users (bb:user:{id}: u <packed User>, push_token tok-{id},
 *       push_platform, email), pipelined.
 *   bench_worker run --redis ADDR --users N --batches B --recipients R
 *                    --worker PATH --conf FILE [--stream bb:out:push]
 *                    [--inst push] [--group bb-workers] [--sink-pid PID]
 *                    [--label TEXT] [--log FILE] [--timeout S] [--header]
 *                    [--perf FILE] [--preload LIB] [--workers K]
 *       empties the stream, writes B batches of R recipients (users spread
 *       over 1..N, a fresh report id per batch so every delivery id is
 *       new), creates the consumer group at 0, starts the worker with FILE,
 *       waits until every entry is acked and bb:later:<inst> is empty, and
 *       prints one Markdown table row (--header: the header first).
 *       --workers K starts K worker processes with the same config (its
 *       name left empty: each takes host-pid); CPU is their sum, RSS the
 *       largest.
 *       --perf FILE records the worker's call graphs during the drain
 *       (perf record -g -p PID), for perf report -i FILE.
 *
 * Timing: from the moment the group shows its first read entry (the worker
 * has loaded its plug-ins and started consuming) to the moment nothing is
 * unfinished (polled every 10 ms). Worker CPU (utime+stime) and peak RSS
 * (VmHWM) come from /proc just before it is stopped, so they include its
 * start; Redis CPU from INFO cpu, the sink's from /proc/<sink-pid>/stat,
 * both as differences over the run. Receipts are read back and counted by
 * outcome. The backlog is written before the worker starts, so a per-
 * delivery latency would only measure queueing: none is reported.
 *
 * Threads: one; the workers (and perf) are child processes, stopped
 * (SIGTERM, or SIGKILL when one failed) before it returns. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "report.pb-c.h"
#include "wire.h"
#include "stats.h"

#define PIPELINE 1000 /* commands per pipelined round */
#define MAX_WORKERS 16

struct opts {
    const char *redis;
    uint64_t users;
    const char *platform;
    uint64_t batches;
    uint64_t recipients;
    const char *worker;
    const char *conf;
    const char *stream;
    const char *inst;
    const char *group;
    const char *label;
    const char *log;
    const char *preload; /* LD_PRELOAD for the worker only (e.g. another malloc) */
    const char *perf; /* perf.data path: perf record -g on the worker during the drain */
    int sink_pid;
    unsigned workers; /* worker processes in the one consumer group */
    double timeout_s;
    bool header;
};

static redisContext *rc;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_worker: %s\n", what);
    exit(1);
}

static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    if (r == NULL) {
        die(rc->errstr);
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "bench_worker: redis: %s\n", r->str);
        exit(1);
    }
    return r;
}

static long long cmd_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        die("expected an integer reply");
    }
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* Reads n pipelined replies, failing on any error. */
static void drain(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        redisReply *r;
        if (redisGetReply(rc, (void **)&r) != REDIS_OK) {
            die(rc->errstr);
        }
        if (r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "bench_worker: redis: %s\n", r->str);
            exit(1);
        }
        freeReplyObject(r);
    }
}

static void connect_redis(const char *addr)
{
    char host[256];
    snprintf(host, sizeof(host), "%s", addr);
    char *colon = strrchr(host, ':');
    if (colon == NULL) {
        die("--redis takes HOST:PORT");
    }
    *colon = '\0';
    rc = redisConnect(host, atoi(colon + 1));
    if (rc == NULL || rc->err) {
        die(rc ? rc->errstr : "cannot connect to redis");
    }
}

/* ---- load ---------------------------------------------------------------------------------- */

static void load_users(const struct opts *o)
{
    size_t queued = 0;
    double t0 = now_s();
    for (uint64_t u = 1; u <= o->users; u++) {
        Bb__User user = BB__USER__INIT;
        user.id = u;
        user.screen_name = "buur";
        user.locale = u % 3 ? "nl" : "en";
        user.time_zone = "Europe/Amsterdam";
        uint8_t buf[256];
        size_t len = bb__user__pack(&user, buf);
        char tok[48], email[64];
        snprintf(tok, sizeof(tok), "tok-%" PRIu64, u);
        snprintf(email, sizeof(email), "user%" PRIu64 "@example.org", u);
        redisAppendCommand(rc, "HSET bb:user:%" PRIu64 " u %b push_token %s push_platform %s email %s",
                           u, buf, len, tok, o->platform, email);
        if (++queued == PIPELINE) {
            drain(queued);
            queued = 0;
        }
    }
    drain(queued);
    fprintf(stderr, "bench_worker: %" PRIu64 " users loaded in %.1f s\n", o->users, now_s() - t0);
}

/* ---- the backlog --------------------------------------------------------------------------- */

static size_t pack_notification(const char *report_id, uint8_t *buf)
{
    Bb__Notification n = BB__NOTIFICATION__INIT;
    n.schema_version = 1;
    n.kind = BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT;
    n.report_id = (char *)report_id;
    n.time_ms = wall_ms();
    n.category = BB__CATEGORY__CATEGORY_BURGLARY;
    n.urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    n.source = BB__SOURCE__SOURCE_RESIDENT;
    n.locale = "nl";
    n.title = "Inbraak";
    n.text = "Verdachte persoon bij de achterdeur, rond 23:10 richting het park gelopen";
    n.author = "Jan";
    n.cell = "u1hbcq7";
    n.lat = 51.69;
    n.lon = 5.30;
    return bb__notification__pack(&n, buf);
}

static void write_backlog(const struct opts *o, const char *tag)
{
    struct bb_zenc *z = bb_zenc_new(3);
    uint64_t *rcpt = malloc(o->recipients * sizeof(*rcpt));
    size_t cap = 64 + o->recipients * 11 + 4096;
    uint8_t *out = malloc(cap);
    if (z == NULL || rcpt == NULL || out == NULL) {
        die("out of memory");
    }
    size_t queued = 0;
    uint64_t next = 0;
    for (uint64_t i = 0; i < o->batches; i++) {
        char report[64], key[80];
        uint8_t raw[1024], zbuf[2048];
        size_t zlen = 0;
        snprintf(report, sizeof(report), "bench-%s-%" PRIu64, tag, i);
        snprintf(key, sizeof(key), "r:%s", report);
        size_t rawlen = pack_notification(report, raw);
        if (bb_zenc_compress(z, NULL, raw, rawlen, zbuf, sizeof(zbuf), &zlen) != 0) {
            die("zstd");
        }
        for (uint64_t j = 0; j < o->recipients; j++) {
            rcpt[j] = next % o->users + 1;
            next++;
        }
        Bb__DeliveryBatch b = BB__DELIVERY_BATCH__INIT;
        b.schema_version = 1;
        b.channel = BB__CHANNEL__CHANNEL_PUSH;
        b.notification_key = key;
        b.locale = "nl";
        b.notification_zstd.data = zbuf;
        b.notification_zstd.len = zlen;
        b.recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
        b.recipients = rcpt;
        b.n_recipients = o->recipients;
        b.batch_count = 1;
        b.urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
        b.source_time_ms = wall_ms();
        size_t len = bb__delivery_batch__get_packed_size(&b);
        if (len > cap) {
            die("batch too large");
        }
        bb__delivery_batch__pack(&b, out);
        redisAppendCommand(rc, "XADD %s * p %b", o->stream, out, len);
        if (++queued == 100) {
            drain(queued);
            queued = 0;
        }
    }
    drain(queued);
    free(out);
    free(rcpt);
    bb_zenc_free(z);
}

/* ---- what the run costs -------------------------------------------------------------------- */

static double redis_cpu_s(void)
{
    redisReply *r = cmd("INFO cpu");
    double sys = 0, user = 0;
    const char *p = strstr(r->str, "used_cpu_sys:");
    if (p) {
        sys = atof(p + strlen("used_cpu_sys:"));
    }
    p = strstr(r->str, "used_cpu_user:");
    if (p) {
        user = atof(p + strlen("used_cpu_user:"));
    }
    freeReplyObject(r);
    return sys + user;
}

/* The group's entries-read (Redis 7), or -1 while the group has read nothing. */
static long long group_read(const struct opts *o, long long *pending)
{
    redisReply *r = redisCommand(rc, "XINFO GROUPS %s", o->stream);
    long long read = -1;
    *pending = 0;
    for (size_t g = 0; r && r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        const redisReply *gr = r->element[g];
        bool ours = false;
        long long er = -1, pe = 0;
        for (size_t k = 0; gr->type == REDIS_REPLY_ARRAY && k + 1 < gr->elements; k += 2) {
            const redisReply *key = gr->element[k], *v = gr->element[k + 1];
            if (key->type != REDIS_REPLY_STRING) {
                continue;
            }
            if (strcmp(key->str, "name") == 0 && v->type == REDIS_REPLY_STRING) {
                ours = strcmp(v->str, o->group) == 0;
            } else if (strcmp(key->str, "entries-read") == 0 && v->type == REDIS_REPLY_INTEGER) {
                er = v->integer;
            } else if (strcmp(key->str, "pending") == 0 && v->type == REDIS_REPLY_INTEGER) {
                pe = v->integer;
            }
        }
        if (ours) {
            read = er > 0 ? er : (pe > 0 ? pe : -1);
            *pending = pe;
        }
    }
    freeReplyObject(r);
    return read;
}

/* Entries not yet acked plus retries and collections waiting. */
static long long unfinished(const struct opts *o)
{
    long long pending = 0;
    long long read = group_read(o, &pending);
    long long left = (long long)o->batches - (read < 0 ? 0 : read);
    long long later = cmd_int("ZCARD bb:later:%s", o->inst);
    return (left > 0 ? left : 0) + pending + later;
}

struct receipt_counts {
    uint64_t total, ok, failed, dead, skipped, other;
};

/* Counts receipts written after stream id `from` ("0-0" for all). */
static void count_receipts(const char *from, struct receipt_counts *c)
{
    char cursor[80];
    memset(c, 0, sizeof(*c));
    snprintf(cursor, sizeof(cursor), "(%s", from);
    for (;;) {
        redisReply *r = cmd("XRANGE bb:receipts %s + COUNT 10000", cursor);
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            freeReplyObject(r);
            return;
        }
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i];
            const redisReply *fields = e->element[1];
            if (i + 1 == r->elements) {
                snprintf(cursor, sizeof(cursor), "(%s", e->element[0]->str);
            }
            for (size_t k = 0; k + 1 < fields->elements; k += 2) {
                if (strcmp(fields->element[k]->str, "p") != 0) {
                    continue;
                }
                Bb__Receipt *rec = bb__receipt__unpack(NULL, fields->element[k + 1]->len,
                                                       (const uint8_t *)fields->element[k + 1]->str);
                c->total++;
                if (rec == NULL) {
                    c->other++;
                    continue;
                }
                switch (rec->outcome) {
                case BB__OUTCOME__OUTCOME_OK: c->ok++; break;
                case BB__OUTCOME__OUTCOME_PERMANENT: c->failed++; break;
                case BB__OUTCOME__OUTCOME_SKIPPED_DUPLICATE: c->skipped++; break;
                default: c->other++; break;
                }
                bb__receipt__free_unpacked(rec, NULL);
            }
        }
        freeReplyObject(r);
    }
}

static void last_id(const char *stream, char *out, size_t cap)
{
    redisReply *r = cmd("XREVRANGE %s + - COUNT 1", stream);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
        snprintf(out, cap, "%s", r->element[0]->element[0]->str);
    } else {
        snprintf(out, cap, "0-0");
    }
    freeReplyObject(r);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool any_exited(const pid_t *pids, unsigned n)
{
    int st;
    for (unsigned w = 0; w < n; w++) {
        if (waitpid(pids[w], &st, WNOHANG) == pids[w]) {
            return true;
        }
    }
    return false;
}

static void stop_workers(const pid_t *pids, unsigned n, int sig)
{
    int st;
    for (unsigned w = 0; w < n; w++) {
        kill(pids[w], sig);
    }
    for (unsigned w = 0; w < n; w++) {
        waitpid(pids[w], &st, 0);
    }
}

static int run(const struct opts *o)
{
    char tag[32], rec_from[64];
    snprintf(tag, sizeof(tag), "%" PRId64, wall_ms());
    freeReplyObject(cmd("DEL %s", o->stream));
    double tw = now_s();
    write_backlog(o, tag);
    fprintf(stderr, "bench_worker: %" PRIu64 " batches x %" PRIu64 " written in %.1f s\n",
            o->batches, o->recipients, now_s() - tw);
    freeReplyObject(cmd("XGROUP CREATE %s %s 0", o->stream, o->group));
    last_id("bb:receipts", rec_from, sizeof(rec_from));
    long long dead0 = cmd_int("XLEN bb:dead");
    double redis0 = redis_cpu_s();
    double sink0 = o->sink_pid > 0 ? bb_bench_cpu_seconds(o->sink_pid) : -1;

    double t_spawn = now_s();
    pid_t pids[MAX_WORKERS];
    for (unsigned w = 0; w < o->workers; w++) {
        pids[w] = fork();
        if (pids[w] < 0) {
            die("fork");
        }
        if (pids[w] == 0) {
            if (o->log != NULL && freopen(o->log, "a", stderr) == NULL) {
                _exit(126);
            }
            if (o->preload != NULL) {
                setenv("LD_PRELOAD", o->preload, 1);
            }
            execl(o->worker, o->worker, "-c", o->conf, (char *)NULL);
            _exit(127);
        }
    }
    double t_start = 0, t_end = 0, cpu = 0, hwm = 0;
    int st;
    long long pending;
    while (group_read(o, &pending) < 0) {
        if (any_exited(pids, o->workers)) {
            stop_workers(pids, o->workers, SIGKILL);
            die("a worker exited before reading (see its log)");
        }
        if (now_s() - t_spawn > 30) {
            stop_workers(pids, o->workers, SIGKILL);
            die("the worker read nothing in 30 s (see its log)");
        }
        sleep_ms(2);
    }
    t_start = now_s();
    pid_t perf_pid = 0;
    if (o->perf != NULL) {
        char pidtxt[24 * MAX_WORKERS] = "";
        size_t n = 0;
        for (unsigned w = 0; w < o->workers; w++) {
            n += (size_t)snprintf(pidtxt + n, sizeof(pidtxt) - n, "%s%d", w ? "," : "", (int)pids[w]);
        }
        perf_pid = fork();
        if (perf_pid == 0) {
            if (freopen("/dev/null", "w", stderr) == NULL || freopen("/dev/null", "w", stdout) == NULL) {
                _exit(126);
            }
            execlp("perf", "perf", "record", "-F", "999", "-g", "-p", pidtxt, "-o", o->perf,
                   (char *)NULL);
            _exit(127);
        }
    }
    bool done = false;
    while (now_s() - t_start < o->timeout_s) {
        if (any_exited(pids, o->workers)) {
            if (perf_pid > 0) {
                kill(perf_pid, SIGINT);
                waitpid(perf_pid, &st, 0);
            }
            stop_workers(pids, o->workers, SIGKILL);
            die("a worker exited during the run (see its log)");
        }
        if (unfinished(o) == 0) {
            done = true;
            break;
        }
        sleep_ms(10);
    }
    t_end = now_s();
    if (perf_pid > 0) {
        kill(perf_pid, SIGINT);
        waitpid(perf_pid, &st, 0);
    }
    for (unsigned w = 0; w < o->workers; w++) {
        long hk = bb_bench_rss_kb(pids[w], 1);
        double h = hk < 0 ? -1 : (double)hk / 1024.0;
        cpu += bb_bench_cpu_seconds(pids[w]);
        hwm = h > hwm ? h : hwm;
    }
    double redis_cpu = redis_cpu_s() - redis0;
    double sink_cpu = o->sink_pid > 0 ? bb_bench_cpu_seconds(o->sink_pid) - sink0 : -1;
    stop_workers(pids, o->workers, SIGTERM);

    struct receipt_counts rcn;
    count_receipts(rec_from, &rcn);
    long long dead = cmd_int("XLEN bb:dead") - dead0;
    uint64_t deliveries = o->batches * o->recipients;
    double wall = t_end - t_start;
    if (o->header) {
        printf("| run | deliveries | startup s | drain s | deliveries/s | worker CPU s | worker CPU "
               "s/1M | worker peak RSS MiB | redis CPU s | sink CPU s | receipts ok/total | "
               "dead |\n");
        printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    }
    char sink_txt[32] = "-";
    if (sink_cpu >= 0) {
        snprintf(sink_txt, sizeof(sink_txt), "%.2f", sink_cpu);
    }
    printf("| %s | %" PRIu64 " | %.2f | %.2f | %.0f | %.2f | %.1f | %.1f | %.2f | %s | %" PRIu64
           "/%" PRIu64 "%s | %lld |\n",
           o->label ? o->label : "-", deliveries, t_start - t_spawn, wall,
           (double)deliveries / wall, cpu, cpu / ((double)deliveries / 1e6), hwm, redis_cpu,
           sink_txt, rcn.ok, rcn.total, done ? "" : " (TIMEOUT)", dead);
    fflush(stdout);
    return done && rcn.ok == deliveries ? 0 : 1;
}

static void usage(void)
{
    fputs("usage: bench_worker load --redis ADDR --users N [--platform fcm]\n"
          "       bench_worker run --redis ADDR --users N --batches B --recipients R\n"
          "                        --worker PATH --conf FILE [--stream S] [--inst I]\n"
          "                        [--group G] [--sink-pid PID] [--label L] [--log FILE]\n"
          "                        [--timeout S] [--header] [--perf FILE]\n"
          "                        [--preload LIB] [--workers K]\n",
          stderr);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"redis", required_argument, NULL, 'r'},   {"users", required_argument, NULL, 'u'},
        {"platform", required_argument, NULL, 'P'}, {"batches", required_argument, NULL, 'b'},
        {"recipients", required_argument, NULL, 'n'}, {"worker", required_argument, NULL, 'w'},
        {"conf", required_argument, NULL, 'c'},    {"stream", required_argument, NULL, 's'},
        {"inst", required_argument, NULL, 'i'},    {"group", required_argument, NULL, 'g'},
        {"sink-pid", required_argument, NULL, 'k'}, {"label", required_argument, NULL, 'l'},
        {"log", required_argument, NULL, 'L'},     {"timeout", required_argument, NULL, 't'},
        {"header", no_argument, NULL, 'H'},        {"perf", required_argument, NULL, 'F'},
        {"preload", required_argument, NULL, 'D'}, {"workers", required_argument, NULL, 'W'},
        {NULL, 0, NULL, 0},
    };
    struct opts o = {.redis = "127.0.0.1:6379", .users = 100000, .platform = "fcm",
                     .batches = 200, .recipients = 500, .stream = "bb:out:push", .inst = "push",
                     .group = "bb-workers", .timeout_s = 600, .workers = 1};
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *mode = argv[1];
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'r': o.redis = optarg; break;
        case 'u': o.users = strtoull(optarg, NULL, 10); break;
        case 'P': o.platform = optarg; break;
        case 'b': o.batches = strtoull(optarg, NULL, 10); break;
        case 'n': o.recipients = strtoull(optarg, NULL, 10); break;
        case 'w': o.worker = optarg; break;
        case 'c': o.conf = optarg; break;
        case 's': o.stream = optarg; break;
        case 'i': o.inst = optarg; break;
        case 'g': o.group = optarg; break;
        case 'k': o.sink_pid = atoi(optarg); break;
        case 'l': o.label = optarg; break;
        case 'L': o.log = optarg; break;
        case 't': o.timeout_s = atof(optarg); break;
        case 'H': o.header = true; break;
        case 'F': o.perf = optarg; break;
        case 'D': o.preload = optarg; break;
        case 'W': o.workers = (unsigned)atoi(optarg); break;
        default: usage(); return 2;
        }
    }
    if (o.users == 0 || o.batches == 0 || o.recipients == 0 || o.workers < 1 ||
        o.workers > MAX_WORKERS) {
        usage();
        return 2;
    }
    connect_redis(o.redis);
    int rv = 0;
    if (strcmp(mode, "load") == 0) {
        load_users(&o);
    } else if (strcmp(mode, "run") == 0) {
        if (o.worker == NULL || o.conf == NULL) {
            usage();
            return 2;
        }
        rv = run(&o);
    } else {
        usage();
        rv = 2;
    }
    redisFree(rc);
    return rv;
}
