/* buurtbus-broker: reads reports from Redis, routes them, writes delivery
 * batches. Start-up is synchronous (configuration, directory snapshot);
 * then the I/O thread runs the event loop and N router threads route
 * (see dispatch.c for who owns what). */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bb_err.h"
#include "config.h"
#include "directory.h"
#include "internal.h"
#include "log.h"
#include "notify.h"
#include "snapshot.h"

static volatile sig_atomic_t stop_requested;

/* The running configuration and what it came from (for SIGHUP). */
static struct bb_broker_config cfg;
static char *config_path;
static char **config_sets;
static size_t config_nsets;

static void usage(FILE *out)
{
    fprintf(out, "usage: buurtbus-broker [-c FILE] [--set NAME=VALUE]... [--check-config]\n"
                 "                       [--dump-config] [--version] [--help]\n"
                 "\n"
                 "  -c, --config FILE   configuration file (see deploy/broker.conf)\n"
                 "  --set NAME=VALUE    override one option after the file\n"
                 "  --check-config      validate the configuration and exit (0 = valid)\n"
                 "  --dump-config       print the effective configuration and exit\n"
                 "\n"
                 "Signals: SIGTERM/SIGINT finish work in flight, ack, exit; SIGHUP reads the\n"
                 "file again, applies log_level (other changes need a restart) and looks up\n"
                 "the compression dictionary.\n");
}

static void on_early_signal(int sig)
{
    stop_requested = 1;
}

static int load_config(struct bb_broker_config *to, char *err, size_t errlen);

static void reload_one(const struct bb_opt *o, void *arg)
{
    const struct bb_broker_config *fresh = arg;
    if (strcmp(o->name, "log_level") == 0) {
        char *level = strdup(fresh->log_level);
        if (level) {
            free(cfg.log_level);
            cfg.log_level = level;
            bb_log_set_level((enum bb_log_level)bb_log_level_parse(level));
            bb_info("option reloaded", "option=log_level value=%s", level);
        }
        return;
    }
    bb_warn("option changed; takes effect after a restart", "option=%s", o->name);
}

/* SIGHUP: the file read again (with the same --set overrides): log_level
 * applies at once, other changes are logged as needing a restart; the
 * compression dictionary is looked up again. A file that no longer loads
 * changes nothing. */
static void reload(struct bb_consumer *c)
{
    struct bb_broker_config fresh;
    char err[512];
    bb_info("reload requested", "config=%s", config_path ? config_path : "(none)");
    bb_notify_reloading();
    if (load_config(&fresh, err, sizeof(err)) != BB_OK) {
        bb_error("reload failed; the running configuration stays", "err=\"%s\"", err);
    } else {
        size_t n =
            bb_config_diff(bb_broker_opts, bb_broker_nopts, &cfg, &fresh, reload_one, &fresh);
        bb_info("configuration reloaded", "changed=%zu", n);
    }
    bb_config_free(bb_broker_opts, bb_broker_nopts, &fresh);
    bb_consumer_reload(c);
    bb_notify_reloaded();
}

/* systemd's readiness: the consumer is reading (directory loaded, Redis
 * connected, commit script loaded: what /readyz says). */
static bool consumer_ready(void *arg)
{
    return atomic_load(&bb_metrics.ready);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct bb_consumer *c = arg;
    if (sig == SIGHUP) {
        reload(c);
        return;
    }
    bb_info("shutdown requested", "signal=%d", (int)sig);
    bb_notify_stopping();
    bb_consumer_shutdown(c);
}

static int check(struct bb_broker_config *cfg, char *err, size_t errlen)
{
    if (cfg->out_low_watermark > cfg->out_high_watermark) {
        snprintf(err, errlen, "out_low_watermark (%lld) must not exceed out_high_watermark (%lld)",
                 (long long)cfg->out_low_watermark, (long long)cfg->out_high_watermark);
        return BB_ECONFIG;
    }
    if (bb_log_level_parse(cfg->log_level) < 0) {
        snprintf(err, errlen, "log_level: expected debug, info, warn or error, got '%s'",
                 cfg->log_level);
        return BB_ECONFIG;
    }
    if (bb_console_check(cfg, err, errlen) != BB_OK) {
        return BB_ECONFIG;
    }
    int rc = bb_conn_check_settings(cfg->redis, cfg->group, err, errlen);
    if (rc == BB_OK) {
        rc = bb_conn_check_auth(cfg->redis_user, cfg->redis_password, err, errlen);
    }
    if (rc != BB_OK) {
        return rc;
    }
    return bb_consumer_name_default(&cfg->name);
}

/* Loads the directory, retrying with backoff while Redis is unreachable. */
static int load_directory(const struct bb_broker_config *cfg, struct bb_dir *dir, char *last_id,
                          size_t len)
{
    int64_t backoff = cfg->reconnect_min_ms;
    while (!stop_requested) {
        char err[256] = "";
        redisContext *rc = bb_redis_connect(cfg->redis, cfg->redis_user, cfg->redis_password,
                                            (int)cfg->command_timeout_ms * 10, err, sizeof(err));
        if (rc) {
            struct bb_snapshot_stats st;
            int r = bb_snapshot_load(rc, dir, last_id, len, &st, err, sizeof(err));
            redisFree(rc);
            if (r == BB_OK) {
                bb_info("directory loaded",
                        "users=%llu groups=%llu memberships=%llu follows=%llu skipped=%llu "
                        "seconds=%.2f from=%s",
                        (unsigned long long)st.users, (unsigned long long)st.groups,
                        (unsigned long long)st.memberships, (unsigned long long)st.follows,
                        (unsigned long long)(st.bad_users + st.bad_groups + st.bad_memberships +
                                             st.bad_follows),
                        st.seconds, last_id);
                return BB_OK;
            }
            if (r == BB_ENOMEM) {
                bb_error("directory does not fit in memory", NULL);
                return r;
            }
        }
        bb_warn("directory snapshot failed, retrying", "err=\"%s\" retry_ms=%lld", err,
                (long long)backoff);
        usleep((useconds_t)backoff * 1000);
        backoff = backoff * 2 > cfg->reconnect_max_ms ? cfg->reconnect_max_ms : backoff * 2;
    }
    return BB_EIO;
}

/* Defaults, the file, the --set overrides, the checks: into *to (which the
 * caller frees with bb_config_free, also on failure). */
static int load_config(struct bb_broker_config *to, char *err, size_t errlen)
{
    memset(to, 0, sizeof(*to));
    int rc = bb_config_defaults(bb_broker_opts, bb_broker_nopts, to, err, errlen);
    if (rc == BB_OK && config_path) {
        rc = bb_config_load_file(bb_broker_opts, bb_broker_nopts, to, config_path, err, errlen);
    }
    if (rc == BB_OK) {
        rc = bb_config_apply_sets(bb_broker_opts, bb_broker_nopts, to,
                                  (const char *const *)config_sets, config_nsets, err, errlen);
    }
    return rc == BB_OK ? check(to, err, errlen) : rc;
}

int main(int argc, char **argv)
{
    struct bb_cmdline cl;
    char err[512];
    int status = 1;

    bb_log_init("broker", BB_LOG_INFO);
    if (bb_cmdline_parse(argc, argv, &cl) != BB_OK) {
        bb_cmdline_free(&cl);
        usage(stderr);
        return 2;
    }
    if (cl.help || cl.version) {
        if (cl.help) {
            usage(stdout);
        } else {
            printf("buurtbus-broker 0.1.0\n");
        }
        bb_cmdline_free(&cl);
        return 0;
    }
    /* The file first, then --set overrides on top of it. */
    bool check_only = cl.check_only, dump = cl.dump;
    config_path = cl.config ? strdup(cl.config) : NULL;
    config_sets = calloc(cl.nsets + 1, sizeof(*config_sets));
    for (size_t i = 0; config_sets && i < cl.nsets; i++) {
        config_sets[config_nsets++] = strdup(cl.sets[i]);
    }
    bb_cmdline_free(&cl);
    if (load_config(&cfg, err, sizeof(err)) != BB_OK) {
        fprintf(stderr, "buurtbus-broker: %s\n", err);
        goto out_config;
    }
    if (dump) {
        bb_config_dump(bb_broker_opts, bb_broker_nopts, &cfg, stdout);
    }
    if (check_only || dump) {
        if (check_only) {
            printf("configuration ok\n");
        }
        status = 0;
        goto out_config;
    }
    bb_log_set_level((enum bb_log_level)bb_log_level_parse(cfg.log_level));
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_early_signal);
    signal(SIGINT, on_early_signal);
    signal(SIGHUP, SIG_IGN); /* nothing to reload before the loop runs */

    struct bb_dir_params dp = {(unsigned)cfg.default_precision, (unsigned)cfg.watch_max_cells,
                               (unsigned)cfg.max_radius_m};
    struct bb_dir *dir = bb_dir_new(&dp);
    if (!dir) {
        bb_error("cannot create the routing index", NULL);
        goto out_config;
    }
    char last_id[BB_STREAM_ID_MAX] = "0-0";
    bb_notify_status("loading the directory");
    if (load_directory(&cfg, dir, last_id, sizeof(last_id)) != BB_OK) {
        status = stop_requested ? 0 : 1;
        goto out_dir;
    }
    /* Before the routers start: neighbours into neighbouring memory. */
    if (bb_dir_compact(dir) != BB_OK) {
        goto out_dir;
    }
    struct bb_dir_stats ds;
    bb_dir_stats(dir, &ds);
    bb_info("index ready", "users=%zu groups=%zu cells=%zu bytes_per_user=%.1f", ds.users,
            ds.groups, ds.cells, ds.users ? (double)ds.bytes_users / (double)ds.users : 0.0);

    evthread_use_pthreads();
    struct event_base *base = event_base_new();
    if (!base) {
        bb_error("cannot create the event loop", NULL);
        goto out_dir;
    }
    if (bb_metrics_listen(base, cfg.metrics_addr) != 0) {
        goto out_base;
    }
    struct bb_consumer *consumer = bb_consumer_new(base, dir, &cfg, last_id);
    if (!consumer) {
        bb_error("cannot start the consumer", NULL);
        goto out_metrics;
    }
    bool console_failed;
    bb_metrics_streams_start(base, bb_consumer_commands(consumer), 2000);
    struct bb_console *console = bb_console_new(
        base, bb_metrics_httpd(), bb_consumer_commands(consumer), &cfg, &console_failed);
    if (console_failed) {
        bb_consumer_free(consumer);
        bb_metrics_streams_stop();
        goto out_metrics;
    }
    struct event *sig_term = evsignal_new(base, SIGTERM, on_signal, consumer);
    struct event *sig_int = evsignal_new(base, SIGINT, on_signal, consumer);
    struct event *sig_hup = evsignal_new(base, SIGHUP, on_signal, consumer);
    event_add(sig_term, NULL);
    event_add(sig_int, NULL);
    event_add(sig_hup, NULL);
    bb_notify_start(base, consumer_ready, NULL);
    if (stop_requested) {
        bb_notify_stopping();
        bb_consumer_shutdown(consumer);
    }
    bb_info("broker running", "name=%s group=%s routers=%lld redis=%s", cfg.name, cfg.group,
            (long long)cfg.router_threads, cfg.redis);
    event_base_dispatch(base);
    bb_info("broker stopped", NULL);
    status = 0;

    /* Freeing the signal events puts back the handlers from before them
     * (on_early_signal, SIGHUP ignored): a second SIGTERM during the
     * teardown only sets a flag. */
    event_free(sig_term);
    event_free(sig_int);
    event_free(sig_hup);
    bb_consumer_free(consumer); /* before the console: replies it waits for end here */
    bb_console_free(console);
    bb_metrics_streams_stop();
    bb_notify_stop();
out_metrics:
    bb_metrics_close();
out_base:
    event_base_free(base);
out_dir:
    bb_dir_free(dir);
out_config:
    bb_config_free(bb_broker_opts, bb_broker_nopts, &cfg);
    free(config_path);
    for (size_t i = 0; i < config_nsets; i++) {
        free(config_sets[i]);
    }
    free(config_sets);
    return status;
}
