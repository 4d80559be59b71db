/* End-to-end broker benchmark: a population in Redis, an open-loop stream
 * of reports into bb:reports, and a reader timing when each report's
 * batches appear in bb:out:*.
 *
 *   bench_broker load --redis ADDR --users N [--seed S]
 *       writes the synthetic population (bench/popgen.h) into Redis in the
 *       directory format, with a progress line.
 *   bench_broker run --redis ADDR --users N --rate R --duration S [--json]
 *       posts reports at R per second with exponential (Poisson) spacing for
 *       S seconds. Each report's latency is taken from its intended send
 *       time (not the actual one), so a slow broker cannot hide queueing
 *       (no coordinated omission), to the moment the reader sees its first
 *       batch — all of a report's batches are committed by one script, so
 *       first and last appear together.
 *
 * Threads: main sends, one reader thread reads the output streams; they
 * share only the intended-time array (written before the XADD, read after
 * the batch arrives) and atomic counters. */
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "popgen.h"
#include "report.pb-c.h"
#include "snapshot.h"
#include "stats.h"

#define NSTREAMS 5

static const char *const out_streams[NSTREAMS] = {"bb:out:push", "bb:out:email", "bb:out:inbox",
                                                  "bb:out:digest", "bb:out:social"};

struct opts {
    const char *redis;
    uint32_t users;
    uint64_t seed;
    double rate;
    double duration;
    bool json;
    bool group_only; /* --mix group: reports reach one group's members only */
    int broker_pid;
};

/* ---- shared state ------------------------------------------------------------------------ */

static int64_t *intended_us; /* by report sequence number */
static _Atomic uint8_t *seen;
static atomic_ulong got_reports, got_deliveries, got_batches, got_bytes;
static atomic_bool stop_reader;
static struct bb_hist lat;
static pthread_mutex_t lat_mu = PTHREAD_MUTEX_INITIALIZER;

static redisContext *connect_or_die(const char *addr)
{
    char err[256];
    redisContext *c = bb_redis_connect(addr, NULL, 30000, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "bench_broker: %s\n", err);
        exit(1);
    }
    return c;
}

/* ---- load -------------------------------------------------------------------------------- */

struct loader {
    struct bb_store_batch *b;
    uint64_t n, total;
    int64_t t0;
};

static int load_one(void *arg, const Bb__DirectoryEvent *ev, char *why, size_t whylen)
{
    struct loader *l = arg;
    int rc = bb_store_batch_add(l->b, ev, l->n, why, whylen);
    if (++l->n % 50000 == 0) {
        double s = (double)(bb_bench_now_us() - l->t0) / 1e6;
        fprintf(stderr, "\rloading: %" PRIu64 " / ~%" PRIu64 " changes, %.0f/s   ", l->n, l->total,
                (double)l->n / s);
    }
    return rc;
}

static int cmd_load(const struct opts *o)
{
    struct pg_params pp;
    struct pg_pop pop;
    pg_params_default(&pp);
    pp.users = o->users;
    pp.seed = o->seed;
    int64_t t0 = bb_bench_now_us();
    if (pg_generate(&pp, &pop) != BB_OK) {
        fprintf(stderr, "bench_broker: out of memory generating %u users\n", o->users);
        return 1;
    }
    redisContext *c = connect_or_die(o->redis);
    struct loader l = {bb_store_batch_new(c, 512, NULL, NULL), 0,
                       pop.nusers + pop.ngroups + pop.nmembers, bb_bench_now_us()};
    char why[256] = "";
    int rc = pg_emit(&pop, false, load_one, &l, why, sizeof(why));
    if (rc == BB_OK) {
        rc = bb_store_batch_flush(l.b, why, sizeof(why));
    }
    struct bb_store_stats st;
    bb_store_batch_stats(l.b, &st);
    fprintf(stderr, "\n");
    double s = (double)(bb_bench_now_us() - t0) / 1e6;
    printf("loaded %u users, %u groups, %zu memberships: %" PRIu64 " changes (%" PRIu64
           " refused) in %.1f s\n",
           pop.nusers, pop.ngroups, pop.nmembers, st.applied, st.rejected, s);
    if (rc != BB_OK) {
        fprintf(stderr, "bench_broker: load failed: %s\n", why);
    }
    bb_store_batch_free(l.b);
    redisFree(c);
    pg_free(&pop);
    return rc == BB_OK ? 0 : 1;
}

/* ---- run --------------------------------------------------------------------------------- */

static void *reader_main(void *arg)
{
    const struct opts *o = arg;
    redisContext *c = connect_or_die(o->redis);
    char last[NSTREAMS][48];
    for (int i = 0; i < NSTREAMS; i++) {
        redisReply *r = redisCommand(c, "XREVRANGE %s + - COUNT 1", out_streams[i]);
        snprintf(last[i], sizeof(last[i]), "%s",
                 r && r->type == REDIS_REPLY_ARRAY && r->elements ? r->element[0]->element[0]->str
                                                                  : "0-0");
        freeReplyObject(r);
    }
    while (!atomic_load(&stop_reader)) {
        redisReply *r =
            redisCommand(c, "XREAD COUNT 2000 BLOCK 200 STREAMS %s %s %s %s %s %s %s %s %s %s",
                         out_streams[0], out_streams[1], out_streams[2], out_streams[3],
                         out_streams[4], last[0], last[1], last[2], last[3], last[4]);
        int64_t t = bb_bench_now_us();
        if (!r) {
            fprintf(stderr, "bench_broker: reader: %s\n", c->errstr);
            break;
        }
        for (size_t s = 0; r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
            const redisReply *sr = r->element[s];
            int si = 0;
            while (si < NSTREAMS && strcmp(out_streams[si], sr->element[0]->str) != 0) {
                si++;
            }
            const redisReply *es = sr->element[1];
            for (size_t i = 0; i < es->elements; i++) {
                const redisReply *e = es->element[i];
                snprintf(last[si], sizeof(last[si]), "%s", e->element[0]->str);
                const redisReply *p = e->element[1]->element[1];
                Bb__DeliveryBatch *b =
                    bb__delivery_batch__unpack(NULL, p->len, (const uint8_t *)p->str);
                if (!b) {
                    continue;
                }
                atomic_fetch_add(&got_batches, 1);
                atomic_fetch_add(&got_bytes, p->len);
                atomic_fetch_add(&got_deliveries, b->n_recipients);
                unsigned long long seq;
                if (sscanf(b->notification_key, "r:r-%llu", &seq) == 1 &&
                    seq < (unsigned long long)(o->rate * o->duration * 2 + 16) &&
                    atomic_exchange(&seen[seq], 1) == 0 && intended_us[seq]) {
                    pthread_mutex_lock(&lat_mu);
                    bb_hist_add(&lat, (uint64_t)(t - intended_us[seq] > 0 ? t - intended_us[seq] : 0));
                    pthread_mutex_unlock(&lat_mu);
                    atomic_fetch_add(&got_reports, 1);
                }
                bb__delivery_batch__free_unpacked(b, NULL);
            }
        }
        freeReplyObject(r);
    }
    redisFree(c);
    return NULL;
}

static long long used_memory(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO memory");
    long long v = -1;
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_memory:") : NULL;
    if (p) {
        v = atoll(p + 12);
    }
    freeReplyObject(r);
    return v;
}

static int cmd_run(const struct opts *o)
{
    struct pg_params pp;
    struct pg_pop pop;
    pg_params_default(&pp);
    pp.users = o->users;
    pp.seed = o->seed;
    if (pg_generate(&pp, &pop) != BB_OK) {
        fprintf(stderr, "bench_broker: out of memory\n");
        return 1;
    }
    size_t max = (size_t)(o->rate * o->duration * 2 + 16);
    intended_us = calloc(max, sizeof(*intended_us));
    seen = calloc(max, 1);
    redisContext *c = connect_or_die(o->redis);
    long long mem0 = used_memory(c);
    double cpu0 = o->broker_pid ? bb_bench_cpu_seconds(o->broker_pid) : -1;
    pthread_t reader;
    pthread_create(&reader, NULL, reader_main, (void *)o);
    usleep(100 * 1000);

    uint64_t rng = o->seed * 7919 + 1;
    Bb__Report rep;
    Bb__Media media, *media_list[1];
    struct pg_report pr = {.rep = &rep};
    uint8_t *buf = malloc(1 << 16);
    int64_t start = bb_bench_now_us(), next = start;
    uint64_t sent = 0, pending = 0;
    int64_t end = start + (int64_t)(o->duration * 1e6);
    while (next < end && sent < max) {
        int64_t t = bb_bench_now_us();
        if (t < next) {
            if (pending) { /* use the wait to collect replies */
                redisReply *r;
                if (redisGetReply(c, (void **)&r) != REDIS_OK) {
                    fprintf(stderr, "bench_broker: %s\n", c->errstr);
                    return 1;
                }
                freeReplyObject(r);
                pending--;
                continue;
            }
            if (next - t > 200) {
                usleep((useconds_t)(next - t - 100));
            }
            continue;
        }
        /* Open loop: every report due by now goes out, stamped with the
         * time it was due. */
        while (next <= t && sent < max) {
            pg_report(&pop, &rng, sent, next / 1000, &pr, &media, media_list);
            if (o->group_only) {
                /* Posted in the author's first (street or neighbourhood) group,
                 * at a point no area or watch circle covers: the reach is that
                 * group's members, a few hundred people. */
                uint32_t a = (uint32_t)(rep.author_id - 1);
                rep.group_id = pop.ugroups[pop.ufirst[a]] + 1;
                rep.lat = 53.6;
                rep.lon = 3.2;
            }
            size_t len = bb__report__get_packed_size(&rep);
            bb__report__pack(&rep, buf);
            intended_us[sent] = next;
            redisAppendCommand(c, "XADD bb:reports * p %b", buf, len);
            pending++;
            sent++;
            next += (int64_t)(-log(1.0 - pg_uniform(&rng)) / o->rate * 1e6);
        }
        int done = 0;
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            fprintf(stderr, "bench_broker: %s\n", c->errstr);
            return 1;
        }
    }
    while (pending) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            break;
        }
        freeReplyObject(r);
        pending--;
    }
    double send_s = (double)(bb_bench_now_us() - start) / 1e6;
    /* Let the tail drain: up to 10 s after the last report. */
    for (int i = 0; i < 100 && atomic_load(&got_reports) < sent; i++) {
        unsigned long before = atomic_load(&got_deliveries);
        usleep(100 * 1000);
        if (i > 20 && atomic_load(&got_deliveries) == before) {
            break; /* nothing more is coming: the rest reached nobody */
        }
    }
    double total_s = (double)(bb_bench_now_us() - start) / 1e6;
    atomic_store(&stop_reader, true);
    pthread_join(reader, NULL);
    double cpu = o->broker_pid ? bb_bench_cpu_seconds(o->broker_pid) - cpu0 : -1;
    long long mem1 = used_memory(c);
    long rss = o->broker_pid ? bb_bench_rss_kb(o->broker_pid, 0) : -1;

    unsigned long dl = atomic_load(&got_deliveries), rp = atomic_load(&got_reports);
    double p50 = bb_hist_pct(&lat, 0.50) / 1000, p99 = bb_hist_pct(&lat, 0.99) / 1000,
           p999 = bb_hist_pct(&lat, 0.999) / 1000, mx = (double)lat.max / 1000;
    double dps = dl / send_s;
    double bpd = dl ? (double)atomic_load(&got_bytes) / dl : 0;
    double mpd = dl && mem0 >= 0 ? (double)(mem1 - mem0) / dl : 0;
    if (o->json) {
        printf("{\"users\":%u,\"rate\":%.0f,\"duration_s\":%.1f,\"sent\":%" PRIu64
               ",\"reports_with_deliveries\":%lu,\"deliveries\":%lu,\"deliveries_per_report\":%.1f,"
               "\"deliveries_per_s\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,"
               "\"max_ms\":%.3f,\"payload_bytes_per_delivery\":%.2f,"
               "\"redis_bytes_per_delivery\":%.2f,\"broker_cpu_s\":%.2f,"
               "\"broker_cpu_s_per_million_deliveries\":%.2f,\"broker_rss_kb\":%ld,"
               "\"wall_s\":%.1f}\n",
               o->users, o->rate, o->duration, sent, rp, dl, rp ? (double)dl / rp : 0, dps, p50,
               p99, p999, mx, bpd, mpd, cpu, dl ? cpu / (dl / 1e6) : 0, rss, total_s);
    } else {
        printf("users %u, offered %.0f reports/s for %.1f s: %" PRIu64
               " sent, %lu reached someone\n",
               o->users, o->rate, o->duration, sent, rp);
        printf("deliveries      %lu (%.1f per report), %.0f/s\n", dl, rp ? (double)dl / rp : 0,
               dps);
        printf("latency (ms)    p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (intended send -> "
               "batches visible)\n",
               p50, p99, p999, mx);
        printf("bytes/delivery  %.2f in stream payloads, %.2f of Redis memory\n", bpd, mpd);
        if (o->broker_pid) {
            printf("broker          %.2f CPU s (%.2f per million deliveries), RSS %ld kB\n", cpu,
                   dl ? cpu / (dl / 1e6) : 0, rss);
        }
    }
    free(buf);
    free(intended_us);
    free((void *)seen);
    redisFree(c);
    pg_free(&pop);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_broker load --redis ADDR --users N [--seed S]\n"
            "       bench_broker run --redis ADDR --users N --rate R --duration S\n"
            "                        [--broker-pid PID] [--seed S] [--mix field|group] [--json]\n"
            "  --mix group: every report posted in the author's street or neighbourhood\n"
            "               group at a point no area covers (reach: that group)\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"redis", required_argument, NULL, 'r'},      {"users", required_argument, NULL, 'u'},
        {"seed", required_argument, NULL, 's'},       {"rate", required_argument, NULL, 'R'},
        {"duration", required_argument, NULL, 'd'},   {"json", no_argument, NULL, 'j'},
        {"broker-pid", required_argument, NULL, 'p'}, {"help", no_argument, NULL, 'h'},
        {"mix", required_argument, NULL, 'm'},        {NULL, 0, NULL, 0}};
    struct opts o = {
        .redis = "127.0.0.1:6379", .users = 200000, .seed = 1, .rate = 1000, .duration = 10};
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'r':
            o.redis = optarg;
            break;
        case 'u':
            o.users = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 's':
            o.seed = strtoull(optarg, NULL, 10);
            break;
        case 'R':
            o.rate = atof(optarg);
            break;
        case 'd':
            o.duration = atof(optarg);
            break;
        case 'j':
            o.json = true;
            break;
        case 'p':
            o.broker_pid = atoi(optarg);
            break;
        case 'm':
            if (strcmp(optarg, "group") != 0 && strcmp(optarg, "field") != 0) {
                usage(stderr);
                return 2;
            }
            o.group_only = strcmp(optarg, "group") == 0;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (o.users < 100 || o.rate <= 0 || o.duration <= 0) {
        usage(stderr);
        return 2;
    }
    if (strcmp(cmd, "load") == 0) {
        return cmd_load(&o);
    }
    if (strcmp(cmd, "run") == 0) {
        return cmd_run(&o);
    }
    usage(stderr);
    return 2;
}
