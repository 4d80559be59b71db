/* Counters every thread updates with relaxed atomics, and a small HTTP
 * endpoint (libevent evhttp, on the I/O thread) that serves them in the
 * Prometheus text format, plus /healthz (the process runs) and /readyz
 * (Redis reachable, script loaded: it can do work). */
#include <event2/buffer.h>
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

static struct bb_httpd *httpd;

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

void bb_metrics_close(void)
{
    bb_httpd_free(httpd);
    httpd = NULL;
}
