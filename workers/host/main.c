/* buurtbus-worker: the channel plug-in host. One process serves the
 * channel instances its configuration names; each has a stream reader
 * (stream.c) and a loaded plug-in (plugin.c). Everything runs on one
 * event loop: the Redis connections (one shared commands connection, one
 * blocking reader per channel), the plug-ins' HTTP through curl's
 * multi-socket API (hostapi.c), timers and signals.
 *
 * Signals: SIGTERM/SIGINT stop reading, let deliveries in flight finish
 * (shutdown_grace), ack, exit. What is unfinished stays pending in Redis.
 * SIGHUP reloads what may change live (reload()).
 *
 * Threads: main thread only. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bb_conn.h"
#include "bb_err.h"
#include "bb_httpd.h"
#include "config.h"
#include "host.h"
#include "log.h"
#include "notify.h"

struct worker {
    struct bb_worker_config cfg;
    struct event_base *base;
    struct bb_conn *commands;
    struct bb_host *host;
    size_t n;
    struct bb_chan_plugin **plugins; /* per instance, conf->nplugins each */
    struct bb_stream **streams;
    struct event *sig_term, *sig_int, *sig_hup, *drain_ev;
    int64_t drain_deadline;
    struct bb_httpd *httpd;
    /* What the configuration came from, for SIGHUP. */
    char *config_path;
    char **sets;
    size_t nsets;
};

static unsigned inflight(const struct worker *w);

static const char *const outcome_names[5] = {"", "ok", "retry", "permanent", "duplicate"};

/* The per-channel counters of struct bb_stream_stats, as Prometheus names them. */
static const struct {
    const char *name, *help;
    size_t off;
} channel_counters[] = {
    {"bb_worker_batches_total", "Batch entries taken, by channel",
     offsetof(struct bb_stream_stats, batches)},
    {"bb_worker_dead_batches_total", "Batches sent to bb:dead",
     offsetof(struct bb_stream_stats, dead_batches)},
    {"bb_worker_parked_total", "Deliveries whose next try waits in bb:later",
     offsetof(struct bb_stream_stats, parked)},
    {"bb_worker_parked_circuit_open_total", "Deliveries parked unsent while the breaker was open",
     offsetof(struct bb_stream_stats, parked_open)},
    {"bb_worker_collected_total", "Deliveries added to a collection (digest)",
     offsetof(struct bb_stream_stats, collected)},
    {"bb_worker_addresses_gone_total", "Addresses removed after the provider said gone",
     offsetof(struct bb_stream_stats, gone)},
    {"bb_worker_breaker_opened_total", "Times the circuit breaker opened",
     offsetof(struct bb_stream_stats, breaker_opened)},
    {"bb_worker_resent_unconfirmed_total",
     "Deliveries whose earlier try was never confirmed, resent to an idempotent plug-in",
     offsetof(struct bb_stream_stats, resent)},
    {"bb_worker_unconfirmed_total",
     "Deliveries whose earlier try was never confirmed, skipped (possibly lost)",
     offsetof(struct bb_stream_stats, unconfirmed)},
    {"bb_worker_waited_in_flight_total",
     "Deliveries that waited for another try of theirs still in flight (a report posted twice)",
     offsetof(struct bb_stream_stats, in_flight_elsewhere)},
};

static void render_metrics(struct evbuffer *b, void *arg)
{
    struct worker *w = arg;
    evbuffer_add_printf(b, "# HELP bb_worker_receipts_total Delivery outcomes by channel\n"
                           "# TYPE bb_worker_receipts_total counter\n");
    for (size_t i = 0; i < w->n; i++) {
        if (!w->streams[i]) {
            continue;
        }
        const struct bb_stream_stats *st = bb_stream_stats(w->streams[i]);
        for (int o = 1; o <= 4; o++) {
            evbuffer_add_printf(b, "bb_worker_receipts_total{channel=\"%s\",outcome=\"%s\"} %llu\n",
                                bb_stream_instance(w->streams[i]), outcome_names[o],
                                (unsigned long long)st->outcome[o]);
        }
    }
    for (size_t c = 0; c < sizeof(channel_counters) / sizeof(channel_counters[0]); c++) {
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s counter\n", channel_counters[c].name,
                            channel_counters[c].help, channel_counters[c].name);
        for (size_t i = 0; i < w->n; i++) {
            if (w->streams[i]) {
                const char *st = (const char *)bb_stream_stats(w->streams[i]);
                evbuffer_add_printf(
                    b, "%s{channel=\"%s\"} %llu\n", channel_counters[c].name,
                    bb_stream_instance(w->streams[i]),
                    (unsigned long long)*(const uint64_t *)(st + channel_counters[c].off));
            }
        }
    }
    evbuffer_add_printf(b, "# HELP bb_worker_delivery_seconds From the report entering bb:reports "
                           "to the provider accepting the delivery\n"
                           "# TYPE bb_worker_delivery_seconds histogram\n");
    for (size_t i = 0; i < w->n; i++) {
        if (!w->streams[i]) {
            continue;
        }
        const struct bb_stream_stats *st = bb_stream_stats(w->streams[i]);
        const char *inst = bb_stream_instance(w->streams[i]);
        uint64_t cum = 0;
        for (size_t k = 0; k < BB_LATENCY_BUCKETS; k++) {
            cum += st->latency[k];
            evbuffer_add_printf(
                b, "bb_worker_delivery_seconds_bucket{channel=\"%s\",le=\"%g\"} %llu\n", inst,
                bb_latency_bounds_ms[k] / 1000.0, (unsigned long long)cum);
        }
        cum += st->latency[BB_LATENCY_BUCKETS];
        evbuffer_add_printf(b,
                            "bb_worker_delivery_seconds_bucket{channel=\"%s\",le=\"+Inf\"} %llu\n"
                            "bb_worker_delivery_seconds_sum{channel=\"%s\"} %.3f\n"
                            "bb_worker_delivery_seconds_count{channel=\"%s\"} %llu\n",
                            inst, (unsigned long long)cum, inst, st->latency_sum_ms / 1000.0, inst,
                            (unsigned long long)cum);
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } gauges[] = {
        {"bb_worker_stream_lag", "Entries of the channel's stream its consumer group has not read",
         offsetof(struct bb_stream_stats, lag)},
        {"bb_worker_stream_pending", "Entries read by the group and not yet acked",
         offsetof(struct bb_stream_stats, pending)},
        {"bb_worker_later_jobs", "Retries and collections waiting in bb:later",
         offsetof(struct bb_stream_stats, later)},
    };
    for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
        evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help,
                            gauges[g].name);
        for (size_t i = 0; i < w->n; i++) {
            if (w->streams[i]) {
                const char *st = (const char *)bb_stream_stats(w->streams[i]);
                int64_t v = *(const int64_t *)(st + gauges[g].off);
                if (v >= 0) {
                    evbuffer_add_printf(b, "%s{channel=\"%s\"} %lld\n", gauges[g].name,
                                        bb_stream_instance(w->streams[i]), (long long)v);
                }
            }
        }
    }
    bb_prom_gauge(b, "bb_worker_inflight", "Batch entries and jobs taken and not yet finished",
                  (int64_t)inflight(w));
    bb_prom_counter(b, "bb_redis_reconnects_total", "Redis connections lost",
                    atomic_load(&bb_conn_reconnects));
}

static bool is_ready(void *arg)
{
    struct worker *w = arg;
    return w->commands && bb_conn_is_ready(w->commands);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: buurtbus-worker [-c FILE] [--set NAME=VALUE]... [--check-config]\n"
            "                       [--dump-config] [--version] [--help]\n"
            "\n"
            "  -c, --config FILE   configuration file (channels, channel.<inst>.plugin, ...)\n"
            "  --set NAME=VALUE    override one option after the file (channel.* too)\n"
            "  --check-config      load the plug-ins, check the configuration, exit (0 = valid)\n"
            "  --dump-config       print the effective configuration and exit\n"
            "\n"
            "Signals: SIGTERM/SIGINT finish deliveries in flight, ack, exit; SIGHUP reads\n"
            "the file again and applies log_level, the retry options and each instance's\n"
            "limits (other changes are logged as needing a restart).\n");
}

static void on_commands_ready(struct bb_conn *c, void *arg)
{
    struct worker *w = arg;
    for (size_t i = 0; i < w->n; i++) {
        if (w->streams[i]) {
            bb_stream_commands_ready(w->streams[i]);
        }
    }
}

static unsigned inflight(const struct worker *w)
{
    unsigned n = 0;
    for (size_t i = 0; i < w->n; i++) {
        n += w->streams[i] ? bb_stream_inflight(w->streams[i]) : 0;
    }
    return n;
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    unsigned n = inflight(w);
    if (n == 0 || bb_mono_ms() >= w->drain_deadline) {
        if (n) {
            bb_warn("grace period over; unfinished batches stay pending", "inflight=%u", n);
        }
        event_base_loopexit(w->base, NULL);
        return;
    }
    struct timeval tv = {0, 50 * 1000};
    evtimer_add(w->drain_ev, &tv);
}

static int check(struct bb_worker_config *cfg, char *err, size_t errlen);

/* SIGHUP: the file read again (with the same --set overrides); what may
 * change live is applied, the rest is logged as needing a restart. A file
 * that no longer loads changes nothing. Work in flight is not touched. */
static void reload(struct worker *w)
{
    struct bb_worker_config fresh;
    char err[512];
    bb_info("reload requested", "config=%s", w->config_path ? w->config_path : "(none)");
    bb_notify_reloading();
    int rc = bb_worker_config_load(&fresh, w->config_path, (const char *const *)w->sets, w->nsets,
                                   err, sizeof(err));
    if (rc == BB_OK) {
        rc = check(&fresh, err, sizeof(err));
    }
    if (rc != BB_OK) {
        bb_error("reload failed; the running configuration stays", "err=\"%s\"", err);
    } else {
        bb_worker_config_reload(&w->cfg, &fresh);
        bb_log_set_level((enum bb_log_level)bb_log_level_parse(w->cfg.log_level));
    }
    bb_worker_config_free(&fresh);
    bb_notify_reloaded();
}

static volatile sig_atomic_t stop_requested;

static void on_early_signal(int sig)
{
    stop_requested = 1;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct worker *w = arg;
    if (sig == SIGHUP) {
        reload(w);
        return;
    }
    if (w->drain_deadline) {
        return;
    }
    bb_info("shutdown requested", "signal=%d inflight=%u", (int)sig, inflight(w));
    bb_notify_stopping();
    for (size_t i = 0; i < w->n; i++) {
        if (w->streams[i]) {
            bb_stream_stop(w->streams[i]);
        }
    }
    w->drain_deadline = bb_mono_ms() + w->cfg.shutdown_grace_ms;
    on_drain(-1, 0, w);
}

static int check(struct bb_worker_config *cfg, char *err, size_t errlen)
{
    if (bb_log_level_parse(cfg->log_level) < 0) {
        snprintf(err, errlen, "log_level: expected debug, info, warn or error, got '%s'",
                 cfg->log_level);
        return BB_ECONFIG;
    }
    int rc = bb_conn_check_settings(cfg->redis, cfg->group, err, errlen);
    if (rc == BB_OK) {
        rc = bb_conn_check_auth(cfg->redis_user, cfg->redis_password, err, errlen);
    }
    if (rc != BB_OK) {
        return rc;
    }
    if (cfg->retry_min_ms > cfg->retry_max_ms) {
        snprintf(err, errlen, "retry_min must not exceed retry_max");
        return BB_ECONFIG;
    }
    return bb_consumer_name_default(&cfg->name);
}

/* Loads every plug-in of every instance and runs its init; with
 * check_only, the caller destroys them again. */
static int start_channels(struct worker *w, bool check_only)
{
    char err[512];
    for (size_t i = 0; i < w->n; i++) {
        const struct bb_chan_conf *cc = &w->cfg.chans[i];
        w->plugins[i] = calloc(cc->nplugins, sizeof(*w->plugins[i]));
        if (!w->plugins[i]) {
            return BB_ENOMEM;
        }
        for (size_t k = 0; k < cc->nplugins; k++) {
            struct bb_chan_plugin *cp = &w->plugins[i][k];
            const char *name = cc->plugins[k];
            if (bb_plugin_load(&cp->pl, w->cfg.plugin_dir, name, err, sizeof(err)) != BB_OK) {
                bb_error("plug-in refused", "channel=%s plugin=%s why=\"%s\"", cc->instance, name,
                         err);
                return BB_ECONFIG;
            }
            const struct bb_channel *ch = cp->pl.ch;
            struct bb_channel_config *pc =
                bb_plugin_config_new(ch, cc, cc->nplugins > 1 ? name : NULL, err, sizeof(err));
            if (!pc) {
                bb_error("bad channel configuration", "channel=%s why=\"%s\"", cc->instance, err);
                return BB_ECONFIG;
            }
            err[0] = '\0';
            int rc = ch->init(bb_host_api_get(w->host), pc, &cp->ctx, err, sizeof(err));
            bb_plugin_config_free(pc);
            if (rc != 0) {
                cp->ctx = NULL;
                bb_error("plug-in init failed", "channel=%s plugin=%s why=\"%s\"", cc->instance,
                         name, err);
                return BB_ECONFIG;
            }
        }
        if (check_only) {
            continue;
        }
        w->streams[i] =
            bb_stream_new(w->base, &w->cfg, cc, w->plugins[i], cc->nplugins, w->commands);
        if (!w->streams[i]) {
            bb_error("cannot start channel", "channel=%s", cc->instance);
            return BB_ENOMEM;
        }
        bb_info("channel started", "channel=%s plugin=\"%s\" stream=%s group=%s collect=\"%s\"",
                cc->instance, cc->plugin, cc->stream, cc->group, cc->o.collect);
    }
    return BB_OK;
}

/* What the configuration was read from (kept for SIGHUP). */
static void free_config_source(struct worker *w)
{
    free(w->config_path);
    for (size_t i = 0; i < w->nsets; i++) {
        free(w->sets[i]);
    }
    free(w->sets);
    w->config_path = NULL;
    w->sets = NULL;
    w->nsets = 0;
}

static void worker_free(struct worker *w)
{
    bb_notify_stop();
    bb_httpd_free(w->httpd);
    w->httpd = NULL;
    /* The commands connection first: its pending callbacks (with NULL
     * replies) still find their batches and plug-ins. */
    bb_conn_free(w->commands);
    w->commands = NULL;
    bb_host_abandon(w->host);
    for (size_t i = 0; i < w->n; i++) {
        bb_stream_free(w->streams ? w->streams[i] : NULL);
        for (size_t k = 0; w->plugins && w->plugins[i] && k < w->cfg.chans[i].nplugins; k++) {
            if (w->plugins[i][k].ctx) {
                w->plugins[i][k].pl.ch->destroy(w->plugins[i][k].ctx);
            }
        }
    }
    bb_host_free(w->host);
    for (size_t i = 0; w->plugins && i < w->n; i++) {
        for (size_t k = 0; w->plugins[i] && k < w->cfg.chans[i].nplugins; k++) {
            bb_plugin_unload(&w->plugins[i][k].pl);
        }
        free(w->plugins[i]);
    }
    /* Freeing the signal events puts back the handlers from before them
     * (on_early_signal, SIGHUP ignored): a second SIGTERM during the
     * teardown only sets a flag. */
    struct event *evs[] = {w->sig_term, w->sig_int, w->sig_hup, w->drain_ev};
    for (size_t i = 0; i < 4; i++) {
        if (evs[i]) {
            event_free(evs[i]);
        }
    }
    free(w->plugins);
    free(w->streams);
    if (w->base) {
        event_base_free(w->base);
    }
    bb_worker_config_free(&w->cfg);
    free_config_source(w);
}

int main(int argc, char **argv)
{
    struct worker w;
    struct bb_cmdline cl;
    char err[512];
    int status = 1;

    memset(&w, 0, sizeof(w));
    bb_log_init("worker", BB_LOG_INFO);
    if (bb_cmdline_parse(argc, argv, &cl) != BB_OK) {
        bb_cmdline_free(&cl);
        usage(stderr);
        return 2;
    }
    if (cl.help || cl.version) {
        if (cl.help) {
            usage(stdout);
        } else {
            printf("buurtbus-worker %s (plug-in ABI %d)\n", BB_VERSION, BB_CHANNEL_ABI_VERSION);
        }
        bb_cmdline_free(&cl);
        return 0;
    }
    bool check_only = cl.check_only, dump = cl.dump;
    w.config_path = cl.config ? strdup(cl.config) : NULL;
    w.sets = calloc(cl.nsets + 1, sizeof(*w.sets));
    for (size_t i = 0; w.sets && i < cl.nsets; i++) {
        w.sets[w.nsets++] = strdup(cl.sets[i]);
    }
    int rc = bb_worker_config_load(&w.cfg, cl.config, cl.sets, cl.nsets, err, sizeof(err));
    bb_cmdline_free(&cl);
    if (rc == BB_OK) {
        rc = check(&w.cfg, err, sizeof(err));
    }
    if (rc != BB_OK) {
        fprintf(stderr, "buurtbus-worker: %s\n", err);
        bb_worker_config_free(&w.cfg);
        free_config_source(&w);
        return 1;
    }
    bb_log_set_level((enum bb_log_level)bb_log_level_parse(w.cfg.log_level));
    if (dump) {
        bb_worker_config_dump(&w.cfg);
        bb_worker_config_free(&w.cfg);
        free_config_source(&w);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Until the loop handles them: a stop request is remembered, a reload
     * has nothing to reload. libevent puts these back when its own
     * handlers go, so they also cover the teardown. */
    signal(SIGTERM, on_early_signal);
    signal(SIGINT, on_early_signal);
    signal(SIGHUP, SIG_IGN);
    w.n = w.cfg.nchans;
    w.plugins = calloc(w.n, sizeof(*w.plugins));
    w.streams = calloc(w.n, sizeof(*w.streams));
    w.base = event_base_new();
    if (!w.plugins || !w.streams || !w.base) {
        bb_error("out of memory", NULL);
        goto out;
    }
    struct bb_conn_opts o = {
        .name = "commands",
        .addr = w.cfg.redis,
        .user = w.cfg.redis_user,
        .password = w.cfg.redis_password,
        .connect_timeout_ms = w.cfg.connect_timeout_ms,
        .command_timeout_ms = w.cfg.command_timeout_ms,
        .reconnect_min_ms = w.cfg.reconnect_min_ms,
        .reconnect_max_ms = w.cfg.reconnect_max_ms,
        .keepalive_s = (int)w.cfg.keepalive_s,
        .on_ready = on_commands_ready,
        .arg = &w,
    };
    if (!check_only) {
        w.commands = bb_conn_new(w.base, &o);
        if (!w.commands) {
            bb_error("cannot create the redis connection", NULL);
            goto out;
        }
    }
    w.host = bb_host_new(w.base, w.commands, (long)w.cfg.http_timeout_ms,
                         (long)w.cfg.max_host_connections);
    if (!w.host) {
        bb_error("cannot start libcurl", NULL);
        goto out;
    }
    if (start_channels(&w, check_only) != BB_OK) {
        goto out;
    }
    if (check_only) {
        printf("configuration ok\n");
        status = 0;
        goto out;
    }
    w.sig_term = evsignal_new(w.base, SIGTERM, on_signal, &w);
    w.sig_int = evsignal_new(w.base, SIGINT, on_signal, &w);
    w.sig_hup = evsignal_new(w.base, SIGHUP, on_signal, &w);
    w.drain_ev = evtimer_new(w.base, on_drain, &w);
    if (!w.sig_term || !w.sig_int || !w.sig_hup || !w.drain_ev) {
        goto out;
    }
    event_add(w.sig_term, NULL);
    event_add(w.sig_int, NULL);
    event_add(w.sig_hup, NULL);
    if (w.cfg.metrics_addr[0]) {
        w.httpd = bb_httpd_new(w.base, w.cfg.metrics_addr, render_metrics, is_ready, &w, err,
                               sizeof(err));
        if (!w.httpd) {
            bb_error("cannot serve metrics", "why=\"%s\"", err);
            goto out;
        }
    }
    /* Ready for systemd as for /readyz: the commands connection is up. */
    bb_notify_start(w.base, is_ready, &w);
    bb_info("worker started", "name=%s group=%s channels=%zu", w.cfg.name, w.cfg.group, w.n);
    if (stop_requested) {
        on_signal(SIGTERM, 0, &w); /* asked to stop while starting */
    }
    event_base_dispatch(w.base);
    bb_info("worker stopped", NULL);
    status = 0;

out:
    worker_free(&w);
    return status;
}
