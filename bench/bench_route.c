/* bench_route: the routing hot path on a synthetic population (bench/popgen.h).
 *
 *   bench_route [--users N] [--reports M] [--seed S] [--runs R] [--batch B] [--level L]
 *               [--dict] [--zorder] [--watch-cells C] [--no-encode] [--json]
 *
 * Builds N residents around six Dutch towns with their groups and watch areas, loads them into
 * the directory, then routes M reports on this one thread, R times (medians are reported). Each
 * run dates the same reports one day later, so hourly caps start afresh and every run makes the
 * same decisions. Unless --no-encode, the same reports are then routed and encoded into
 * delivery batches (zstd level L, B recipients a batch, a trained dictionary with --dict), to
 * give deliveries per second including the encoder. Rates are per CPU second of this thread
 * (per core: other processes on the machine do not count), with wall-clock rates beside them.
 * Prints a table, or one JSON line. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "directory.h"
#include "output.h"
#include "popgen.h"
#include "report.pb-c.h"
#include "route.h"
#include "wire.h"

#define BASE_TIME_MS 1800000000000LL /* 2027-01-15 08:00 UTC: a Friday in winter */
#define REPORT_SPACING_MS 3600       /* 1,000 reports an hour */
#define DAY_MS 86400000LL
#define MAX_RUNS 31

struct opts {
    uint32_t users;
    uint32_t reports;
    uint64_t seed;
    unsigned runs;
    unsigned batch;
    int level;
    bool dict;
    bool encode;
    bool json;
    bool zorder;
    bool broadcast;
    unsigned watch_cells;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_route [--users N] [--reports M] [--seed S] [--runs R] [--batch B]\n"
            "                   [--level L] [--dict] [--zorder] [--watch-cells C] [--no-encode]\n"
            "                   [--broadcast] [--json]\n"
            "  defaults: 200000 users, 20000 reports, seed 1, 5 runs, batch 256, level 3,\n"
            "            8 cells per watch area (the directory's watch_max_cells)\n"
            "  --zorder: load residents along the geohash curve (neighbours in neighbouring\n"
            "            slots) instead of by id, as a Redis snapshot comes\n"
            "  --broadcast: afterwards, one police alert to a group of every resident\n"
            "            (routed and encoded once: the whole country at one alert)\n");
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end) {
        return false;
    }
    *out = v;
    return true;
}

static int parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.users = 200000,
                       .reports = 20000,
                       .seed = 1,
                       .runs = 5,
                       .batch = 256,
                       .level = 3,
                       .encode = true,
                       .watch_cells = 8};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v;
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--dict") == 0) {
            o->dict = true;
        } else if (strcmp(a, "--no-encode") == 0) {
            o->encode = false;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
        } else if (strcmp(a, "--broadcast") == 0) {
            o->broadcast = true;
        } else if (strcmp(a, "--zorder") == 0) {
            o->zorder = true;
        } else if (has_value && parse_u64(argv[i + 1], &v)) {
            i++;
            if (strcmp(a, "--users") == 0 && v >= 100 && v <= 50000000) {
                o->users = (uint32_t)v;
            } else if (strcmp(a, "--reports") == 0 && v >= 1 && v <= 10000000) {
                o->reports = (uint32_t)v;
            } else if (strcmp(a, "--seed") == 0) {
                o->seed = v;
            } else if (strcmp(a, "--runs") == 0 && v >= 1 && v <= MAX_RUNS) {
                o->runs = (unsigned)v;
            } else if (strcmp(a, "--batch") == 0 && v >= 1 && v <= 10000) {
                o->batch = (unsigned)v;
            } else if (strcmp(a, "--level") == 0 && v >= 1 && v <= 19) {
                o->level = (int)v;
            } else if (strcmp(a, "--watch-cells") == 0 && v >= 4 && v <= 32) {
                o->watch_cells = (unsigned)v;
            } else {
                fprintf(stderr, "bench_route: bad value for %s\n", a);
                return -1;
            }
        } else {
            fprintf(stderr, "bench_route: unknown or incomplete option %s\n", a);
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

/* CPU time of this thread: what "per core" means when other processes share the machine. */
static double cpu_s(void)
{
    return clock_s(CLOCK_THREAD_CPUTIME_ID);
}

/* Resident set size in bytes, from /proc/self/statm. */
static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (!f) {
        return 0;
    }
    if (fscanf(f, "%lu %lu", &size, &resident) != 2) {
        resident = 0;
    }
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The reports, generated once, outside every timing. */
struct reports {
    uint32_t n;
    Bb__Report *rep;
    struct pg_report *pr;
    Bb__Media *media;
    Bb__Media **mlist;
    int64_t *t0;
};

static int reports_make(const struct pg_pop *pop, uint32_t n, uint64_t seed, struct reports *rs)
{
    rs->n = n;
    rs->rep = calloc(n, sizeof(*rs->rep));
    rs->pr = calloc(n, sizeof(*rs->pr));
    rs->media = calloc(n, sizeof(*rs->media));
    rs->mlist = calloc(n, sizeof(*rs->mlist));
    rs->t0 = calloc(n, sizeof(*rs->t0));
    if (!rs->rep || !rs->pr || !rs->media || !rs->mlist || !rs->t0) {
        return BB_ENOMEM;
    }
    uint64_t rng = seed ^ 0x5eed5eed5eedull;
    for (uint32_t i = 0; i < n; i++) {
        rs->pr[i].rep = &rs->rep[i];
        rs->t0[i] = BASE_TIME_MS + (int64_t)i * REPORT_SPACING_MS;
        pg_report(pop, &rng, i, rs->t0[i], &rs->pr[i], &rs->media[i], &rs->mlist[i]);
    }
    return BB_OK;
}

static void reports_free(struct reports *rs)
{
    free(rs->rep);
    free(rs->pr);
    free(rs->media);
    free(rs->mlist);
    free(rs->t0);
}

static void reports_date(struct reports *rs, unsigned day)
{
    for (uint32_t i = 0; i < rs->n; i++) {
        rs->rep[i].time_ms = rs->t0[i] + (int64_t)day * DAY_MS;
    }
}

struct tally {
    uint64_t decisions, deliveries, recipients, social;
    uint64_t out_deliveries, out_bytes, out_entries, raw_bytes, zstd_bytes;
};

/* One pass over the reports: routing only (enc NULL) or routing and encoding. */
static int pass(struct bb_router *router, struct bb_dir *dir, struct reports *rs,
                struct bb_encoder *enc, struct bb_out *out, struct tally *t, double *cpu,
                double *wall)
{
    memset(t, 0, sizeof(*t));
    double start = now_s(), start_cpu = cpu_s();
    for (uint32_t i = 0; i < rs->n; i++) {
        const struct bb_route_result *res;
        int rc = bb_route_report(router, &rs->rep[i], NULL, &res);
        if (rc != BB_OK) {
            fprintf(stderr, "bench_route: route %s: %s\n", rs->rep[i].id, bb_strerror(rc));
            return rc;
        }
        t->decisions += res->decisions;
        t->deliveries += res->deliveries;
        t->recipients += res->recipients;
        t->social += res->social.n;
        if (enc) {
            bb_out_reset(out);
            rc = bb_encode_report(enc, dir, &rs->rep[i], res, rs->rep[i].time_ms, out);
            if (rc != BB_OK) {
                fprintf(stderr, "bench_route: encode %s: %s\n", rs->rep[i].id, bb_strerror(rc));
                return rc;
            }
            t->out_deliveries += out->deliveries;
            t->out_bytes += out->len;
            t->out_entries += out->n;
            t->raw_bytes += out->raw_bytes;
            t->zstd_bytes += out->zstd_bytes;
        }
    }
    *cpu = cpu_s() - start_cpu;
    *wall = now_s() - start;
    return BB_OK;
}

/* A dictionary trained on what readers are shown for the first reports. */
static struct bb_zdict *train_dict(const struct reports *rs, int level)
{
    unsigned n = rs->n < 4000 ? rs->n : 4000;
    size_t *sizes = calloc(n, sizeof(*sizes));
    uint8_t *samples = malloc((size_t)n * 1024);
    uint8_t *dict = malloc(64 * 1024);
    struct bb_zdict *d = NULL;
    size_t off = 0, len = 0;
    if (!sizes || !samples || !dict) {
        goto out;
    }
    for (unsigned i = 0; i < n; i++) {
        Bb__Notification nt;
        char cell[16];
        bb_notification_from_report(&nt, &rs->rep[i], "Buurt 123", 7, cell);
        size_t sz = bb__notification__get_packed_size(&nt);
        if (sz > 1024) {
            continue;
        }
        bb__notification__pack(&nt, samples + off);
        sizes[i] = sz;
        off += sz;
    }
    if (bb_zdict_train(samples, sizes, n, dict, 64 * 1024, &len) == BB_OK) {
        d = bb_zdict_new(dict, len, level);
    }
out:
    free(sizes);
    free(samples);
    free(dict);
    return d;
}

/* One alert to everyone: a group of every resident, then one police report
 * in progress in it, routed and encoded once (wall clock, this thread). */
struct bcast {
    double join_s, route_s, encode_s;
    uint64_t recipients, deliveries, entries, bytes;
    size_t rss;
};

/* The group, made while the index has no readers yet (writes in place, as
 * a snapshot load does; with readers every join would copy the member list). */
static int broadcast_group(struct bb_dir *dir, const struct pg_pop *pop, bool zorder,
                           struct bcast *b)
{
    char why[128] = "";
    Bb__Policy policy = BB__POLICY__INIT;
    Bb__Group g = BB__GROUP__INIT;
    g.id = (uint64_t)pop->ngroups + 1000000;
    g.name = "Heel Nederland";
    g.policy = &policy;
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    ev.schema_version = 1;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT;
    ev.group_upsert = &g;
    double t = now_s();
    int rc = bb_dir_apply(dir, &ev, why, sizeof(why));
    Bb__Membership m = BB__MEMBERSHIP__INIT;
    m.group_id = g.id;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
    ev.member_add = &m;
    /* In slot order (the order pg_load gave users their slots), so each
     * member goes at the end of the group's list rather than into it. */
    for (uint32_t i = 0; rc == BB_OK && i < pop->nusers; i++) {
        m.user_id = (zorder ? pop->zorder[i] : i) + 1;
        rc = bb_dir_apply(dir, &ev, why, sizeof(why));
    }
    b->join_s = now_s() - t;
    if (rc != BB_OK) {
        fprintf(stderr, "bench_route: broadcast group: %s %s\n", bb_strerror(rc), why);
    }
    return rc;
}

static int broadcast(struct bb_dir *dir, struct bb_router *router, struct bb_encoder *enc,
                     const struct pg_pop *pop, const Bb__Report *like, struct bcast *b)
{
    double t;
    int rc;
    Bb__Report r = *like;
    r.id = "landelijk-alarm";
    r.group_id = (uint64_t)pop->ngroups + 1000000;
    r.author_id = 1;
    r.source = BB__SOURCE__SOURCE_POLICE;
    r.urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
    r.category = BB__CATEGORY__CATEGORY_MISSING_PERSON;
    const struct bb_route_result *res;
    t = now_s();
    rc = bb_route_report(router, &r, NULL, &res);
    b->route_s = now_s() - t;
    if (rc != BB_OK) {
        return rc;
    }
    b->recipients = res->recipients;
    struct bb_out out = {0};
    t = now_s();
    rc = bb_encode_report(enc, dir, &r, res, r.time_ms, &out);
    b->encode_s = now_s() - t;
    b->deliveries = out.deliveries;
    b->entries = out.n;
    b->bytes = out.len;
    b->rss = rss_bytes();
    bb_out_free(&out);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse(argc, argv, &o) != 0) {
        return 2;
    }

    /* The population. */
    struct pg_params pp;
    pg_params_default(&pp);
    pp.seed = o.seed;
    pp.users = o.users;
    struct pg_pop pop;
    double t = now_s();
    if (pg_generate(&pp, &pop) != BB_OK) {
        fprintf(stderr, "bench_route: out of memory building the population\n");
        return 1;
    }
    double gen_s = now_s() - t;
    struct reports rs;
    if (reports_make(&pop, o.reports, o.seed, &rs) != BB_OK) {
        fprintf(stderr, "bench_route: out of memory building reports\n");
        return 1;
    }

    /* The index. */
    struct bb_dir_params dp = {
        .default_precision = 7, .watch_max_cells = o.watch_cells, .max_radius_m = 5000};
    size_t rss0 = rss_bytes();
    t = now_s();
    struct bb_dir *dir = bb_dir_new(&dp);
    char why[128] = "";
    int rc = dir ? pg_load(&pop, dir, o.zorder, why, sizeof(why)) : BB_ENOMEM;
    if (rc != BB_OK) {
        fprintf(stderr, "bench_route: load: %s %s\n", bb_strerror(rc), why);
        return 1;
    }
    double load_s = now_s() - t;
    size_t rss1 = rss_bytes();
    struct bb_dir_stats st;
    bb_dir_stats(dir, &st);
    /* After the figures of the population itself. */
    struct bcast bc = {0};
    if (o.broadcast && broadcast_group(dir, &pop, o.zorder, &bc) != BB_OK) {
        return 1;
    }

    /* Routing only. */
    struct bb_router *router = bb_router_new(dir);
    if (!router) {
        fprintf(stderr, "bench_route: out of memory\n");
        return 1;
    }
    struct tally tr, te;
    double el[MAX_RUNS], wl[MAX_RUNS], cpu, wall;
    unsigned day = 0;
    reports_date(&rs, day++);
    if (pass(router, dir, &rs, NULL, NULL, &tr, &cpu, &wall) != BB_OK) { /* warm-up */
        return 1;
    }
    for (unsigned r = 0; r < o.runs; r++) {
        reports_date(&rs, day++);
        if (pass(router, dir, &rs, NULL, NULL, &tr, &el[r], &wl[r]) != BB_OK) {
            return 1;
        }
    }
    double route_s = median(el, o.runs), route_wall = median(wl, o.runs);

    /* Routing and encoding. */
    double enc_s = 0, enc_wall = 0;
    struct bb_encoder *enc = NULL;
    struct bb_zdict *zd = NULL;
    struct bb_out out = {0};
    memset(&te, 0, sizeof(te));
    if (o.encode) {
        enc = bb_encoder_new(o.level, o.batch);
        if (!enc) {
            fprintf(stderr, "bench_route: no encoder\n");
            return 1;
        }
        if (o.dict) {
            zd = train_dict(&rs, o.level);
            if (!zd) {
                fprintf(stderr, "bench_route: dictionary training failed\n");
                return 1;
            }
            bb_encoder_set_dict(enc, zd);
        }
        reports_date(&rs, day++);
        if (pass(router, dir, &rs, enc, &out, &te, &cpu, &wall) != BB_OK) {
            return 1;
        }
        for (unsigned r = 0; r < o.runs; r++) {
            reports_date(&rs, day++);
            if (pass(router, dir, &rs, enc, &out, &te, &el[r], &wl[r]) != BB_OK) {
                return 1;
            }
        }
        enc_s = median(el, o.runs);
        enc_wall = median(wl, o.runs);
    }

    if (o.broadcast) {
        if (!enc && !(enc = bb_encoder_new(o.level, o.batch))) {
            fprintf(stderr, "bench_route: no encoder\n");
            return 1;
        }
        reports_date(&rs, day++);
        if (broadcast(dir, router, enc, &pop, &rs.rep[0], &bc) != BB_OK) {
            return 1;
        }
    }

    /* Figures. */
    double n = (double)st.users;
    double dps = (double)tr.decisions / route_s;
    double ns_per = route_s * 1e9 / (double)tr.decisions;
    double dlv_per_rep = (double)tr.deliveries / o.reports;
    double rec_per_rep = (double)tr.recipients / o.reports;
    double dec_per_rep = (double)tr.decisions / o.reports;
    double idx_b = (double)st.bytes_users / n, tot_b = (double)st.bytes_total / n;
    double rss_b = (double)(rss1 > rss0 ? rss1 - rss0 : 0) / n;
    double enc_dps = o.encode ? (double)te.out_deliveries / enc_s : 0;
    double b_per_dlv = o.encode ? (double)te.out_bytes / (double)te.out_deliveries : 0;
    double ratio = o.encode && te.raw_bytes ? (double)te.zstd_bytes / (double)te.raw_bytes : 0;
    double members_per = (double)st.memberships / n;
    double watch_per = (double)st.watch_cells / n;

    if (o.json) {
        printf("{\"bench\":\"route\",\"users\":%zu,\"groups\":%zu,\"memberships\":%zu,"
               "\"watch_cells\":%zu,\"cells\":%zu,\"reports\":%u,\"seed\":%llu,\"runs\":%u,"
               "\"load_s\":%.3f,\"gen_s\":%.3f,\"index_bytes_per_user\":%.1f,"
               "\"total_bytes_per_user\":%.1f,\"rss_bytes_per_user\":%.1f,"
               "\"decisions_per_s\":%.0f,\"ns_per_decision\":%.2f,\"decisions_per_report\":%.1f,"
               "\"recipients_per_report\":%.1f,\"deliveries_per_report\":%.1f,"
               "\"reports_per_s\":%.0f,\"route_deliveries_per_s\":%.0f,"
               "\"decisions_per_s_wall\":%.0f,\"encode_deliveries_per_s_wall\":%.0f,"
               "\"encode\":%s,\"batch\":%u,\"level\":%d,\"dict\":%s,"
               "\"encode_deliveries_per_s\":%.0f,\"encode_reports_per_s\":%.0f,"
               "\"bytes_per_delivery\":%.2f,\"payload_ratio\":%.3f,\"slot_order\":\"%s\","
               "\"watch_max_cells\":%u",
               st.users, st.groups, st.memberships, st.watch_cells, st.cells, o.reports,
               (unsigned long long)o.seed, o.runs, load_s, gen_s, idx_b, tot_b, rss_b, dps, ns_per,
               dec_per_rep, rec_per_rep, dlv_per_rep, o.reports / route_s,
               (double)tr.deliveries / route_s, (double)tr.decisions / route_wall,
               o.encode ? (double)te.out_deliveries / enc_wall : 0, o.encode ? "true" : "false",
               o.batch, o.level, o.dict ? "true" : "false", enc_dps,
               o.encode ? o.reports / enc_s : 0, b_per_dlv, ratio, o.zorder ? "geohash" : "id",
               o.watch_cells);
        if (o.broadcast) {
            printf(",\"broadcast_recipients\":%llu,\"broadcast_route_s\":%.3f,"
                   "\"broadcast_encode_s\":%.3f,\"broadcast_deliveries\":%llu,"
                   "\"broadcast_entries\":%llu,\"broadcast_bytes\":%llu,"
                   "\"broadcast_join_s\":%.2f,\"rss_after_broadcast_bytes\":%zu",
                   (unsigned long long)bc.recipients, bc.route_s, bc.encode_s,
                   (unsigned long long)bc.deliveries, (unsigned long long)bc.entries,
                   (unsigned long long)bc.bytes, bc.join_s, bc.rss);
        }
        printf("}\n");
    } else {
        printf("bench_route: %u users (slots by %s, %u cells a watch area), %u reports, seed %llu, "
               "median of %u runs, one thread\n",
               o.users, o.zorder ? "geohash" : "id", o.watch_cells, o.reports,
               (unsigned long long)o.seed, o.runs);
        printf("  population  %u groups (%u street, %u neighbourhood, %u district); groups per"
               " resident: 1 %.1f%%, 2 %.1f%%, 3 %.1f%%, 4+ %.1f%%\n",
               pop.ngroups, pop.nkind[PG_STREET], pop.nkind[PG_NEIGHBOURHOOD],
               pop.nkind[PG_DISTRICT], 100.0 * pop.hist[1] / o.users, 100.0 * pop.hist[2] / o.users,
               100.0 * pop.hist[3] / o.users,
               100.0 * (o.users - pop.hist[0] - pop.hist[1] - pop.hist[2] - pop.hist[3]) / o.users);
        printf("  %-34s %12s\n", "figure", "value");
        printf("  %-34s %12.2f\n", "generate population (s)", gen_s);
        printf("  %-34s %12.2f\n", "load into index (s)", load_s);
        printf("  %-34s %12.2f\n", "memberships per user", members_per);
        printf("  %-34s %12.2f\n", "watch cells per user", watch_per);
        printf("  %-34s %12.1f\n", "index B/user (bytes_users)", idx_b);
        printf("  %-34s %12.1f\n", "index B/user (bytes_total)", tot_b);
        printf("  %-34s %12.1f\n", "RSS delta B/user", rss_b);
        printf("  %-34s %12.2f\n", "decisions/s per core (M)", dps / 1e6);
        printf("  %-34s %12.2f\n", "  same, wall clock (M)", tr.decisions / route_wall / 1e6);
        printf("  %-34s %12.2f\n", "ns per decision", ns_per);
        printf("  %-34s %12.1f\n", "decisions per report", dec_per_rep);
        printf("  %-34s %12.1f\n", "recipients per report", rec_per_rep);
        printf("  %-34s %12.1f\n", "deliveries per report", dlv_per_rep);
        printf("  %-34s %12.0f\n", "reports/s (route only)", o.reports / route_s);
        printf("  %-34s %12.2f\n", "deliveries/s route only (M)", tr.deliveries / route_s / 1e6);
        if (o.encode) {
            printf("  %-34s %12.2f\n", "deliveries/s with encode (M)", enc_dps / 1e6);
            printf("  %-34s %12.2f\n", "  same, wall clock (M)",
                   te.out_deliveries / enc_wall / 1e6);
            printf("  %-34s %12.0f\n", "reports/s with encode", o.reports / enc_s);
            printf("  %-34s %12.2f\n", "stream bytes per delivery", b_per_dlv);
            printf("  %-34s %12.1f\n", "payload zstd/raw (%)", 100 * ratio);
            printf("  %-34s %12s\n", "zstd", o.dict ? "level+dict" : "level, no dict");
        }
        if (o.broadcast) {
            printf("  %-34s %12llu\n", "broadcast: recipients", (unsigned long long)bc.recipients);
            printf("  %-34s %12.3f\n", "broadcast: route (s)", bc.route_s);
            printf("  %-34s %12.3f\n", "broadcast: encode (s)", bc.encode_s);
            printf("  %-34s %12llu\n", "broadcast: stream entries", (unsigned long long)bc.entries);
            printf("  %-34s %12.1f\n", "RSS after broadcast (MiB)", bc.rss / 1048576.0);
        }
    }

    bb_out_free(&out);
    bb_encoder_free(enc);
    bb_zdict_unref(zd);
    bb_dir_reclaim_all(dir);
    bb_router_free(router);
    bb_dir_free(dir);
    reports_free(&rs);
    pg_free(&pop);
    return 0;
}
