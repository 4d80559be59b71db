/* End-to-end broker benchmark: a population in Redis, an open-loop stream
 * of reports into bb:reports, and a reader timing when each report's
 * batches appear in bb:out:*.
 *
 *   bench_broker load --redis ADDR --users N [--seed S] [--citywide]
 *       writes the synthetic population (bench/popgen.h) into Redis in the
 *       directory format, with a progress line. --citywide adds one group
 *       per town of all its residents (what --storm citywide posts in).
 *   bench_broker run --redis ADDR --users N --rate R --duration S [--json]
 *       posts reports at R per second with exponential (Poisson) spacing for
 *       S seconds. Each report's latency is taken from its intended send
 *       time (not the actual one), so a slow broker cannot hide queueing
 *       (no coordinated omission), to the moment the reader sees its first
 *       batch — all of a report's batches are committed by one script, so
 *       first and last appear together.
 *       --storm burglary|citywide|sensors|churn adds a storm on top of that
 *       mix at --storm-at seconds (default: a third of the run), its reports
 *       timed from their intended times as well and counted apart; churn
 *       writes directory changes at --churn-rate per second for the whole
 *       run instead. --worker-file PATH tails the file a buurtbus-worker's
 *       file plug-in writes the inbox deliveries to and times each report to
 *       its last delivery there.
 *
 * Threads: main sends; one reader thread reads the output streams; with
 * --worker-file a tail thread reads the worker's file; with churn a churn
 * thread writes bb:directory. They share per-report arrays indexed by
 * report sequence number: main writes intended_us and is_storm before the
 * report's XADD; the reader alone writes first/last arrival, deliveries and
 * inbox counts; the tail thread alone writes the file counts; main reads
 * them all only after joining the writer. Totals are atomic counters. */
#include <errno.h>
#include <fcntl.h>
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
#define INBOX_STREAM 2
#define M_PER_DEG 111195.08
#define PI 3.14159265358979323846
#define SENSOR_AUTHOR_BASE 1000000000ull /* sensors are no residents: ids above any user */

static const char *const out_streams[NSTREAMS] = {"bb:out:push", "bb:out:email", "bb:out:inbox",
                                                  "bb:out:digest", "bb:out:social"};

enum storm_kind { STORM_NONE = 0, STORM_BURGLARY, STORM_CITYWIDE, STORM_SENSORS, STORM_CHURN };
static const char *const storm_names[] = {"none", "burglary", "citywide", "sensors", "churn"};

struct opts {
    const char *redis;
    uint32_t users;
    uint64_t seed;
    double rate;
    double duration;
    bool json;
    bool group_only; /* --mix group: reports reach one group's members only */
    int broker_pid;
    int storm;             /* enum storm_kind */
    double storm_at;       /* seconds into the run; < 0: a third of the duration */
    uint32_t storm_size;   /* sensors: reports in the burst */
    double churn_rate;     /* directory changes per second (churn) */
    bool citywide;         /* population with town groups (popgen town_groups) */
    const char *worker_file;
    int worker_pid;
    const char *commit;
};

/* ---- shared state (see the comment at the top) ------------------------------------------- */

static size_t cap;           /* report sequence numbers < cap */
static int64_t *intended_us; /* main */
static uint8_t *is_storm;    /* main */
static int64_t *first_us, *last_us;
static uint32_t *dl_count, *inbox_count;  /* reader */
static uint32_t *file_count;              /* tail */
static int64_t *file_last_us;             /* tail */
static atomic_ulong got_reports, got_deliveries, got_batches, got_bytes, file_lines;
static atomic_bool stop_reader, stop_tail, stop_churn;

static redisContext *connect_or_die(const char *addr)
{
    char err[256];
    redisContext *c = bb_redis_connect(addr, NULL, NULL, 30000, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "bench_broker: %s\n", err);
        exit(1);
    }
    return c;
}

static void population_params(const struct opts *o, struct pg_params *pp)
{
    pg_params_default(pp);
    pp->users = o->users;
    pp->seed = o->seed;
    pp->town_groups = o->citywide;
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
    population_params(o, &pp);
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

/* ---- the reader of bb:out:* --------------------------------------------------------------- */

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
                if (sscanf(b->notification_key, "r:r-%llu", &seq) == 1 && seq < cap &&
                    intended_us[seq]) {
                    if (!first_us[seq]) {
                        first_us[seq] = t;
                        atomic_fetch_add(&got_reports, 1);
                    }
                    last_us[seq] = t;
                    dl_count[seq] += (uint32_t)b->n_recipients;
                    if (si == INBOX_STREAM) {
                        inbox_count[seq] += (uint32_t)b->n_recipients;
                    }
                }
                bb__delivery_batch__free_unpacked(b, NULL);
            }
        }
        freeReplyObject(r);
    }
    redisFree(c);
    return NULL;
}

/* ---- the tail of the worker's file -------------------------------------------------------- */

/* One JSON line of the file plug-in: counts it for its report ("report_id":"r-<seq>"). */
static void file_line(const char *line, int64_t t)
{
    const char *p = strstr(line, "\"report_id\"");
    if (!p) {
        return;
    }
    p += strlen("\"report_id\"");
    while (*p == ' ' || *p == ':' || *p == '"') {
        p++;
    }
    unsigned long long seq;
    if (sscanf(p, "r-%llu", &seq) == 1 && seq < cap) {
        file_count[seq]++;
        file_last_us[seq] = t;
    }
    atomic_fetch_add(&file_lines, 1);
}

static void *tail_main(void *arg)
{
    int fd = *(int *)arg;
    size_t bufcap = 1 << 20, have = 0;
    char *buf = malloc(bufcap + 1);
    bool last_round = false;
    while (buf) {
        ssize_t n = read(fd, buf + have, bufcap - have);
        if (n > 0) {
            int64_t t = bb_bench_now_us();
            have += (size_t)n;
            buf[have] = '\0';
            char *line = buf, *nl;
            while ((nl = memchr(line, '\n', have - (size_t)(line - buf))) != NULL) {
                *nl = '\0';
                file_line(line, t);
                line = nl + 1;
            }
            have -= (size_t)(line - buf);
            memmove(buf, line, have);
            if (have == bufcap) {
                have = 0; /* a line longer than the buffer: not ours */
            }
            continue;
        }
        if (last_round) {
            break;
        }
        if (atomic_load(&stop_tail)) {
            last_round = true; /* one more read to the end */
            continue;
        }
        usleep(1000);
    }
    free(buf);
    return NULL;
}

/* ---- directory churn ---------------------------------------------------------------------- */

struct churn {
    const struct opts *o;
    const struct pg_pop *pop;
    uint64_t kinds[3]; /* enum pg_churn_kind */
    struct bb_store_stats st;
    double seconds;
    bool failed;
};

static void *churn_main(void *arg)
{
    struct churn *ch = arg;
    redisContext *c = connect_or_die(ch->o->redis);
    struct bb_store_batch *b = bb_store_batch_new(c, 0, NULL, NULL);
    struct pg_churn *gen = pg_churn_new(ch->pop, ch->o->seed);
    char why[256] = "";
    int64_t t0 = bb_bench_now_us();
    uint64_t added = 0;
    while (b && gen && !atomic_load(&stop_churn)) {
        double el = (double)(bb_bench_now_us() - t0) / 1e6;
        uint64_t due = (uint64_t)(ch->o->churn_rate * el);
        while (added < due) {
            const Bb__DirectoryEvent *ev;
            ch->kinds[pg_churn_next(gen, &ev)]++;
            int rc = bb_store_batch_add(b, ev, added, why, sizeof(why));
            added++;
            if (rc != BB_OK && rc != BB_EINVAL) {
                fprintf(stderr, "bench_broker: churn: %s\n", why);
                ch->failed = true;
                goto out;
            }
        }
        if (bb_store_batch_flush(b, why, sizeof(why)) != BB_OK) {
            fprintf(stderr, "bench_broker: churn: %s\n", why);
            ch->failed = true;
            break;
        }
        usleep(10 * 1000);
    }
out:
    ch->seconds = (double)(bb_bench_now_us() - t0) / 1e6;
    if (b) {
        bb_store_batch_stats(b, &ch->st);
    }
    pg_churn_free(gen);
    bb_store_batch_free(b);
    redisFree(c);
    return NULL;
}

/* ---- storms ------------------------------------------------------------------------------ */

struct storm {
    int kind;
    uint32_t n;        /* reports */
    int64_t t0;        /* intended time of the first, us */
    int64_t spacing;   /* between two, us */
    uint32_t group;    /* group index posted in (burglary, citywide) */
    uint32_t members;  /* its members */
    uint32_t author;   /* user index (burglary, citywide) */
    double lat, lon;   /* where (burglary, citywide); the town centre (sensors) */
    unsigned town;     /* sensors, citywide */
    double sigma_m;    /* sensors: spread around the centre */
    uint64_t rng;
};

static const char *const storm_phrases[] = {
    "Inbraak bezig, twee mannen bij de achterdeur.", /* burglary */
    "Vermist kind, 8 jaar, rode jas. Bel 112 als u haar ziet.", /* citywide */
    "Rookmelder slaat aan.",                         /* sensors, fire */
    "Geluidsoverlast gemeten boven de norm.",        /* sensors, nuisance */
};

/* The member of group g nearest to (lat, lon). */
static uint32_t nearest_member(const struct pg_pop *pop, uint32_t g, double lat, double lon)
{
    const struct pg_group *pg = &pop->groups[g];
    uint32_t best = pop->members[pg->first];
    double bd = INFINITY, k = cos(lat * PI / 180.0);
    for (uint32_t i = 0; i < pg->n; i++) {
        const struct pg_user *u = &pop->users[pop->members[pg->first + i]];
        double dy = u->lat - lat, dx = (u->lon - lon) * k, d = dx * dx + dy * dy;
        if (d < bd) {
            bd = d;
            best = pop->members[pg->first + i];
        }
    }
    return best;
}

/* Where the storm posts and who posts it; st->t0 is an offset from the start of the run.
 * Returns false (with a message) if it cannot. */
static bool storm_plan(const struct opts *o, const struct pg_pop *pop, struct storm *st)
{
    memset(st, 0, sizeof(*st));
    st->kind = o->storm;
    double at = o->storm_at >= 0 ? o->storm_at : o->duration / 3;
    st->t0 = (int64_t)(at * 1e6);
    st->rng = o->seed * 31337 + 17;
    /* The town with the most residents: the citywide alert and the sensors go there. */
    uint32_t per_town[8] = {0};
    for (uint32_t u = 0; u < pop->nusers; u++) {
        per_town[pop->users[u].town]++;
    }
    for (unsigned t = 1; t < pg_ntowns; t++) {
        if (per_town[t] > per_town[st->town]) {
            st->town = t;
        }
    }
    switch (o->storm) {
    case STORM_BURGLARY: {
        /* The district or neighbourhood group with the most members whose policy lets a
         * resident's burglary in progress through (police-only groups would refuse it). */
        uint32_t best = UINT32_MAX;
        for (uint32_t g = 0; g < pop->ngroups; g++) {
            const struct pg_group *pg = &pop->groups[g];
            if ((pg->kind == PG_DISTRICT || pg->kind == PG_NEIGHBOURHOOD) &&
                pg->policy != PG_POLICY_POLICE && pg->n &&
                (best == UINT32_MAX || pg->n > pop->groups[best].n)) {
                best = g;
            }
        }
        if (best == UINT32_MAX) {
            fprintf(stderr, "bench_broker: no district or neighbourhood group to post in\n");
            return false;
        }
        const struct pg_group *pg = &pop->groups[best];
        double slat = 0, slon = 0;
        for (uint32_t i = 0; i < pg->n; i++) {
            slat += pop->users[pop->members[pg->first + i]].lat;
            slon += pop->users[pop->members[pg->first + i]].lon;
        }
        st->n = 1;
        st->group = best;
        st->members = pg->n;
        st->lat = slat / pg->n;
        st->lon = slon / pg->n;
        st->author = nearest_member(pop, best, st->lat, st->lon);
        return true;
    }
    case STORM_CITYWIDE: {
        if (!pop->params.town_groups) {
            fprintf(stderr, "bench_broker: --storm citywide needs --citywide (on load and run)\n");
            return false;
        }
        st->n = 1;
        st->group = pop->town_group[st->town];
        st->members = pop->groups[st->group].n;
        st->lat = pg_towns[st->town].lat;
        st->lon = pg_towns[st->town].lon;
        st->author = nearest_member(pop, st->group, st->lat, st->lon);
        return true;
    }
    case STORM_SENSORS:
        st->n = o->storm_size;
        st->spacing = 1000000 / (int64_t)(o->storm_size ? o->storm_size : 1);
        st->lat = pg_towns[st->town].lat;
        st->lon = pg_towns[st->town].lon;
        st->sigma_m = pg_towns[st->town].sigma_m;
        return true;
    default:
        return true; /* none, churn: no storm reports */
    }
}

/* A standard normal value (Box-Muller). */
static double gauss(uint64_t *s)
{
    double u = pg_uniform(s), v = pg_uniform(s);
    return sqrt(-2.0 * log(u > 0 ? u : 1e-300)) * cos(2 * PI * v);
}

/* The k-th report of the storm, as sequence number seq, due at time_ms. */
static void storm_report(struct storm *st, uint32_t k, uint64_t seq, int64_t time_ms,
                         struct pg_report *r)
{
    Bb__Report *rep = r->rep;
    bb__report__init(rep);
    snprintf(r->id, sizeof(r->id), "r-%llu", (unsigned long long)seq);
    rep->schema_version = 1;
    rep->id = r->id;
    rep->time_ms = time_ms;
    rep->locale = "nl";
    rep->anonymity = BB__ANONYMITY__ANONYMITY_SCREEN_NAME;
    if (st->kind == STORM_SENSORS) {
        bool fire = pg_uniform(&st->rng) < 0.5;
        double lat = st->lat + gauss(&st->rng) * st->sigma_m / M_PER_DEG;
        double lon = st->lon + gauss(&st->rng) * st->sigma_m / (M_PER_DEG * cos(lat * PI / 180.0));
        snprintf(r->name, sizeof(r->name), "sensor-%u", k % 2000);
        rep->author_id = SENSOR_AUTHOR_BASE + k % 2000; /* 2,000 sensors, ~5 reports each */
        rep->lat = lat;
        rep->lon = lon;
        rep->category = fire ? BB__CATEGORY__CATEGORY_FIRE : BB__CATEGORY__CATEGORY_NUISANCE;
        rep->urgency = fire ? BB__URGENCY__URGENCY_RECENT : BB__URGENCY__URGENCY_INFORMATIONAL;
        rep->source = BB__SOURCE__SOURCE_SENSOR;
        snprintf(r->text, sizeof(r->text), "%s", storm_phrases[fire ? 2 : 3]);
    } else {
        bool city = st->kind == STORM_CITYWIDE;
        snprintf(r->name, sizeof(r->name), city ? "politie" : "buur%u", st->author + 1);
        rep->author_id = (uint64_t)st->author + 1;
        rep->group_id = (uint64_t)st->group + 1;
        rep->lat = st->lat;
        rep->lon = st->lon;
        rep->category =
            city ? BB__CATEGORY__CATEGORY_MISSING_PERSON : BB__CATEGORY__CATEGORY_BURGLARY;
        rep->urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
        rep->source = city ? BB__SOURCE__SOURCE_POLICE : BB__SOURCE__SOURCE_RESIDENT;
        snprintf(r->text, sizeof(r->text), "%s", storm_phrases[city ? 1 : 0]);
    }
    rep->author_screen_name = r->name;
    rep->text = r->text;
}

/* ---- run --------------------------------------------------------------------------------- */

/* Redis' own CPU seconds (used_cpu_sys + used_cpu_user of INFO cpu), -1 if unknown. */
static double redis_cpu(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO cpu");
    double v = -1;
    const char *s = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_cpu_sys:") : NULL;
    const char *u = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_cpu_user:") : NULL;
    if (s && u) {
        v = atof(s + 13) + atof(u + 14);
    }
    freeReplyObject(r);
    return v;
}

/* This process's CPU seconds (every thread). */
static double self_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

/* The CPU model (first "model name" of /proc/cpuinfo) into buf. */
static void cpu_model(char *buf, size_t len)
{
    char line[512];
    snprintf(buf, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof(line), f)) {
        char *p = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && p) {
            p++;
            while (*p == ' ' || *p == '\t') {
                p++;
            }
            p[strcspn(p, "\n")] = '\0';
            snprintf(buf, len, "%s", p);
            break;
        }
    }
    if (f) {
        fclose(f);
    }
}

/* s as a JSON string (quotes and backslashes escaped, control characters dropped). */
static void json_str(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\') {
            putchar('\\');
            putchar(*s);
        } else if ((unsigned char)*s >= 0x20) {
            putchar(*s);
        }
    }
    putchar('"');
}

static double ms(double us)
{
    return us / 1000.0;
}

static void wait_replies(redisContext *c, uint64_t *pending)
{
    while (*pending) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) {
            break;
        }
        freeReplyObject(r);
        (*pending)--;
    }
}

static int cmd_run(const struct opts *o)
{
    struct pg_params pp;
    struct pg_pop pop;
    population_params(o, &pp);
    if (pg_generate(&pp, &pop) != BB_OK) {
        fprintf(stderr, "bench_broker: out of memory\n");
        return 1;
    }
    size_t max = (size_t)(o->rate * o->duration * 2 + 16); /* normal reports at most */
    struct storm st;
    if (!storm_plan(o, &pop, &st)) {
        pg_free(&pop);
        return 2;
    }
    cap = max + st.n;
    intended_us = calloc(cap, sizeof(*intended_us));
    is_storm = calloc(cap, 1);
    first_us = calloc(cap, sizeof(*first_us));
    last_us = calloc(cap, sizeof(*last_us));
    dl_count = calloc(cap, sizeof(*dl_count));
    inbox_count = calloc(cap, sizeof(*inbox_count));
    file_count = calloc(cap, sizeof(*file_count));
    file_last_us = calloc(cap, sizeof(*file_last_us));
    if (!intended_us || !is_storm || !first_us || !last_us || !dl_count || !inbox_count ||
        !file_count || !file_last_us) {
        fprintf(stderr, "bench_broker: out of memory\n");
        return 1;
    }
    /* The worker's file: read from its current end (earlier runs' lines are not ours). */
    int wfd = -1;
    if (o->worker_file) {
        for (int i = 0; i < 100 && wfd < 0; i++) {
            wfd = open(o->worker_file, O_RDONLY | O_CLOEXEC);
            if (wfd < 0) {
                usleep(100 * 1000);
            }
        }
        if (wfd < 0) {
            fprintf(stderr, "bench_broker: cannot open %s: %s\n", o->worker_file,
                    strerror(errno));
            return 1;
        }
        lseek(wfd, 0, SEEK_END);
    }
    redisContext *c = connect_or_die(o->redis);
    long long mem0 = used_memory(c);
    double cpu0 = o->broker_pid ? bb_bench_cpu_seconds(o->broker_pid) : -1;
    double wcpu0 = o->worker_pid ? bb_bench_cpu_seconds(o->worker_pid) : -1;
    double rcpu0 = redis_cpu(c), scpu0 = self_cpu();
    pthread_t reader, tail, churner;
    pthread_create(&reader, NULL, reader_main, (void *)o);
    if (wfd >= 0) {
        pthread_create(&tail, NULL, tail_main, &wfd);
    }
    struct churn ch = {.o = o, .pop = &pop};
    bool churning = o->churn_rate > 0;
    usleep(100 * 1000);

    uint64_t rng = o->seed * 7919 + 1;
    Bb__Report rep;
    Bb__Media media, *media_list[1];
    struct pg_report pr = {.rep = &rep};
    uint8_t *buf = malloc(1 << 16);
    int64_t start = bb_bench_now_us(), next = start;
    st.t0 += start;
    if (churning) {
        pthread_create(&churner, NULL, churn_main, &ch);
    }
    uint64_t seq = 0, sent = 0, pending = 0;
    uint32_t sk = 0; /* storm reports sent */
    int64_t end = start + (int64_t)(o->duration * 1e6);
    for (;;) {
        int64_t due_n = next < end && sent < max ? next : INT64_MAX;
        int64_t due_s = sk < st.n ? st.t0 + (int64_t)sk * st.spacing : INT64_MAX;
        int64_t due = due_n < due_s ? due_n : due_s;
        if (due == INT64_MAX) {
            break;
        }
        int64_t t = bb_bench_now_us();
        if (t < due) {
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
            if (due - t > 200) {
                usleep((useconds_t)(due - t - 100));
            }
            continue;
        }
        /* Open loop: every report due by now goes out, stamped with the
         * time it was due. */
        for (;;) {
            due_n = next < end && sent < max ? next : INT64_MAX;
            due_s = sk < st.n ? st.t0 + (int64_t)sk * st.spacing : INT64_MAX;
            if (due_n > t && due_s > t) {
                break;
            }
            if (due_s < due_n) {
                storm_report(&st, sk, seq, due_s / 1000, &pr);
                intended_us[seq] = due_s;
                is_storm[seq] = 1;
                sk++;
            } else {
                pg_report(&pop, &rng, seq, next / 1000, &pr, &media, media_list);
                if (o->group_only) {
                    /* Posted in the author's first (street or neighbourhood) group,
                     * at a point no area or watch circle covers: the reach is that
                     * group's members, a few hundred people. */
                    uint32_t a = (uint32_t)(rep.author_id - 1);
                    rep.group_id = pop.ugroups[pop.ufirst[a]] + 1;
                    rep.lat = 53.6;
                    rep.lon = 3.2;
                }
                intended_us[seq] = next;
                sent++;
                next += (int64_t)(-log(1.0 - pg_uniform(&rng)) / o->rate * 1e6);
            }
            size_t len = bb__report__get_packed_size(&rep);
            bb__report__pack(&rep, buf);
            redisAppendCommand(c, "XADD bb:reports * p %b", buf, len);
            pending++;
            seq++;
        }
        int done = 0;
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            fprintf(stderr, "bench_broker: %s\n", c->errstr);
            return 1;
        }
    }
    wait_replies(c, &pending);
    double send_s = (double)(bb_bench_now_us() - start) / 1e6;
    if (churning) {
        atomic_store(&stop_churn, true);
        pthread_join(churner, NULL);
    }
    /* Let the tail drain: up to 10 s after the last report. */
    for (int i = 0; i < 100 && atomic_load(&got_reports) < seq; i++) {
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
    double rcpu = redis_cpu(c) - rcpu0, scpu = self_cpu() - scpu0;

    /* The worker: until its file holds every inbox delivery, or nothing came for 3 s
     * (at most 20 s). */
    unsigned long inbox_total = 0;
    for (size_t i = 0; i < seq; i++) {
        inbox_total += inbox_count[i];
    }
    double worker_s = 0, wcpu = -1;
    long wrss = -1, wpeak = -1;
    if (wfd >= 0) {
        unsigned long before = atomic_load(&file_lines);
        int idle = 0;
        for (int i = 0; i < 200 && atomic_load(&file_lines) < inbox_total && idle < 30; i++) {
            usleep(100 * 1000);
            unsigned long now_lines = atomic_load(&file_lines);
            idle = now_lines == before ? idle + 1 : 0;
            before = now_lines;
        }
        atomic_store(&stop_tail, true);
        pthread_join(tail, NULL);
        close(wfd);
        worker_s = (double)(bb_bench_now_us() - start) / 1e6;
    }
    if (o->worker_pid) {
        wcpu = bb_bench_cpu_seconds(o->worker_pid) - wcpu0;
        wrss = bb_bench_rss_kb(o->worker_pid, 0);
        wpeak = bb_bench_rss_kb(o->worker_pid, 1);
    }

    /* Figures. Normal reports: first batch (= last, one script); storm reports: last batch. */
    static struct bb_hist lat, slat, before_h, during_h, dlat, sdlat; /* large: not on the stack */
    int64_t storm_end = st.n ? st.t0 + (int64_t)(st.n - 1) * st.spacing : 0;
    unsigned long rp = 0, dl = 0, srp = 0, sdl = 0, dlrep = 0, sdlrep = 0, incomplete = 0;
    for (size_t i = 0; i < seq; i++) {
        if (is_storm[i] && last_us[i] > storm_end) {
            storm_end = last_us[i];
        }
    }
    if (st.n && storm_end < st.t0 + 1000000) {
        storm_end = st.t0 + 1000000; /* a window of at least a second */
    }
    for (size_t i = 0; i < seq; i++) {
        if (is_storm[i]) {
            sdl += dl_count[i];
            if (last_us[i]) {
                srp++;
                bb_hist_add(&slat, (uint64_t)(last_us[i] > intended_us[i] ? last_us[i] - intended_us[i] : 0));
            }
        } else {
            dl += dl_count[i];
            if (first_us[i]) {
                uint64_t l =
                    (uint64_t)(first_us[i] > intended_us[i] ? first_us[i] - intended_us[i] : 0);
                rp++;
                bb_hist_add(&lat, l);
                if (st.n && intended_us[i] < st.t0) {
                    bb_hist_add(&before_h, l);
                } else if (st.n && intended_us[i] <= storm_end) {
                    bb_hist_add(&during_h, l);
                }
            }
        }
        if (wfd >= 0 && inbox_count[i]) {
            if (file_count[i] >= inbox_count[i]) {
                uint64_t l = (uint64_t)(file_last_us[i] > intended_us[i]
                                            ? file_last_us[i] - intended_us[i]
                                            : 0);
                if (is_storm[i]) {
                    bb_hist_add(&sdlat, l);
                    sdlrep++;
                } else {
                    bb_hist_add(&dlat, l);
                    dlrep++;
                }
            } else {
                incomplete++;
            }
        }
    }
    unsigned long all = atomic_load(&got_deliveries);
    double p50 = ms(bb_hist_pct(&lat, 0.50)), p99 = ms(bb_hist_pct(&lat, 0.99)),
           p999 = ms(bb_hist_pct(&lat, 0.999)), mx = ms((double)lat.max);
    double dps = dl / send_s;
    double bpd = all ? (double)atomic_load(&got_bytes) / all : 0;
    double mpd = all && mem0 >= 0 ? (double)(mem1 - mem0) / all : 0;
    unsigned long lines = atomic_load(&file_lines);
    char model[256];
    cpu_model(model, sizeof(model));
    double churn_ps = ch.seconds > 0 ? (double)ch.st.applied / ch.seconds : 0;
    if (o->json) {
        printf("{\"users\":%u,\"rate\":%.0f,\"duration_s\":%.1f,\"sent\":%" PRIu64
               ",\"reports_with_deliveries\":%lu,\"deliveries\":%lu,\"deliveries_per_report\":%.1f,"
               "\"deliveries_per_s\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,"
               "\"max_ms\":%.3f,\"payload_bytes_per_delivery\":%.2f,"
               "\"redis_bytes_per_delivery\":%.2f,\"broker_cpu_s\":%.2f,"
               "\"broker_cpu_s_per_million_deliveries\":%.2f,\"broker_rss_kb\":%ld,"
               "\"wall_s\":%.1f",
               o->users, o->rate, o->duration, sent, rp, dl, rp ? (double)dl / rp : 0, dps, p50,
               p99, p999, mx, bpd, mpd, cpu, all ? cpu / (all / 1e6) : 0, rss, total_s);
        printf(",\"redis_cpu_s\":%.2f,\"bench_cpu_s\":%.2f", rcpu, scpu);
        printf(",\"all_deliveries\":%lu,\"seed\":%" PRIu64 ",\"mix\":\"%s\",\"citywide\":%s",
               all, o->seed, o->group_only ? "group" : "field", o->citywide ? "true" : "false");
        printf(",\"machine\":{\"nproc\":%ld,\"cpu\":", sysconf(_SC_NPROCESSORS_ONLN));
        json_str(model);
        printf("},\"commit\":");
        json_str(o->commit);
        printf(",\"storm\":\"%s\",\"storm_at_s\":%.2f,\"storm_reports\":%u,"
               "\"storm_reports_with_deliveries\":%lu,\"storm_deliveries\":%lu,"
               "\"storm_p50_ms\":%.3f,\"storm_p99_ms\":%.3f,\"storm_max_ms\":%.3f",
               storm_names[o->storm], st.n ? (double)(st.t0 - start) / 1e6 : 0, sk, srp, sdl,
               ms(bb_hist_pct(&slat, 0.50)), ms(bb_hist_pct(&slat, 0.99)), ms((double)slat.max));
        if (st.kind == STORM_BURGLARY || st.kind == STORM_CITYWIDE) {
            printf(",\"storm_group_id\":%u,\"storm_group_members\":%u", st.group + 1, st.members);
        }
        printf(",\"storm_window_s\":%.2f,\"normal_before_storm_reports\":%" PRIu64
               ",\"normal_before_storm_p99_ms\":%.3f,\"normal_during_storm_reports\":%" PRIu64
               ",\"normal_during_storm_p99_ms\":%.3f,\"normal_during_storm_max_ms\":%.3f",
               st.n ? (double)(storm_end - st.t0) / 1e6 : 0, before_h.n,
               ms(bb_hist_pct(&before_h, 0.99)), during_h.n, ms(bb_hist_pct(&during_h, 0.99)),
               ms((double)during_h.max));
        printf(",\"churn_rate\":%.0f,\"churn_events\":%" PRIu64 ",\"churn_rejected\":%" PRIu64
               ",\"churn_joins\":%" PRIu64 ",\"churn_leaves\":%" PRIu64
               ",\"churn_preferences\":%" PRIu64 ",\"churn_applied_per_s\":%.1f",
               churning ? o->churn_rate : 0, ch.st.applied, ch.st.rejected, ch.kinds[0],
               ch.kinds[1], ch.kinds[2], churn_ps);
        if (wfd >= 0 || o->worker_file) {
            printf(",\"worker_file_lines\":%lu,\"inbox_deliveries\":%lu,\"delivered_reports\":%lu,"
                   "\"delivered_incomplete_reports\":%lu,\"delivered_p50_ms\":%.3f,"
                   "\"delivered_p99_ms\":%.3f,\"delivered_p999_ms\":%.3f,\"delivered_max_ms\":%.3f,"
                   "\"storm_delivered_reports\":%lu,\"storm_delivered_p50_ms\":%.3f,"
                   "\"storm_delivered_max_ms\":%.3f,\"worker_wall_s\":%.1f",
                   lines, inbox_total, dlrep, incomplete, ms(bb_hist_pct(&dlat, 0.50)),
                   ms(bb_hist_pct(&dlat, 0.99)), ms(bb_hist_pct(&dlat, 0.999)),
                   ms((double)dlat.max), sdlrep, ms(bb_hist_pct(&sdlat, 0.50)),
                   ms((double)sdlat.max), worker_s);
        }
        if (o->worker_pid) {
            printf(",\"worker_cpu_s\":%.2f,\"worker_cpu_us_per_delivery\":%.2f,"
                   "\"worker_rss_kb\":%ld,\"worker_peak_rss_kb\":%ld",
                   wcpu, lines ? wcpu * 1e6 / (double)lines : 0, wrss, wpeak);
        }
        printf("}\n");
    } else {
        printf("machine         %ld cores, %s; commit %s\n", sysconf(_SC_NPROCESSORS_ONLN), model,
               o->commit);
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
                   all ? cpu / (all / 1e6) : 0, rss);
        }
        printf("redis, bench    %.2f and %.2f CPU s\n", rcpu, scpu);
        if (st.n) {
            printf("storm %-9s %u reports at %.1f s, %lu reached someone, %lu deliveries; "
                   "latency to the last batch p50 %.3f p99 %.3f max %.3f ms\n",
                   storm_names[o->storm], sk, (double)(st.t0 - start) / 1e6, srp, sdl,
                   ms(bb_hist_pct(&slat, 0.50)), ms(bb_hist_pct(&slat, 0.99)),
                   ms((double)slat.max));
            printf("normal p99 (ms) before the storm %.3f (%" PRIu64 "), during it (%.2f s) "
                   "%.3f (%" PRIu64 ")\n",
                   ms(bb_hist_pct(&before_h, 0.99)), before_h.n, (double)(storm_end - st.t0) / 1e6,
                   ms(bb_hist_pct(&during_h, 0.99)), during_h.n);
        }
        if (churning) {
            printf("churn           %" PRIu64 " changes applied (%.1f/s), %" PRIu64 " refused\n",
                   ch.st.applied, churn_ps, ch.st.rejected);
        }
        if (wfd >= 0 || o->worker_file) {
            printf("worker file     %lu lines of %lu inbox deliveries; %lu reports complete "
                   "(%lu not): p50 %.3f p99 %.3f p99.9 %.3f max %.3f ms to the last line\n",
                   lines, inbox_total, dlrep, incomplete, ms(bb_hist_pct(&dlat, 0.50)),
                   ms(bb_hist_pct(&dlat, 0.99)), ms(bb_hist_pct(&dlat, 0.999)),
                   ms((double)dlat.max));
            if (st.n) {
                printf("storm delivered %lu reports complete: p50 %.3f max %.3f ms to the last line\n",
                       sdlrep, ms(bb_hist_pct(&sdlat, 0.50)), ms((double)sdlat.max));
            }
        }
        if (o->worker_pid) {
            printf("worker          %.2f CPU s, RSS %ld kB (peak %ld kB)\n", wcpu, wrss, wpeak);
        }
    }
    free(buf);
    free(intended_us);
    free(is_storm);
    free(first_us);
    free(last_us);
    free(dl_count);
    free(inbox_count);
    free(file_count);
    free(file_last_us);
    redisFree(c);
    pg_free(&pop);
    return ch.failed ? 1 : 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_broker load --redis ADDR --users N [--seed S] [--citywide]\n"
            "       bench_broker run --redis ADDR --users N --rate R --duration S\n"
            "                        [--broker-pid PID] [--seed S] [--mix field|group] [--json]\n"
            "                        [--storm burglary|citywide|sensors|churn] [--storm-at S]\n"
            "                        [--storm-reports N] [--churn-rate N] [--citywide]\n"
            "                        [--worker-file PATH] [--worker-pid PID] [--commit ID]\n"
            "  --mix group: every report posted in the author's street or neighbourhood\n"
            "               group at a point no area covers (reach: that group)\n"
            "  --storm burglary: one burglary in progress in the largest district or\n"
            "               neighbourhood group, at its centre, by its member nearest to it\n"
            "  --storm citywide: one police alert in the town group of the largest town\n"
            "               (needs --citywide on load and run)\n"
            "  --storm sensors: --storm-reports (10000) sensor reports in ~1 s over that town\n"
            "  --storm churn: joins, leaves and preference changes into bb:directory at\n"
            "               --churn-rate (100) per second for the whole run; --churn-rate\n"
            "               with another storm (or none) adds the same churn to it\n"
            "  --storm-at: seconds into the run (default: a third of --duration)\n"
            "  --worker-file: the file a worker's file plug-in appends inbox deliveries to;\n"
            "               each report is timed to its last line there\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"redis", required_argument, NULL, 'r'},      {"users", required_argument, NULL, 'u'},
        {"seed", required_argument, NULL, 's'},       {"rate", required_argument, NULL, 'R'},
        {"duration", required_argument, NULL, 'd'},   {"json", no_argument, NULL, 'j'},
        {"broker-pid", required_argument, NULL, 'p'}, {"help", no_argument, NULL, 'h'},
        {"mix", required_argument, NULL, 'm'},        {"storm", required_argument, NULL, 'S'},
        {"storm-at", required_argument, NULL, 'A'},   {"storm-reports", required_argument, NULL, 'N'},
        {"churn-rate", required_argument, NULL, 'C'}, {"citywide", no_argument, NULL, 'c'},
        {"worker-file", required_argument, NULL, 'W'}, {"worker-pid", required_argument, NULL, 'P'},
        {"commit", required_argument, NULL, 'G'},     {NULL, 0, NULL, 0}};
    struct opts o = {.redis = "127.0.0.1:6379",
                     .users = 200000,
                     .seed = 1,
                     .rate = 1000,
                     .duration = 10,
                     .storm_at = -1,
                     .storm_size = 10000,
                     .churn_rate = -1,
                     .commit = "unknown"};
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
        case 'S':
            o.storm = -1;
            for (int k = 0; k < (int)(sizeof(storm_names) / sizeof(storm_names[0])); k++) {
                if (strcmp(optarg, storm_names[k]) == 0) {
                    o.storm = k;
                }
            }
            if (o.storm < 0) {
                usage(stderr);
                return 2;
            }
            break;
        case 'A':
            o.storm_at = atof(optarg);
            break;
        case 'N':
            o.storm_size = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'C':
            o.churn_rate = atof(optarg);
            break;
        case 'c':
            o.citywide = true;
            break;
        case 'W':
            o.worker_file = optarg;
            break;
        case 'P':
            o.worker_pid = atoi(optarg);
            break;
        case 'G':
            o.commit = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (o.churn_rate < 0) {
        o.churn_rate = o.storm == STORM_CHURN ? 100 : 0;
    }
    if (o.users < 100 || o.rate <= 0 || o.duration <= 0 || o.storm_at >= o.duration ||
        (o.storm == STORM_SENSORS && (o.storm_size < 1 || o.storm_size > 1000000)) ||
        (o.storm == STORM_CHURN && o.churn_rate <= 0)) {
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
