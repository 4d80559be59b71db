/* Counters every thread updates with relaxed atomics, and a small HTTP
 * endpoint (libevent evhttp, on the I/O thread) that serves them in the
 * Prometheus text format, plus /healthz (the process runs) and /readyz
 * (Redis reachable, script loaded: it can do work). The same server
 * carries the operator console's routes (console.c) when it is on.
 *
 * Streams: every few seconds the I/O thread asks Redis, on the consumer's
 * commands connection, for the length of each stream the broker reads or
 * writes and for every consumer group of it (pending, lag, consumers); the
 * last complete answer is kept for /metrics and the console.
 *
 * Threads: the counters are written by any thread (relaxed atomics); the
 * HTTP server, the stream poll and its results belong to the I/O thread. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_httpd.h"
#include "internal.h"
#include "log.h"

struct bb_metrics bb_metrics;

/* Upper bounds in microseconds, roughly x2 apart, 100 us .. ~13 min. */
static const int64_t lat_le_us[BB_LAT_BUCKETS] = {
    100,      250,      500,      1000,      2000,      5000,      10000,     20000,
    50000,    100000,   200000,   500000,    1000000,   2000000,   5000000,   10000000,
    20000000, 30000000, 60000000, 120000000, 300000000, 600000000, 900000000, INT64_MAX};

/* Recipients per routed report: upper bounds. */
static const uint64_t rcpt_le[BB_RCPT_BUCKETS] = {
    0,    1,     5,     10,     50,     100,     500,     1000,
    5000, 10000, 50000, 100000, 500000, 1000000, 5000000, UINT64_MAX};

static const char *const poll_streams[BB_STREAMS_MAX] = {
    "bb:reports",   "bb:report-status", "bb:out:push",   "bb:out:email",
    "bb:out:inbox", "bb:out:digest",    "bb:out:social", "bb:dead"};

static struct bb_httpd *httpd;

static void render_streams(struct evbuffer *b);

static struct {
    struct bb_conn *conn;
    struct event *ev;
    int64_t interval_ms;
    bool detail;           /* the console's extras: consumers, bb:dead */
    unsigned outstanding;  /* replies the current round waits for */
    struct bb_streams cur; /* last complete round */
    struct bb_streams next;
} poll;

void bb_metrics_recipients(uint64_t n)
{
    for (int i = 0; i < BB_RCPT_BUCKETS; i++) {
        if (n <= rcpt_le[i]) {
            atomic_fetch_add_explicit(&bb_metrics.rcpt_le[i], 1, memory_order_relaxed);
            break;
        }
    }
    atomic_fetch_add_explicit(&bb_metrics.rcpt_sum, n, memory_order_relaxed);
}

void bb_metrics_latency(int64_t us)
{
    if (us < 0) {
        us = 0;
    }
    for (int i = 0; i < BB_LAT_BUCKETS; i++) {
        if (us <= lat_le_us[i]) {
            atomic_fetch_add_explicit(&bb_metrics.latency_le[i], 1, memory_order_relaxed);
            break;
        }
    }
    atomic_fetch_add_explicit(&bb_metrics.latency_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&bb_metrics.latency_sum_us, (uint64_t)us, memory_order_relaxed);
}

#define LOAD(x) ((unsigned long long)atomic_load_explicit(&bb_metrics.x, memory_order_relaxed))

static void render(struct evbuffer *b, void *arg)
{
    bb_prom_counter(b, "bb_reports_in_total", "Report entries read (incl. claimed)",
                    LOAD(reports_in));
    bb_prom_counter(b, "bb_status_in_total", "Status entries read", LOAD(status_in));
    bb_prom_counter(b, "bb_routed_total", "Entries routed and committed", LOAD(reports_routed));
    bb_prom_counter(b, "bb_dead_letters_total", "Entries sent to bb:dead", LOAD(dead_letters));
    bb_prom_counter(b, "bb_commit_retries_total", "Commits retried", LOAD(commit_retries));
    bb_prom_counter(b, "bb_commits_skipped_total",
                    "Commits skipped: entry acked or owned elsewhere", LOAD(commits_skipped));
    bb_prom_counter(b, "bb_deliveries_total", "Deliveries written to output streams",
                    LOAD(deliveries));
    evbuffer_add_printf(b, "# HELP bb_channel_deliveries_total Deliveries by channel\n"
                           "# TYPE bb_channel_deliveries_total counter\n");
    for (unsigned ch = 0; ch < BB_CHANNELS; ch++) {
        evbuffer_add_printf(b, "bb_channel_deliveries_total{channel=\"%s\"} %llu\n",
                            bb_channel_name(ch), LOAD(deliveries_by_channel[ch]));
    }
    bb_prom_counter(b, "bb_batches_total", "Output stream entries written", LOAD(batches));
    bb_prom_counter(b, "bb_recipients_total", "Distinct recipients notified", LOAD(recipients));
    bb_prom_counter(b, "bb_decisions_total", "Recipient candidates considered", LOAD(decisions));
    evbuffer_add_printf(b,
                        "# HELP bb_route_seconds_total Router thread time\n"
                        "# TYPE bb_route_seconds_total counter\n"
                        "bb_route_seconds_total %.6f\n",
                        LOAD(route_ns) / 1e9);
    bb_prom_counter(b, "bb_output_bytes_total", "Bytes of output entries", LOAD(bytes_out));
    bb_prom_counter(b, "bb_notification_raw_bytes_total", "Notification bytes before zstd",
                    LOAD(raw_bytes));
    bb_prom_counter(b, "bb_notification_zstd_bytes_total", "Notification bytes after zstd",
                    LOAD(zstd_bytes));
    bb_prom_counter(b, "bb_directory_events_total", "Directory events applied",
                    LOAD(directory_events));
    bb_prom_counter(b, "bb_directory_errors_total", "Directory events rejected",
                    LOAD(directory_errors));
    bb_prom_counter(b, "bb_redis_reconnects_total", "Redis connections lost",
                    (unsigned long long)atomic_load(&bb_conn_reconnects));
    bb_prom_counter(b, "bb_claimed_total", "Entries claimed from idle consumers", LOAD(claimed));
    bb_prom_counter(b, "bb_trimmed_total",
                    "Entries trimmed from streams after every consumer group acked them",
                    LOAD(trimmed));
    bb_prom_counter(b, "bb_trimmed_unread_total",
                    "Times unread entries were found removed from a stream (alerts)",
                    LOAD(trimmed_unread));
    bb_prom_gauge(b, "bb_inflight", "Entries read and not yet committed",
                  (long long)LOAD(inflight));
    bb_prom_gauge(b, "bb_output_backlog_max", "Longest output stream",
                  (long long)LOAD(backlog_max));
    bb_prom_gauge(b, "bb_paused", "1 while input is paused by backpressure",
                  (long long)LOAD(paused));
    bb_prom_gauge(b, "bb_directory_users", "Users in the routing index", (long long)LOAD(users));
    bb_prom_gauge(b, "bb_directory_groups", "Groups in the routing index", (long long)LOAD(groups));
    evbuffer_add_printf(b,
                        "# HELP bb_commit_latency_seconds From report entry to committed output\n"
                        "# TYPE bb_commit_latency_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i < BB_LAT_BUCKETS - 1; i++) {
        cum += LOAD(latency_le[i]);
        evbuffer_add_printf(b, "bb_commit_latency_seconds_bucket{le=\"%g\"} %llu\n",
                            lat_le_us[i] / 1e6, cum);
    }
    evbuffer_add_printf(b, "bb_commit_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
                        LOAD(latency_count));
    evbuffer_add_printf(
        b, "bb_commit_latency_seconds_sum %.6f\nbb_commit_latency_seconds_count %llu\n",
        LOAD(latency_sum_us) / 1e6, LOAD(latency_count));
    render_streams(b);
}

static void render_streams(struct evbuffer *b)
{
    const struct bb_streams *st = &poll.cur;
    if (!st->at_ms) {
        return;
    }
    evbuffer_add_printf(b, "# HELP bb_stream_length Entries in the stream\n"
                           "# TYPE bb_stream_length gauge\n");
    for (unsigned i = 0; i < st->n; i++) {
        evbuffer_add_printf(b, "bb_stream_length{stream=\"%s\"} %lld\n", st->s[i].name,
                            (long long)st->s[i].length);
    }
    static const struct {
        const char *name, *help;
    } gm[] = {
        {"bb_stream_group_pending", "Entries read by the group and not acked"},
        {"bb_stream_group_lag", "Entries the group has not read yet (Redis 7)"},
        {"bb_stream_group_consumers", "Consumers in the group"},
    };
    for (size_t k = 0; k < sizeof(gm) / sizeof(gm[0]); k++) {
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", gm[k].name, gm[k].help,
                            gm[k].name);
        for (unsigned i = 0; i < st->n; i++) {
            for (unsigned g = 0; g < st->s[i].ng; g++) {
                const struct bb_group_info *gi = &st->s[i].g[g];
                int64_t v = k == 0 ? gi->pending : k == 1 ? gi->lag : gi->consumers;
                if (v < 0) {
                    continue; /* lag unknown (Redis says nil after some deletions) */
                }
                evbuffer_add_printf(b, "%s{stream=\"%s\",group=\"", gm[k].name, st->s[i].name);
                bb_prom_label(b, gi->name);
                evbuffer_add_printf(b, "\"} %lld\n", (long long)v);
            }
        }
    }
    evbuffer_add_printf(b, "# HELP bb_recipients_per_report People notified per routed report\n"
                           "# TYPE bb_recipients_per_report histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i < BB_RCPT_BUCKETS - 1; i++) {
        cum += LOAD(rcpt_le[i]);
        evbuffer_add_printf(b, "bb_recipients_per_report_bucket{le=\"%llu\"} %llu\n",
                            (unsigned long long)rcpt_le[i], cum);
    }
    cum += LOAD(rcpt_le[BB_RCPT_BUCKETS - 1]);
    evbuffer_add_printf(b,
                        "bb_recipients_per_report_bucket{le=\"+Inf\"} %llu\n"
                        "bb_recipients_per_report_sum %llu\nbb_recipients_per_report_count %llu\n",
                        cum, LOAD(rcpt_sum), cum);
}

static bool ready(void *arg)
{
    return atomic_load(&bb_metrics.ready);
}

int bb_metrics_listen(struct event_base *base, const char *addr)
{
    if (!addr || !*addr) {
        return 0;
    }
    char err[256];
    httpd = bb_httpd_new(base, addr, render, ready, NULL, err, sizeof(err));
    if (!httpd) {
        bb_error("cannot serve metrics", "why=\"%s\"", err);
        return -1;
    }
    bb_info("metrics listening", "addr=%s", addr);
    return 0;
}

int64_t bb_metrics_latency_bound_us(int bucket)
{
    return lat_le_us[bucket];
}

struct bb_httpd *bb_metrics_httpd(void)
{
    return httpd;
}

/* ---- the stream poll --------------------------------------------------------------------- */

static const redisReply *field(const redisReply *map, const char *name)
{
    for (size_t i = 0; map->type == REDIS_REPLY_ARRAY && i + 1 < map->elements; i += 2) {
        if (map->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(map->element[i]->str, name) == 0) {
            return map->element[i + 1];
        }
    }
    return NULL;
}

static int64_t field_int(const redisReply *map, const char *name)
{
    const redisReply *v = field(map, name);
    return v && v->type == REDIS_REPLY_INTEGER ? (int64_t)v->integer : -1;
}

static void field_str(const redisReply *map, const char *name, char *out, size_t cap)
{
    const redisReply *v = field(map, name);
    snprintf(out, cap, "%s", v && v->type == REDIS_REPLY_STRING ? v->str : "");
}

static void round_done(void)
{
    if (--poll.outstanding == 0) {
        poll.next.at_ms = bb_now_ms();
        poll.cur = poll.next;
    }
}

/* priv: stream index << 8 | group index. */
static void on_consumers(struct bb_conn *conn, redisReply *r, void *priv)
{
    uintptr_t k = (uintptr_t)priv;
    struct bb_group_info *g = &poll.next.s[k >> 8].g[k & 0xff];
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        if (g->nc == BB_CONSUMERS_MAX) {
            break;
        }
        struct bb_consumer_info *ci = &g->c[g->nc++];
        field_str(r->element[i], "name", ci->name, sizeof(ci->name));
        ci->pending = field_int(r->element[i], "pending");
        ci->idle_ms = field_int(r->element[i], "idle");
    }
    round_done();
}

static void on_groups(struct bb_conn *conn, redisReply *r, void *priv)
{
    uintptr_t s = (uintptr_t)priv;
    struct bb_stream_info *si = &poll.next.s[s];
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        if (si->ng == BB_GROUPS_MAX) {
            break;
        }
        struct bb_group_info *g = &si->g[si->ng];
        memset(g, 0, sizeof(*g));
        field_str(r->element[i], "name", g->name, sizeof(g->name));
        field_str(r->element[i], "last-delivered-id", g->last_id, sizeof(g->last_id));
        g->consumers = field_int(r->element[i], "consumers");
        g->pending = field_int(r->element[i], "pending");
        g->lag = field_int(r->element[i], "lag");
        g->entries_read = field_int(r->element[i], "entries-read");
        const char *argv[] = {"XINFO", "CONSUMERS", si->name, g->name};
        if (poll.detail && bb_conn_command(conn, on_consumers, (void *)(uintptr_t)(s << 8 | si->ng),
                                           4, argv, NULL) == 0) {
            poll.outstanding++;
        }
        si->ng++;
    }
    round_done();
}

static void on_len(struct bb_conn *conn, redisReply *r, void *priv)
{
    uintptr_t s = (uintptr_t)priv;
    poll.next.s[s].length = r && r->type == REDIS_REPLY_INTEGER ? (int64_t)r->integer : -1;
    round_done();
}

static void on_poll_tick(evutil_socket_t fd, short what, void *arg)
{
    struct timeval tv = {(time_t)(poll.interval_ms / 1000),
                         (suseconds_t)((poll.interval_ms % 1000) * 1000)};
    evtimer_add(poll.ev, &tv);
    if (poll.outstanding || !bb_conn_is_ready(poll.conn)) {
        return;
    }
    memset(&poll.next, 0, sizeof(poll.next));
    poll.outstanding = 1; /* held until every command is sent */
    /* Without the console only what the broker's ACL user may read
     * (deploy/redis/users.acl.in): XLEN and XINFO GROUPS of its streams. */
    unsigned n = poll.detail ? BB_STREAMS_MAX : BB_STREAMS_MAX - 1;
    for (unsigned s = 0; s < n; s++) {
        struct bb_stream_info *si = &poll.next.s[s];
        si->name = poll_streams[s];
        si->length = -1;
        poll.next.n++;
        if (bb_conn_commandf(poll.conn, on_len, (void *)(uintptr_t)s, "XLEN %s", si->name) == 0) {
            poll.outstanding++;
        }
        /* bb:dead has no groups: XINFO GROUPS of a stream nobody reads
         * is an empty list, of a missing key an error (counted as none). */
        if (bb_conn_commandf(poll.conn, on_groups, (void *)(uintptr_t)s, "XINFO GROUPS %s",
                             si->name) == 0) {
            poll.outstanding++;
        }
    }
    round_done();
}

int bb_metrics_streams_start(struct event_base *base, struct bb_conn *commands, int64_t interval_ms)
{
    poll.conn = commands;
    poll.interval_ms = interval_ms;
    poll.ev = evtimer_new(base, on_poll_tick, NULL);
    if (!poll.ev) {
        return -1;
    }
    struct timeval tv = {0, 200 * 1000};
    evtimer_add(poll.ev, &tv);
    return 0;
}

void bb_metrics_streams_detail(bool on)
{
    poll.detail = on;
}

const struct bb_streams *bb_metrics_streams(void)
{
    return &poll.cur;
}

void bb_metrics_streams_stop(void)
{
    if (poll.ev) {
        event_free(poll.ev);
        poll.ev = NULL;
    }
    poll.conn = NULL;
}

void bb_metrics_close(void)
{
    bb_httpd_free(httpd);
    httpd = NULL;
}
