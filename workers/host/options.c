/* The worker's options, and the per-channel "channel.<inst>.<key>" lines.
 *
 * The common parser (common/config.c) rejects names it does not know, and
 * the channel keys depend on which plug-ins are named. So the file is read
 * here once: channel.* lines are taken out (and parsed with the same
 * syntax), every other line goes, in place, to bb_config_load_stream
 * through a memfd, so its errors keep the file's name and line numbers.
 *
 * Threads: main thread, before the loop starts. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bb_err.h"
#include "config.h"
#include "host.h"
#include "log.h"

#ifndef BB_PLUGIN_DIR
#define BB_PLUGIN_DIR "/usr/local/lib/buurtbus"
#endif

#define OPT(name, type, field, def, min, max, help)                                                \
    {                                                                                              \
        name, type, offsetof(struct bb_worker_config, field), def, min, max, help                  \
    }

static const struct bb_opt worker_opts[] = {
    OPT("redis", BB_OPT_STRING, redis, "127.0.0.1:6379", 0, 0,
        "Redis address: IP:port (an IP literal) or a unix socket path"),
    OPT("redis_user", BB_OPT_STRING, redis_user, "", 0, 0,
        "Redis ACL user sent with AUTH (deploy/redis/); empty: the default user"),
    OPT("redis_password_file", BB_OPT_SECRET_FILE, redis_password, NULL, 0, 0,
        "file holding the Redis password (AUTH); empty: no AUTH"),
    OPT("name", BB_OPT_STRING, name, "", 0, 0, "consumer name, unique per worker; empty: host-pid"),
    OPT("group", BB_OPT_STRING, group, "bb-workers", 0, 0, "consumer group of bb:out:*"),
    OPT("plugin_dir", BB_OPT_STRING, plugin_dir, BB_PLUGIN_DIR, 0, 0,
        "directory holding bb-channel-<name>.so"),
    OPT("channels", BB_OPT_STRING, channels, "", 0, 0,
        "comma-separated channel instances; each needs channel.<inst>.plugin"),
    OPT("log_level", BB_OPT_STRING, log_level, "info", 0, 0, "debug, info, warn or error"),
    OPT("read_count", BB_OPT_INT, read_count, "16", 1, 10000, "batch entries per XREADGROUP"),
    OPT("block", BB_OPT_DURATION_MS, block_ms, "1s", 10, 60000, "XREADGROUP BLOCK time"),
    OPT("max_inflight", BB_OPT_INT, max_inflight, "64", 1, 100000,
        "batch entries read and not yet acked, per channel"),
    OPT("claim_idle", BB_OPT_DURATION_MS, claim_idle_ms, "60s", 1000, 86400000,
        "take over batches another worker left pending this long"),
    OPT("claim_interval", BB_OPT_DURATION_MS, claim_interval_ms, "5s", 100, 3600000,
        "how often to look for such batches"),
    OPT("connect_timeout", BB_OPT_DURATION_MS, connect_timeout_ms, "2s", 100, 60000,
        "Redis connect timeout"),
    OPT("command_timeout", BB_OPT_DURATION_MS, command_timeout_ms, "5s", 100, 600000,
        "a connection with no reply this long is dropped and reconnected"),
    OPT("reconnect_min", BB_OPT_DURATION_MS, reconnect_min_ms, "100ms", 10, 60000,
        "first reconnect backoff"),
    OPT("reconnect_max", BB_OPT_DURATION_MS, reconnect_max_ms, "5s", 10, 600000,
        "largest reconnect backoff"),
    OPT("tcp_keepalive", BB_OPT_INT, keepalive_s, "15", 0, 3600, "TCP keepalive: 0 off"),
    OPT("sent_ttl", BB_OPT_DURATION_MS, sent_ttl_ms, "7d", 1000, 31536000000LL,
        "how long bb:sent:<inst>:{delivery id} records are kept (longer than any redelivery)"),
    OPT("max_unconfirmed", BB_OPT_INT, max_unconfirmed, "256", 1, 100000,
        "deliveries per channel recorded and not yet confirmed by the plug-in; a crash loses "
        "at most these"),
    OPT("max_attempts", BB_OPT_INT, max_attempts, "50", 1, 1000,
        "sends of one delivery before it goes to bb:dead (like Amazon SNS: 50)"),
    OPT("retry_min", BB_OPT_DURATION_MS, retry_min_ms, "1s", 1, 3600000,
        "first retry backoff (doubles, with jitter)"),
    OPT("retry_max", BB_OPT_DURATION_MS, retry_max_ms, "20m", 1, 86400000,
        "largest retry backoff, also the cap on a provider's Retry-After"),
    OPT("retry_budget", BB_OPT_DURATION_MS, retry_budget_ms, "6h", 1, 604800000,
        "a delivery still failing this long after its first try goes to bb:dead; waiting "
        "retries are kept in Redis (bb:later:<inst>), not in memory"),
    OPT("later_poll", BB_OPT_DURATION_MS, later_poll_ms, "500ms", 10, 60000,
        "how often due retries and collections are looked for"),
    OPT("max_payload", BB_OPT_BYTES, max_payload, "256kb", 1024, 16777216,
        "largest decompressed notification accepted"),
    OPT("shutdown_grace", BB_OPT_DURATION_MS, shutdown_grace_ms, "10s", 0, 600000,
        "on SIGTERM, how long to finish deliveries in flight"),
    OPT("metrics_addr", BB_OPT_STRING, metrics_addr, "", 0, 0,
        "host:port for /metrics, /healthz, /readyz; empty: off"),
    OPT("http_timeout", BB_OPT_DURATION_MS, http_timeout_ms, "10s", 100, 600000,
        "default timeout of a plug-in's HTTP request"),
    OPT("max_host_connections", BB_OPT_INT, max_host_connections, "16", 1, 10000,
        "connections per provider host; more transfers wait (HTTP/2 multiplexes on one, SMTP "
        "needs one per message in flight)"),
};
static const size_t worker_nopts = sizeof(worker_opts) / sizeof(worker_opts[0]);

#define COPT(name, type, field, def, min, max, help)                                               \
    {                                                                                              \
        name, type, offsetof(struct bb_chan_opts, field), def, min, max, help                      \
    }

/* channel.<inst>.<name>: what the host does for an instance, whatever its plug-in. */
static const struct bb_opt chan_opts[] = {
    COPT("plugin", BB_OPT_STRING, plugin, "", 0, 0,
         "the plug-in (bb-channel-<name>.so); several, comma-separated: each recipient goes to "
         "the one its push_platform names, options as channel.<inst>.<plug-in>.<option>"),
    COPT("stream", BB_OPT_STRING, stream, "", 0, 0, "stream read; empty: bb:out:<inst>"),
    COPT("group", BB_OPT_STRING, group, "", 0, 0,
         "consumer group; empty: the worker's group. Instances reading one stream need "
         "different groups"),
    COPT("collect", BB_OPT_STRING, collect, "", 0, 0,
         "empty: send each delivery; \"user\": collect per recipient in Redis and send them "
         "as one digest at the user's digest hour (daily or weekly, the user's time zone); a "
         "duration (1h, 7d): collect and send every interval"),
    COPT("collect_max", BB_OPT_INT, collect_max, "100", 1, 10000,
         "items kept per collection; more are dropped with a receipt"),
    COPT("rate", BB_OPT_INT, rate, "0", 0, 10000000,
         "sends started per second (token bucket); 0: no limit"),
    COPT("burst", BB_OPT_INT, burst, "0", 0, 10000000, "token bucket size; 0: one second's rate"),
    COPT("concurrency", BB_OPT_INT, concurrency, "0", 0, 100000,
         "sends in flight at once; 0: max_unconfirmed"),
    COPT("breaker_failures", BB_OPT_INT, breaker_failures, "20", 1, 1000000,
         "consecutive retryable failures that open the circuit breaker (sends pause)"),
    COPT("breaker_cooldown", BB_OPT_DURATION_MS, breaker_cooldown_ms, "30s", 100, 3600000,
         "how long an open breaker waits before one trial send"),
};
static const size_t chan_nopts = sizeof(chan_opts) / sizeof(chan_opts[0]);

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Parses a value as common/config.c does: optional '=', optional double
 * quotes with \" and \\, '#' comment after an unquoted value. */
static int parse_value(const char *p, char **out)
{
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    if (*p == '=') {
        p++;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
    }
    if (*p == '"') {
        char *v = malloc(strlen(p) + 1);
        size_t n = 0;
        if (!v) {
            return BB_ENOMEM;
        }
        for (p++; *p && *p != '"'; p++) {
            if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) {
                p++;
            }
            v[n++] = *p;
        }
        v[n] = '\0';
        if (*p != '"') {
            free(v);
            return BB_EINVAL;
        }
        for (p++; *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'; p++) {
        }
        if (*p && *p != '#') {
            free(v);
            return BB_EINVAL;
        }
        *out = v;
        return BB_OK;
    }
    const char *end = p;
    while (*end && *end != '#' && *end != '\n' && *end != '\r') {
        end++;
    }
    while (end > p && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }
    *out = dup_n(p, (size_t)(end - p));
    return *out ? BB_OK : BB_ENOMEM;
}

/* Keeps "channel.<inst>.<key>" = value for later; the instance list may
 * come after the lines that name it. */
struct pending_kv {
    char *inst, *key, *value;
    const char *source;
    int line;
};

struct kv_list {
    struct pending_kv *v;
    size_t n, cap;
};

static int kv_add(struct kv_list *l, const char *name, const char *value, int line,
                  const char *where, char *err, size_t errlen)
{
    const char *inst = name + strlen("channel.");
    const char *dot = strchr(inst, '.');
    if (!dot || dot == inst || !dot[1]) {
        snprintf(err, errlen, "%s:%d: %s: expected channel.<instance>.<option>", where, line, name);
        return BB_ECONFIG;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct pending_kv *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            return BB_ENOMEM;
        }
        l->v = v;
        l->cap = cap;
    }
    struct pending_kv *kv = &l->v[l->n];
    kv->inst = dup_n(inst, (size_t)(dot - inst));
    kv->key = strdup(dot + 1);
    kv->value = strdup(value);
    kv->line = line;
    kv->source = where;
    if (!kv->inst || !kv->key || !kv->value) {
        free(kv->inst);
        free(kv->key);
        free(kv->value);
        return BB_ENOMEM;
    }
    l->n++;
    return BB_OK;
}

static void kv_list_free(struct kv_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].inst);
        free(l->v[i].key);
        free(l->v[i].value);
    }
    free(l->v);
}

/* Splits the file: channel.* lines into l, the rest (same line numbers)
 * through a memfd to the common parser. */
static int load_file(struct bb_worker_config *cfg, const char *path, struct kv_list *l, char *err,
                     size_t errlen)
{
    int rc = BB_ECONFIG;
    FILE *in = fopen(path, "r");
    if (!in) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return BB_ECONFIG;
    }
    int fd = memfd_create("bb-worker-conf", MFD_CLOEXEC);
    FILE *out = fd >= 0 ? fdopen(fd, "w+") : NULL;
    if (!out) {
        snprintf(err, errlen, "%s: cannot buffer the file: %s", path, strerror(errno));
        goto close_in;
    }
    char line[4096];
    int lineno = 0;
    while (fgets(line, sizeof(line), in)) {
        lineno++;
        const char *p = line;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        if (strncmp(p, "channel.", 8) != 0) {
            fputs(line, out);
            continue;
        }
        fputc('\n', out);
        size_t nl = strcspn(p, " \t=\r\n");
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)nl, p);
        char *value = NULL;
        if (parse_value(p + nl, &value) != BB_OK) {
            snprintf(err, errlen, "%s:%d: %s: unterminated or malformed quoted value", path, lineno,
                     name);
            goto close_out;
        }
        rc = kv_add(l, name, value, lineno, path, err, errlen);
        free(value);
        if (rc != BB_OK) {
            goto close_out;
        }
        rc = BB_ECONFIG;
    }
    /* The rest, in place (channel lines blanked), so errors keep the real
     * file's name and line numbers and relative secret files its directory. */
    rewind(out);
    rc = bb_config_load_stream(worker_opts, worker_nopts, cfg, out, path, err, errlen);
close_out:
    fclose(out);
close_in:
    fclose(in);
    return rc;
}

/* Fills in an instance's defaults and splits its plug-in list. */
static int finish_channel(const struct bb_worker_config *cfg, struct bb_chan_conf *c, char *err,
                          size_t errlen)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "bb:out:%s", c->instance);
    c->stream = strdup(c->o.stream[0] ? c->o.stream : buf);
    c->group = strdup(c->o.group[0] ? c->o.group : cfg->group);
    c->plugin = c->o.plugin;
    if (!c->stream || !c->group) {
        return BB_ENOMEM;
    }
    for (const char *p = c->o.plugin; *p;) {
        size_t len = strcspn(p, ", \t");
        if (len) {
            char **np = realloc(c->plugins, (c->nplugins + 1) * sizeof(*np));
            if (!np) {
                return BB_ENOMEM;
            }
            c->plugins = np;
            if (!(c->plugins[c->nplugins] = dup_n(p, len))) {
                return BB_ENOMEM;
            }
            c->nplugins++;
        }
        p += len;
        p += strspn(p, ", \t");
    }
    if (c->nplugins == 0) {
        snprintf(err, errlen, "channel.%s.plugin: required (the plug-in's name, e.g. file)",
                 c->instance);
        return BB_ECONFIG;
    }
    if (c->o.collect[0] == '\0') {
        c->collect_ms = -1;
    } else if (strcmp(c->o.collect, "user") == 0) {
        c->collect_ms = 0;
    } else if (bb_parse_duration_ms(c->o.collect, &c->collect_ms) != BB_OK ||
               c->collect_ms < 60000) {
        snprintf(err, errlen,
                 "channel.%s.collect: expected \"user\" or a duration of at least 1m, got '%s'",
                 c->instance, c->o.collect);
        return BB_ECONFIG;
    }
    /* With several plug-ins, each of the instance's options names its plug-in. */
    for (size_t k = 0; c->nplugins > 1 && k < c->nkv; k++) {
        bool named = false;
        for (size_t i = 0; i < c->nplugins; i++) {
            size_t n = strlen(c->plugins[i]);
            named =
                named || (strncmp(c->kv[k].key, c->plugins[i], n) == 0 && c->kv[k].key[n] == '.');
        }
        if (!named) {
            snprintf(err, errlen,
                     "%s:%d: channel.%s.%s: this instance has several plug-ins; write "
                     "channel.%s.<plug-in>.%s",
                     c->kv[k].source, c->kv[k].line, c->instance, c->kv[k].key, c->instance,
                     c->kv[k].key);
            return BB_ECONFIG;
        }
    }
    return BB_OK;
}

static int build_channels(struct bb_worker_config *cfg, struct kv_list *l, char *err, size_t errlen)
{
    size_t n = 0;
    for (const char *p = cfg->channels; *p;) {
        size_t len = strcspn(p, ",");
        n++;
        p += len;
        if (*p) {
            p++;
        }
    }
    cfg->chans = calloc(n ? n : 1, sizeof(*cfg->chans));
    if (!cfg->chans) {
        return BB_ENOMEM;
    }
    for (const char *p = cfg->channels; *p;) {
        size_t len = strcspn(p, ",");
        const char *s = p, *e = p + len;
        while (s < e && isspace((unsigned char)*s)) {
            s++;
        }
        while (e > s && isspace((unsigned char)e[-1])) {
            e--;
        }
        p += len;
        if (*p) {
            p++;
        }
        if (s == e) {
            continue;
        }
        struct bb_chan_conf *c = &cfg->chans[cfg->nchans];
        c->instance = dup_n(s, (size_t)(e - s));
        if (!c->instance) {
            return BB_ENOMEM;
        }
        cfg->nchans++;
        int rc = bb_config_defaults(chan_opts, chan_nopts, &c->o, err, errlen);
        if (rc != BB_OK) {
            return rc;
        }
        for (size_t i = 0; i + 1 < cfg->nchans; i++) {
            if (strcmp(cfg->chans[i].instance, c->instance) == 0) {
                snprintf(err, errlen, "channels: '%s' is named twice", c->instance);
                return BB_ECONFIG;
            }
        }
    }
    if (cfg->nchans == 0) {
        snprintf(err, errlen, "channels: name at least one channel instance");
        return BB_ECONFIG;
    }
    for (size_t i = 0; i < l->n; i++) {
        struct pending_kv *kv = &l->v[i];
        struct bb_chan_conf *c = NULL;
        for (size_t k = 0; k < cfg->nchans; k++) {
            if (strcmp(cfg->chans[k].instance, kv->inst) == 0) {
                c = &cfg->chans[k];
            }
        }
        if (!c) {
            snprintf(err, errlen, "%s:%d: channel.%s.%s: '%s' is not in channels", kv->source,
                     kv->line, kv->inst, kv->key, kv->inst);
            return BB_ECONFIG;
        }
        bool host_opt = false;
        for (size_t k = 0; k < chan_nopts; k++) {
            host_opt = host_opt || strcmp(chan_opts[k].name, kv->key) == 0;
        }
        if (host_opt) {
            char why[256];
            if (bb_config_set(chan_opts, chan_nopts, &c->o, kv->key, kv->value, why, sizeof(why)) !=
                BB_OK) {
                snprintf(err, errlen, "%s:%d: channel.%s.%s", kv->source, kv->line, kv->inst, why);
                return BB_ECONFIG;
            }
            continue;
        }
        struct bb_chan_kv *nkv = realloc(c->kv, (c->nkv + 1) * sizeof(*nkv));
        if (!nkv) {
            return BB_ENOMEM;
        }
        c->kv = nkv;
        /* A later line overrides an earlier one, as for the other options. */
        c->kv[c->nkv++] = (struct bb_chan_kv){kv->key, kv->value, kv->source, kv->line};
        kv->key = kv->value = NULL;
    }
    for (size_t k = 0; k < cfg->nchans; k++) {
        int rc = finish_channel(cfg, &cfg->chans[k], err, errlen);
        if (rc != BB_OK) {
            return rc;
        }
        for (size_t i = 0; i < k; i++) {
            if (strcmp(cfg->chans[i].stream, cfg->chans[k].stream) == 0 &&
                strcmp(cfg->chans[i].group, cfg->chans[k].group) == 0) {
                snprintf(err, errlen,
                         "channel.%s and channel.%s read %s in one consumer group, so each "
                         "would get only part of it: give one a channel.<inst>.group",
                         cfg->chans[i].instance, cfg->chans[k].instance, cfg->chans[k].stream);
                return BB_ECONFIG;
            }
        }
    }
    return BB_OK;
}

int bb_worker_config_load(struct bb_worker_config *cfg, const char *path, const char *const *sets,
                          size_t nsets, char *err, size_t errlen)
{
    struct kv_list l = {0};
    memset(cfg, 0, sizeof(*cfg));
    int rc = bb_config_defaults(worker_opts, worker_nopts, cfg, err, errlen);
    if (rc == BB_OK && path) {
        rc = load_file(cfg, path, &l, err, errlen);
    }
    for (size_t i = 0; rc == BB_OK && i < nsets; i++) {
        const char *eq = strchr(sets[i], '=');
        if (!eq) {
            snprintf(err, errlen, "--set %s: expected NAME=VALUE", sets[i]);
            rc = BB_ECONFIG;
            break;
        }
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)(eq - sets[i]), sets[i]);
        if (strncmp(name, "channel.", 8) == 0) {
            rc = kv_add(&l, name, eq + 1, 0, "--set", err, errlen);
        } else {
            rc = bb_config_set(worker_opts, worker_nopts, cfg, name, eq + 1, err, errlen);
        }
    }
    if (rc == BB_OK) {
        rc = build_channels(cfg, &l, err, errlen);
    }
    kv_list_free(&l);
    return rc;
}

/* ---- reload ------------------------------------------------------------------------------ */

/* What a reload may change while running: the log level, and an
 * instance's limits (the streams read them at every send). */
static bool live(const struct bb_opt *o)
{
    static const char *const names[] = {"log_level",        "rate",         "burst",
                                        "concurrency",      "collect_max",  "breaker_failures",
                                        "breaker_cooldown", "retry_budget", "max_attempts",
                                        "retry_min",        "retry_max"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(o->name, names[i]) == 0) {
            return true;
        }
    }
    return false;
}

struct reload_ctx {
    void *running;
    const void *fresh;
    const char *instance; /* NULL: a worker option */
    unsigned applied, restart;
};

static void reload_one(const struct bb_opt *o, void *arg)
{
    struct reload_ctx *r = arg;
    if (!live(o)) {
        r->restart++;
        bb_warn("option changed; takes effect after a restart", "option=%s%s%s",
                r->instance ? r->instance : "", r->instance ? "." : "", o->name);
        return;
    }
    void *to = (char *)r->running + o->offset;
    const void *from = (const char *)r->fresh + o->offset;
    if (o->type == BB_OPT_STRING) {
        char *copy = strdup(*(char *const *)from);
        if (!copy) {
            return;
        }
        free(*(char **)to);
        *(char **)to = copy;
    } else {
        *(int64_t *)to = *(const int64_t *)from;
    }
    r->applied++;
    bb_info("option reloaded", "option=%s%s%s", r->instance ? r->instance : "",
            r->instance ? "." : "", o->name);
}

static bool same_kv(const struct bb_chan_conf *a, const struct bb_chan_conf *b)
{
    if (a->nkv != b->nkv) {
        return false;
    }
    for (size_t i = 0; i < a->nkv; i++) {
        if (strcmp(a->kv[i].key, b->kv[i].key) != 0 ||
            strcmp(a->kv[i].value, b->kv[i].value) != 0) {
            return false;
        }
    }
    return true;
}

int bb_worker_config_reload(struct bb_worker_config *running, const struct bb_worker_config *fresh)
{
    struct reload_ctx r = {.running = running, .fresh = fresh};
    bb_config_diff(worker_opts, worker_nopts, running, fresh, reload_one, &r);
    bool same_set = running->nchans == fresh->nchans;
    for (size_t i = 0; same_set && i < running->nchans; i++) {
        same_set = strcmp(running->chans[i].instance, fresh->chans[i].instance) == 0;
    }
    if (!same_set) {
        r.restart++;
        bb_warn("option changed; takes effect after a restart", "option=channels");
    }
    for (size_t i = 0; same_set && i < running->nchans; i++) {
        struct bb_chan_conf *c = &running->chans[i];
        r.running = &c->o;
        r.fresh = &fresh->chans[i].o;
        r.instance = c->instance;
        bb_config_diff(chan_opts, chan_nopts, &c->o, &fresh->chans[i].o, reload_one, &r);
        if (!same_kv(c, &fresh->chans[i])) {
            r.restart++;
            bb_warn("plug-in options changed; take effect after a restart", "channel=%s",
                    c->instance);
        }
    }
    bb_info("configuration reloaded", "applied=%u need_restart=%u", r.applied, r.restart);
    return (int)r.applied;
}

void bb_worker_config_dump(const struct bb_worker_config *cfg)
{
    bb_config_dump(worker_opts, worker_nopts, cfg, stdout);
    for (size_t i = 0; i < cfg->nchans; i++) {
        const struct bb_chan_conf *c = &cfg->chans[i];
        printf("channel.%s.plugin \"%s\"\nchannel.%s.stream %s\nchannel.%s.group %s\n", c->instance,
               c->plugin, c->instance, c->stream, c->instance, c->group);
        printf("channel.%s.collect \"%s\"\nchannel.%s.collect_max %lld\n", c->instance,
               c->o.collect, c->instance, (long long)c->o.collect_max);
        printf("channel.%s.rate %lld\nchannel.%s.burst %lld\nchannel.%s.concurrency %lld\n",
               c->instance, (long long)c->o.rate, c->instance, (long long)c->o.burst, c->instance,
               (long long)c->o.concurrency);
        printf("channel.%s.breaker_failures %lld\nchannel.%s.breaker_cooldown %lldms\n",
               c->instance, (long long)c->o.breaker_failures, c->instance,
               (long long)c->o.breaker_cooldown_ms);
        for (size_t k = 0; k < c->nkv; k++) {
            printf("channel.%s.%s \"%s\"\n", c->instance, c->kv[k].key, c->kv[k].value);
        }
    }
}

void bb_worker_config_free(struct bb_worker_config *cfg)
{
    for (size_t i = 0; i < cfg->nchans; i++) {
        struct bb_chan_conf *c = &cfg->chans[i];
        free(c->instance);
        free(c->stream);
        free(c->group);
        for (size_t k = 0; k < c->nplugins; k++) {
            free(c->plugins[k]);
        }
        free(c->plugins);
        bb_config_free(chan_opts, chan_nopts, &c->o);
        for (size_t k = 0; k < c->nkv; k++) {
            free(c->kv[k].key);
            free(c->kv[k].value);
        }
        free(c->kv);
    }
    free(cfg->chans);
    cfg->chans = NULL;
    cfg->nchans = 0;
    bb_config_free(worker_opts, worker_nopts, cfg);
}
