/* The peer buurtbus is measured against: fan-out the way a team would build
 * it on Redis alone. For each report: GEOSEARCH for the residents within a
 * radius of the report and SMEMBERS of the report's group (pipelined),
 * dedup, then one XADD per recipient (pipelined), from a C client.
 *
 *   peer_redis load --redis ADDR --users N [--seed S]
 *       GEOADDs every resident's home to bb:peer:geo (the group member sets
 *       come from `bench_broker load` of the same population).
 *   peer_redis run --redis ADDR --users N --rate R --duration S
 *                  [--radius M] [--threads T] [--json]
 *       the same reports as bench_broker (popgen, same seed), open loop:
 *       each report has an intended start time (Poisson spacing) and its
 *       latency runs from that time to the reply of its last XADD, so a
 *       saturated peer cannot hide its queue. T threads, one connection
 *       each, take reports in order.
 *
 * Threads: main generates the schedule and waits; each worker thread owns
 * its connection; they share the schedule (read-only), an atomic cursor
 * and the histogram (under a mutex). */
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
#include "popgen.h"
#include "report.pb-c.h"
#include "snapshot.h"
#include "stats.h"

struct opts {
    const char *redis;
    uint32_t users;
    uint64_t seed;
    double rate, duration;
    unsigned radius_m, threads;
    bool json;
    int redis_pid;
};

struct job {
    int64_t intended_us;
    double lat, lon;
    uint64_t group; /* 0: none */
    char id[32];
};

static struct job *jobs;
static size_t njobs;
static atomic_size_t cursor;
static atomic_ulong deliveries, reports_done;
static struct bb_hist lat;
static pthread_mutex_t lat_mu = PTHREAD_MUTEX_INITIALIZER;
static const struct opts *opt;

static redisContext *connect_or_die(const char *addr)
{
    char err[256];
    redisContext *c = bb_redis_connect(addr, NULL, NULL, 60000, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "peer_redis: %s\n", err);
        exit(1);
    }
    return c;
}

static redisReply *get_reply(redisContext *c)
{
    redisReply *r = NULL;
    if (redisGetReply(c, (void **)&r) != REDIS_OK) {
        fprintf(stderr, "peer_redis: %s\n", c->errstr);
        exit(1);
    }
    return r;
}

/* ---- load -------------------------------------------------------------------------------- */

static int cmd_load(const struct opts *o, const struct pg_pop *pop)
{
    redisContext *c = connect_or_die(o->redis);
    int64_t t0 = bb_bench_now_us();
    size_t pending = 0;
    for (uint32_t u = 0; u < pop->nusers; u++) {
        redisAppendCommand(c, "GEOADD bb:peer:geo %.6f %.6f %u", (double)pop->users[u].lon,
                           (double)pop->users[u].lat, u + 1);
        if (++pending == 1000 || u + 1 == pop->nusers) {
            while (pending) {
                redisReply *r = get_reply(c);
                if (r->type == REDIS_REPLY_ERROR) {
                    fprintf(stderr, "peer_redis: GEOADD: %s\n", r->str);
                    return 1;
                }
                freeReplyObject(r);
                pending--;
            }
            if ((u + 1) % 100000 == 0) {
                fprintf(stderr, "\rgeo: %u / %u", u + 1, pop->nusers);
            }
        }
    }
    printf("peer_redis: %u homes in bb:peer:geo in %.1f s\n", pop->nusers,
           (double)(bb_bench_now_us() - t0) / 1e6);
    redisFree(c);
    return 0;
}

/* ---- run --------------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void *worker_main(void *arg)
{
    redisContext *c = connect_or_die(opt->redis);
    size_t cap = 1 << 16;
    uint64_t *ids = malloc(cap * sizeof(*ids));
    for (;;) {
        size_t i = atomic_fetch_add(&cursor, 1);
        if (i >= njobs) {
            break;
        }
        const struct job *j = &jobs[i];
        int64_t wait = j->intended_us - bb_bench_now_us();
        if (wait > 0) {
            usleep((useconds_t)wait);
        }
        redisAppendCommand(c, "GEOSEARCH bb:peer:geo FROMLONLAT %.6f %.6f BYRADIUS %u m", j->lon,
                           j->lat, opt->radius_m);
        if (j->group) {
            redisAppendCommand(c, "SMEMBERS bb:group:%" PRIu64 ":members", j->group);
        }
        size_t n = 0;
        for (int k = 0; k < (j->group ? 2 : 1); k++) {
            redisReply *r = get_reply(c);
            for (size_t e = 0; r->type == REDIS_REPLY_ARRAY && e < r->elements; e++) {
                if (n == cap) {
                    cap *= 2;
                    ids = realloc(ids, cap * sizeof(*ids));
                }
                ids[n++] = strtoull(r->element[e]->str, NULL, 10);
            }
            freeReplyObject(r);
        }
        qsort(ids, n, sizeof(*ids), cmp_u64);
        size_t m = 0;
        for (size_t k = 0; k < n; k++) {
            if (m == 0 || ids[m - 1] != ids[k]) {
                ids[m++] = ids[k];
            }
        }
        for (size_t k = 0; k < m; k++) {
            redisAppendCommand(c, "XADD bb:peer:out * r %s u %" PRIu64, j->id, ids[k]);
        }
        for (size_t k = 0; k < m; k++) {
            freeReplyObject(get_reply(c));
        }
        int64_t t = bb_bench_now_us();
        atomic_fetch_add(&deliveries, m);
        atomic_fetch_add(&reports_done, 1);
        pthread_mutex_lock(&lat_mu);
        bb_hist_add(&lat, (uint64_t)(t > j->intended_us ? t - j->intended_us : 0));
        pthread_mutex_unlock(&lat_mu);
    }
    free(ids);
    redisFree(c);
    return NULL;
}

static int cmd_run(const struct opts *o, const struct pg_pop *pop)
{
    njobs = (size_t)(o->rate * o->duration) + 1;
    jobs = calloc(njobs, sizeof(*jobs));
    uint64_t rng = o->seed * 7919 + 1; /* as bench_broker: the same reports */
    Bb__Report rep;
    Bb__Media media, *media_list[1];
    struct pg_report pr = {.rep = &rep};
    int64_t start = bb_bench_now_us() + 200000, next = start;
    for (size_t i = 0; i < njobs; i++) {
        pg_report(pop, &rng, i, next / 1000, &pr, &media, media_list);
        jobs[i] = (struct job){next, rep.lat, rep.lon, rep.group_id, ""};
        snprintf(jobs[i].id, sizeof(jobs[i].id), "%s", rep.id);
        next += (int64_t)(-log(1.0 - pg_uniform(&rng)) / o->rate * 1e6);
    }
    redisContext *c = connect_or_die(o->redis);
    freeReplyObject(redisCommand(c, "DEL bb:peer:out"));
    double cpu0 = o->redis_pid ? bb_bench_cpu_seconds(o->redis_pid) : -1;
    pthread_t *th = calloc(o->threads, sizeof(*th));
    for (unsigned i = 0; i < o->threads; i++) {
        pthread_create(&th[i], NULL, worker_main, NULL);
    }
    for (unsigned i = 0; i < o->threads; i++) {
        pthread_join(th[i], NULL);
    }
    double wall = (double)(bb_bench_now_us() - start) / 1e6;
    double cpu = o->redis_pid ? bb_bench_cpu_seconds(o->redis_pid) - cpu0 : -1;
    unsigned long dl = atomic_load(&deliveries), rp = atomic_load(&reports_done);
    double p50 = bb_hist_pct(&lat, 0.50) / 1000, p99 = bb_hist_pct(&lat, 0.99) / 1000,
           p999 = bb_hist_pct(&lat, 0.999) / 1000, mx = (double)lat.max / 1000;
    if (o->json) {
        printf("{\"peer\":\"redis-native\",\"users\":%u,\"rate\":%.0f,\"duration_s\":%.1f,"
               "\"radius_m\":%u,\"threads\":%u,\"reports\":%lu,\"deliveries\":%lu,"
               "\"deliveries_per_report\":%.1f,\"deliveries_per_s\":%.0f,\"p50_ms\":%.3f,"
               "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,\"redis_cpu_s\":%.2f,"
               "\"wall_s\":%.1f}\n",
               o->users, o->rate, o->duration, o->radius_m, o->threads, rp, dl,
               rp ? (double)dl / rp : 0, dl / wall, p50, p99, p999, mx, cpu, wall);
    } else {
        printf("redis-native: %lu reports, %lu deliveries (%.1f per report) in %.1f s: %.0f/s\n",
               rp, dl, rp ? (double)dl / rp : 0, wall, dl / wall);
        printf("latency (ms)  p50 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (intended start -> last "
               "XADD)\n",
               p50, p99, p999, mx);
    }
    free(th);
    free(jobs);
    redisFree(c);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: peer_redis load --redis ADDR --users N [--seed S]\n"
               "       peer_redis run --redis ADDR --users N --rate R --duration S\n"
               "                      [--radius M] [--threads T] [--redis-pid P] [--json]\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    struct opts o = {
        .users = 200000, .seed = 1, .rate = 100, .duration = 10, .radius_m = 1000, .threads = 2};
    static const struct option lo[] = {
        {"redis", required_argument, 0, 'r'},
        {"users", required_argument, 0, 'u'},
        {"seed", required_argument, 0, 's'},
        {"rate", required_argument, 0, 'R'},
        {"duration", required_argument, 0, 'd'},
        {"radius", required_argument, 0, 'm'},
        {"threads", required_argument, 0, 't'},
        {"redis-pid", required_argument, 0, 'p'},
        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
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
        case 'm':
            o.radius_m = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 't':
            o.threads = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'p':
            o.redis_pid = atoi(optarg);
            break;
        case 'j':
            o.json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!o.redis || o.users == 0 || o.rate <= 0 || o.threads == 0) {
        usage(stderr);
        return 2;
    }
    opt = &o;
    struct pg_params pp;
    struct pg_pop pop;
    pg_params_default(&pp);
    pp.users = o.users;
    pp.seed = o.seed;
    if (pg_generate(&pp, &pop) != BB_OK) {
        fprintf(stderr, "peer_redis: out of memory\n");
        return 1;
    }
    int rc = strcmp(cmd, "load") == 0  ? cmd_load(&o, &pop)
             : strcmp(cmd, "run") == 0 ? cmd_run(&o, &pop)
                                       : (usage(stderr), 2);
    pg_free(&pop);
    return rc;
}
