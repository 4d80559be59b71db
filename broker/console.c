/* The operator console: a small web page (broker/console/, embedded at
 * build time) and its JSON API under /console on the metrics server
 * (metrics_addr, loopback unless the operator binds it elsewhere). Off by
 * default (console yes turns it on; console_token_file is then required).
 *
 *   GET  /console/                 the page (index.html, app.js, style.css): no token
 *   GET  /console/api/stats        counters, latency and recipients histograms
 *   GET  /console/api/streams      length, groups (pending, lag), consumers per stream
 *   GET  /console/api/dead         newest dead letters: reason, stream, id, time, size
 *   POST /console/api/dead/replay  {"id"}: a broker dead letter back to its stream
 *   GET  /console/api/reports      newest reports (entry, id, category, urgency)
 *   POST /console/api/explain      {"report": {...}} or {"entry": "<bb:reports id>"}
 *
 * The API wants "Authorization: Bearer <token>" (compared in constant
 * time; never logged); POSTs also "Content-Type: application/json", which a
 * cross-site form cannot send. Every answer says no-store, nosniff, DENY
 * framing and a CSP without inline script. Dead letters are listed without
 * their payload bytes.
 *
 * Explanations do what buurtbusctl route does: a fresh index loaded from
 * Redis on a thread of its own, so the live index's hourly cap counters are
 * not touched (routing on them would count) and the loop never blocks. One
 * at a time; it costs a second copy of the directory while it runs.
 *
 * Threads: the I/O thread (handlers, Redis replies on the commands
 * connection); the explain thread owns its index, its Redis connection and
 * the job until it hands the job back with event_active. */
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bb_err.h"
#include "bb_httpd.h"
#include "directory.h"
#include "internal.h"
#include "json.h"
#include "log.h"
#include "report.pb-c.h"
#include "route.h"
#include "snapshot.h"
#include "validate.h"

#define MIN_TOKEN 16
#define MAX_BODY (64 * 1024)
#define MAX_PEOPLE 5000 /* explanation lines sent to the page */
#define DEAD_STREAM "bb:dead"

struct bb_console_asset {
    const char *path;
    const char *type;
    const unsigned char *data;
    size_t len;
};
/* console_assets.c, generated from broker/console/ by embed.cmake. */
extern const struct bb_console_asset bb_console_assets[];
extern const size_t bb_console_nassets;

/* Adds the dead letter back to its stream and deletes it, if it is still there. */
static const char replay_script[] = "if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then "
                                    "return false end\n"
                                    "local id = redis.call('XADD', KEYS[2], '*', 'p', ARGV[2])\n"
                                    "redis.call('XDEL', KEYS[1], ARGV[1])\n"
                                    "return id\n";

struct explain_job {
    struct bb_console *con;
    struct evhttp_request *req;
    uint8_t *report; /* packed Report */
    size_t len;
    int code;   /* the thread's answer */
    char *json; /* heap */
};

struct bb_console {
    struct event_base *base;
    struct bb_conn *commands;
    const struct bb_broker_config *cfg;
    struct event *explained; /* activated by the explain thread */
    pthread_t thread;
    struct explain_job *job; /* non-NULL while an explanation runs */
    /* Guessing the token: failed attempts in the current minute; past
     * MAX_FAILURES every request is refused until locked_until. */
    int64_t window_start, locked_until;
    unsigned failures;
};

#define MAX_FAILURES 20
#define LOCK_MS 60000

/* ---- answers ----------------------------------------------------------------------------- */

static void secure_headers(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(h, "X-Frame-Options", "DENY");
    evhttp_add_header(h, "Referrer-Policy", "no-referrer");
    evhttp_add_header(h, "Content-Security-Policy",
                      "default-src 'none'; script-src 'self'; style-src 'self'; "
                      "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                      "frame-ancestors 'none'");
}

static void reply_error(struct evhttp_request *req, int code, const char *reason)
{
    secure_headers(req);
    bb_httpd_reply_error(req, code, reason);
}

/* Sends o (and drops the reference). */
static void reply_obj(struct evhttp_request *req, int code, struct json_object *o)
{
    if (!o) {
        reply_error(req, 500, "out_of_memory");
        return;
    }
    secure_headers(req);
    bb_httpd_reply_json(req, code, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

/* ---- authentication ---------------------------------------------------------------------- */

/* Time depends on the expected token's length only. */
static bool same_token(const char *given, size_t glen, const char *want)
{
    size_t wlen = strlen(want);
    unsigned char d = glen != wlen;
    for (size_t i = 0; i < wlen; i++) {
        d |= (unsigned char)(want[i] ^ (i < glen ? given[i] : 0));
    }
    return d == 0;
}

static bool authorized(struct bb_console *con, struct evhttp_request *req)
{
    int64_t now = bb_mono_ms();
    if (now < con->locked_until) {
        char after[24];
        snprintf(after, sizeof(after), "%lld", (long long)((con->locked_until - now) / 1000 + 1));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", after);
        reply_error(req, 429, "too_many_failed_attempts");
        return false;
    }
    const char *a = bb_httpd_header(req, "Authorization");
    if (a && strncasecmp(a, "Bearer ", 7) == 0) {
        const char *t = a + 7;
        while (*t == ' ') {
            t++;
        }
        size_t n = strlen(t);
        while (n && (t[n - 1] == ' ' || t[n - 1] == '\t')) {
            n--;
        }
        if (same_token(t, n, con->cfg->console_token)) {
            return true;
        }
    }
    if (now - con->window_start > LOCK_MS) {
        con->window_start = now;
        con->failures = 0;
    }
    if (++con->failures > MAX_FAILURES) {
        /* Someone is guessing: nobody gets in for a minute, the operator
         * included (the console is on loopback; the log says why). */
        con->locked_until = now + LOCK_MS;
        con->failures = 0;
        bb_warn("console: too many failed token attempts, locked", "seconds=%d", LOCK_MS / 1000);
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                      "Bearer realm=\"buurtbus\"");
    reply_error(req, 401, "unauthorized");
    return false;
}

/* The POST body as JSON; answers the request itself when it is not. */
static struct json_object *json_body(struct evhttp_request *req)
{
    const char *ct = bb_httpd_header(req, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 || (ct[16] && ct[16] != ';')) {
        reply_error(req, 415, "content_type_must_be_application_json");
        return NULL;
    }
    size_t len;
    const char *body = bb_httpd_body(req, &len);
    if (!body) {
        reply_error(req, 500, "out_of_memory");
        return NULL;
    }
    struct json_object *v = NULL;
    char err[256];
    if (bb_json_parse(body, len, &v, err, sizeof(err)) != BB_OK ||
        !json_object_is_type(v, json_type_object)) {
        json_object_put(v);
        reply_error(req, 400, "body_must_be_a_json_object");
        return NULL;
    }
    return v;
}

static const char *str_member(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

/* Stream entry ids: digits, '-', digits. */
static bool entry_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n < 3 || n >= BB_STREAM_ID_MAX) {
        return false;
    }
    const char *dash = strchr(id, '-');
    if (!dash || dash == id || !dash[1]) {
        return false;
    }
    for (const char *p = id; *p; p++) {
        if (p != dash && (*p < '0' || *p > '9')) {
            return false;
        }
    }
    return true;
}

static int64_t count_param(struct evhttp_request *req, int64_t def, int64_t max)
{
    char *v = bb_httpd_query(req, "count");
    int64_t n = v ? strtoll(v, NULL, 10) : def;
    free(v);
    return n < 1 ? 1 : n > max ? max : n;
}

/* Field name of a flat field/value reply. */
static const redisReply *entry_field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; fields && fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements;
         i += 2) {
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[i]->str, name) == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING) {
            return fields->element[i + 1];
        }
    }
    return NULL;
}

static void add_str(struct json_object *o, const char *key, const redisReply *v)
{
    if (v) {
        json_object_object_add(o, key, json_object_new_string_len(v->str, (int)v->len));
    }
}

/* ---- stats and streams ------------------------------------------------------------------- */

#define LOAD(x) ((uint64_t)atomic_load_explicit(&bb_metrics.x, memory_order_relaxed))

static void api_stats(struct bb_console *con, struct evhttp_request *req)
{
    struct json_object *o = json_object_new_object(), *ch = json_object_new_object(),
                       *lat = json_object_new_object(), *bounds = json_object_new_array(),
                       *counts = json_object_new_array(), *dir = json_object_new_object();
    json_object_object_add(o, "now_ms", json_object_new_int64(bb_now_ms()));
    json_object_object_add(o, "broker", json_object_new_string(con->cfg->name));
    json_object_object_add(o, "ready", json_object_new_boolean(atomic_load(&bb_metrics.ready)));
    json_object_object_add(o, "paused", json_object_new_boolean(atomic_load(&bb_metrics.paused)));
    json_object_object_add(o, "inflight", json_object_new_int64(atomic_load(&bb_metrics.inflight)));
    json_object_object_add(o, "reports_in", json_object_new_uint64(LOAD(reports_in)));
    json_object_object_add(o, "status_in", json_object_new_uint64(LOAD(status_in)));
    json_object_object_add(o, "routed", json_object_new_uint64(LOAD(reports_routed)));
    json_object_object_add(o, "dead_letters", json_object_new_uint64(LOAD(dead_letters)));
    json_object_object_add(o, "deliveries", json_object_new_uint64(LOAD(deliveries)));
    json_object_object_add(o, "recipients", json_object_new_uint64(LOAD(recipients)));
    json_object_object_add(o, "batches", json_object_new_uint64(LOAD(batches)));
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        json_object_object_add(ch, bb_channel_name(c),
                               json_object_new_uint64(LOAD(deliveries_by_channel[c])));
    }
    json_object_object_add(o, "channels", ch);
    json_object_object_add(dir, "users", json_object_new_uint64(LOAD(users)));
    json_object_object_add(dir, "groups", json_object_new_uint64(LOAD(groups)));
    json_object_object_add(o, "directory", dir);
    /* Bucket counts as they are (not cumulative); the last bound is +Inf (null). */
    for (int i = 0; i < BB_LAT_BUCKETS; i++) {
        int64_t b = bb_metrics_latency_bound_us(i);
        json_object_array_add(bounds, b == INT64_MAX ? NULL : json_object_new_int64(b));
        json_object_array_add(counts, json_object_new_uint64(LOAD(latency_le[i])));
    }
    json_object_object_add(lat, "bounds_us", bounds);
    json_object_object_add(lat, "counts", counts);
    json_object_object_add(lat, "count", json_object_new_uint64(LOAD(latency_count)));
    json_object_object_add(lat, "sum_us", json_object_new_uint64(LOAD(latency_sum_us)));
    json_object_object_add(o, "latency", lat);
    reply_obj(req, 200, o);
}

static void api_streams(struct bb_console *con, struct evhttp_request *req)
{
    const struct bb_streams *st = bb_metrics_streams();
    struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
    json_object_object_add(o, "at_ms", json_object_new_int64(st->at_ms));
    for (unsigned i = 0; i < st->n; i++) {
        const struct bb_stream_info *si = &st->s[i];
        struct json_object *s = json_object_new_object(), *groups = json_object_new_array();
        json_object_object_add(s, "name", json_object_new_string(si->name));
        json_object_object_add(s, "length",
                               si->length >= 0 ? json_object_new_int64(si->length) : NULL);
        for (unsigned g = 0; g < si->ng; g++) {
            const struct bb_group_info *gi = &si->g[g];
            struct json_object *go = json_object_new_object(), *cs = json_object_new_array();
            json_object_object_add(go, "name", json_object_new_string(gi->name));
            json_object_object_add(go, "pending", json_object_new_int64(gi->pending));
            json_object_object_add(go, "lag", gi->lag >= 0 ? json_object_new_int64(gi->lag) : NULL);
            json_object_object_add(go, "consumers", json_object_new_int64(gi->consumers));
            json_object_object_add(go, "last_id", json_object_new_string(gi->last_id));
            for (unsigned k = 0; k < gi->nc; k++) {
                struct json_object *co = json_object_new_object();
                json_object_object_add(co, "name", json_object_new_string(gi->c[k].name));
                json_object_object_add(co, "pending", json_object_new_int64(gi->c[k].pending));
                json_object_object_add(co, "idle_ms", json_object_new_int64(gi->c[k].idle_ms));
                json_object_array_add(cs, co);
            }
            json_object_object_add(go, "members", cs);
            json_object_array_add(groups, go);
        }
        json_object_object_add(s, "groups", groups);
        json_object_array_add(arr, s);
    }
    json_object_object_add(o, "streams", arr);
    reply_obj(req, 200, o);
}

/* ---- dead letters ------------------------------------------------------------------------ */

static bool replayable_stream(const redisReply *s)
{
    return s && (strcmp(s->str, "bb:reports") == 0 || strcmp(s->str, "bb:report-status") == 0);
}

static void on_dead_list(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct evhttp_request *req = priv;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        reply_error(req, 502, r && r->type == REDIS_REPLY_ERROR ? "redis_error" : "redis_down");
        return;
    }
    struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING) {
            continue;
        }
        const redisReply *f = e->element[1];
        const redisReply *p = entry_field(f, "p"), *stream = entry_field(f, "stream"),
                         *broker = entry_field(f, "broker"), *worker = entry_field(f, "worker");
        struct json_object *d = json_object_new_object();
        const char *id = e->element[0]->str;
        json_object_object_add(d, "id", json_object_new_string(id));
        json_object_object_add(d, "time_ms", json_object_new_int64(strtoll(id, NULL, 10)));
        add_str(d, "reason", entry_field(f, "reason"));
        add_str(d, "detail", entry_field(f, "detail"));
        add_str(d, "stream", stream);
        add_str(d, "entry", entry_field(f, "id"));
        add_str(d, "instance", entry_field(f, "instance"));
        json_object_object_add(d, "size", json_object_new_int64(p ? (int64_t)p->len : 0));
        json_object_object_add(d, "origin",
                               json_object_new_string(worker   ? "worker"
                                                      : broker ? "broker"
                                                               : "other"));
        if (worker) {
            char cmd[96];
            snprintf(cmd, sizeof(cmd), "buurtbusctl dead replay %s", id);
            json_object_object_add(d, "replay_command", json_object_new_string(cmd));
        }
        json_object_object_add(
            d, "replayable",
            json_object_new_boolean(!worker && broker && replayable_stream(stream) && p && p->len));
        json_object_array_add(arr, d);
    }
    json_object_object_add(o, "dead", arr);
    reply_obj(req, 200, o);
}

static void api_dead(struct bb_console *con, struct evhttp_request *req)
{
    char count[24];
    snprintf(count, sizeof(count), "%lld", (long long)count_param(req, 50, 500));
    const char *argv[] = {"XREVRANGE", DEAD_STREAM, "+", "-", "COUNT", count};
    if (bb_conn_command(con->commands, on_dead_list, req, 6, argv, NULL) != BB_OK) {
        reply_error(req, 503, "redis_down");
    }
}

static void on_replayed(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct evhttp_request *req = priv;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        reply_error(req, 502, r ? "redis_error" : "redis_down");
        return;
    }
    if (r->type != REDIS_REPLY_STRING) {
        reply_error(req, 409, "already_gone");
        return;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "replayed_as", json_object_new_string(r->str));
    bb_info("console: dead letter replayed", "new_entry=%s", r->str);
    reply_obj(req, 200, o);
}

static void on_replay_fetch(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct evhttp_request *req = priv;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        reply_error(req, 502, r ? "redis_error" : "redis_down");
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
        r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements != 2) {
        reply_error(req, 404, "no_such_dead_letter");
        return;
    }
    const char *id = r->element[0]->element[0]->str;
    const redisReply *f = r->element[0]->element[1];
    const redisReply *p = entry_field(f, "p"), *stream = entry_field(f, "stream");
    if (entry_field(f, "worker")) {
        char buf[160];
        snprintf(buf, sizeof(buf),
                 "{\"error\":\"worker_dead_letter\",\"command\":\"buurtbusctl dead replay %s\"}",
                 id);
        secure_headers(req);
        bb_httpd_reply_json(req, 409, buf);
        return;
    }
    if (!entry_field(f, "broker") || !replayable_stream(stream)) {
        reply_error(req, 409, "not_replayable");
        return;
    }
    if (!p || !p->len) {
        reply_error(req, 409, "no_payload");
        return;
    }
    const char *argv[] = {"EVAL", replay_script, "2", DEAD_STREAM, stream->str, id, p->str};
    size_t len[] = {4,     strlen(replay_script), 1, strlen(DEAD_STREAM), stream->len, strlen(id),
                    p->len};
    bb_info("console: replaying a dead letter", "entry=%s stream=%s", id, stream->str);
    if (bb_conn_command(conn, on_replayed, req, 7, argv, len) != BB_OK) {
        reply_error(req, 503, "redis_down");
    }
}

static void api_replay(struct bb_console *con, struct evhttp_request *req)
{
    struct json_object *body = json_body(req);
    if (!body) {
        return;
    }
    const char *id = str_member(body, "id");
    if (!entry_id_ok(id)) {
        json_object_put(body);
        reply_error(req, 400, "id_must_be_a_stream_entry_id");
        return;
    }
    const char *argv[] = {"XRANGE", DEAD_STREAM, id, id};
    int rc = bb_conn_command(con->commands, on_replay_fetch, req, 4, argv, NULL);
    json_object_put(body);
    if (rc != BB_OK) {
        reply_error(req, 503, "redis_down");
    }
}

/* ---- reports ----------------------------------------------------------------------------- */

static void on_reports(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct evhttp_request *req = priv;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        reply_error(req, 502, r && r->type == REDIS_REPLY_ERROR ? "redis_error" : "redis_down");
        return;
    }
    struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING) {
            continue;
        }
        const redisReply *p = entry_field(e->element[1], "p");
        Bb__Report *rep = p ? bb__report__unpack(NULL, p->len, (const uint8_t *)p->str) : NULL;
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "entry", json_object_new_string(e->element[0]->str));
        json_object_object_add(d, "time_ms",
                               json_object_new_int64(strtoll(e->element[0]->str, NULL, 10)));
        json_object_object_add(d, "decodes", json_object_new_boolean(rep != NULL));
        if (rep) {
            json_object_object_add(d, "id", json_object_new_string(rep->id ? rep->id : ""));
            json_object_object_add(d, "category",
                                   json_object_new_string(bb_json_category_name(rep->category)));
            json_object_object_add(d, "urgency",
                                   json_object_new_string(bb_json_urgency_name(rep->urgency)));
            json_object_object_add(d, "source",
                                   json_object_new_string(bb_json_source_name(rep->source)));
            if (rep->group_id) {
                json_object_object_add(d, "group", json_object_new_uint64(rep->group_id));
            }
            bb__report__free_unpacked(rep, NULL);
        }
        json_object_array_add(arr, d);
    }
    json_object_object_add(o, "reports", arr);
    reply_obj(req, 200, o);
}

static void api_reports(struct bb_console *con, struct evhttp_request *req)
{
    char count[24];
    snprintf(count, sizeof(count), "%lld", (long long)count_param(req, 20, 200));
    const char *argv[] = {"XREVRANGE", "bb:reports", "+", "-", "COUNT", count};
    if (bb_conn_command(con->commands, on_reports, req, 6, argv, NULL) != BB_OK) {
        reply_error(req, 503, "redis_down");
    }
}

/* ---- explanations ------------------------------------------------------------------------ */

static struct json_object *explain_json(const Bb__Report *rep, const struct bb_route_result *res,
                                        const struct bb_explain *ex, const struct bb_dir *dir,
                                        const char *last_id)
{
    struct json_object *o = json_object_new_object(), *people = json_object_new_array(),
                       *groups = json_object_new_array();
    json_object_object_add(o, "report", json_object_new_string(rep->id ? rep->id : ""));
    json_object_object_add(o, "category",
                           json_object_new_string(bb_json_category_name(rep->category)));
    json_object_object_add(o, "urgency",
                           json_object_new_string(bb_json_urgency_name(rep->urgency)));
    bb_json_explain_totals(o, res, dir, last_id);
    uint32_t shown = 0;
    for (uint32_t i = 0; i < ex->n; i++) {
        const struct bb_explain_line *l = &ex->lines[i];
        if (l->user_id && shown == MAX_PEOPLE) {
            continue;
        }
        shown += l->user_id != 0;
        json_object_array_add(l->user_id ? people : groups, bb_json_explain_line(l, 0, NULL));
    }
    json_object_object_add(o, "people", people);
    json_object_object_add(o, "groups", groups);
    json_object_object_add(o, "truncated", json_object_new_boolean(shown == MAX_PEOPLE));
    json_object_object_add(o, "complete", json_object_new_boolean(!ex->oom));
    return o;
}

static void job_answer(struct explain_job *job, int code, struct json_object *o, const char *why)
{
    job->code = code;
    if (o) {
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        job->json = s ? strdup(s) : NULL;
        json_object_put(o);
    } else {
        char buf[192];
        snprintf(buf, sizeof(buf), "{\"error\":\"%s\"}", why ? why : "internal");
        job->json = strdup(buf);
    }
}

/* The explain thread: buurtbusctl route's steps, on an index of its own. */
static void *explain_main(void *arg)
{
    struct explain_job *job = arg;
    const struct bb_broker_config *cfg = job->con->cfg;
    struct bb_dir_params params = {(unsigned)cfg->default_precision, (unsigned)cfg->watch_max_cells,
                                   (unsigned)cfg->max_radius_m};
    const struct bb_limits lim = {(size_t)cfg->max_text, (size_t)cfg->max_media,
                                  (size_t)cfg->max_url};
    char err[256] = "", last_id[BB_STREAM_ID_MAX] = "0-0";
    struct bb_dir *dir = NULL;
    struct bb_router *router = NULL;
    struct bb_explain ex = {0};
    const struct bb_route_result *res;
    const char *why;
    Bb__Report *rep = bb__report__unpack(NULL, job->len, job->report);
    redisContext *c = NULL;

    if (!rep) {
        job_answer(job, 422, NULL, "decode_error");
        goto out;
    }
    if ((why = bb_validate_report(rep, &lim))) {
        char buf[160];
        snprintf(buf, sizeof(buf), "invalid_report:%s", why);
        job_answer(job, 422, NULL, buf);
        goto out;
    }
    c = bb_redis_connect(cfg->redis, cfg->redis_user, cfg->redis_password,
                         (int)cfg->command_timeout_ms * 10, err, sizeof(err));
    if (!c) {
        job_answer(job, 502, NULL, "redis_down");
        goto out;
    }
    if (!(dir = bb_dir_new(&params)) ||
        !(router =
              (bb_snapshot_load(c, dir, last_id, sizeof(last_id), NULL, err, sizeof(err)) == BB_OK
                   ? bb_router_new(dir)
                   : NULL))) {
        bb_warn("console: explanation failed loading the directory", "err=\"%s\"", err);
        job_answer(job, 502, NULL, "directory_load_failed");
        goto out;
    }
    int r = bb_route_report(router, rep, &ex, &res);
    if (r == BB_ENOTFOUND) {
        job_answer(job, 422, NULL, "unknown_group");
    } else if (r != BB_OK) {
        job_answer(job, 500, NULL, "routing_failed");
    } else {
        job_answer(job, 200, explain_json(rep, res, &ex, dir, last_id), NULL);
    }
out:
    bb_explain_free(&ex);
    bb_router_free(router);
    bb_dir_free(dir);
    if (c) {
        redisFree(c);
    }
    if (rep) {
        bb__report__free_unpacked(rep, NULL);
    }
    event_active(job->con->explained, EV_TIMEOUT, 0);
    return NULL;
}

static void job_free(struct explain_job *job)
{
    free(job->report);
    free(job->json);
    free(job);
}

/* Back on the I/O thread. */
static void on_explained(evutil_socket_t fd, short what, void *arg)
{
    struct bb_console *con = arg;
    struct explain_job *job = con->job;
    if (!job) {
        return;
    }
    pthread_join(con->thread, NULL);
    con->job = NULL;
    secure_headers(job->req);
    if (job->json) {
        bb_httpd_reply_json(job->req, job->code, job->json);
    } else {
        bb_httpd_reply_error(job->req, 500, "out_of_memory");
    }
    job_free(job);
}

static void explain_start(struct bb_console *con, struct evhttp_request *req, const void *packed,
                          size_t len)
{
    if (con->job) {
        reply_error(req, 429, "explanation_in_progress");
        return;
    }
    struct explain_job *job = calloc(1, sizeof(*job));
    if (!job || !(job->report = malloc(len ? len : 1))) {
        free(job);
        reply_error(req, 500, "out_of_memory");
        return;
    }
    memcpy(job->report, packed, len);
    job->len = len;
    job->con = con;
    job->req = req;
    con->job = job;
    if (pthread_create(&con->thread, NULL, explain_main, job) != 0) {
        con->job = NULL;
        job_free(job);
        reply_error(req, 503, "cannot_start_thread");
    }
}

static void on_explain_entry(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct evhttp_request *req = *(struct evhttp_request **)priv;
    struct bb_console *con = ((struct bb_console **)priv)[1];
    free(priv);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        reply_error(req, 502, r ? "redis_error" : "redis_down");
        return;
    }
    const redisReply *p = NULL;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements == 2) {
        p = entry_field(r->element[0]->element[1], "p");
    }
    if (!p) {
        reply_error(req, 404, "no_such_report_entry");
        return;
    }
    explain_start(con, req, p->str, p->len);
}

static void api_explain(struct bb_console *con, struct evhttp_request *req)
{
    struct json_object *body = json_body(req), *report;
    if (!body) {
        return;
    }
    const char *entry = str_member(body, "entry");
    if (entry) {
        if (!entry_id_ok(entry)) {
            reply_error(req, 400, "entry_must_be_a_stream_entry_id");
        } else {
            void **ctx = malloc(2 * sizeof(void *));
            const char *argv[] = {"XRANGE", "bb:reports", entry, entry};
            if (!ctx) {
                reply_error(req, 500, "out_of_memory");
            } else {
                ctx[0] = req;
                ctx[1] = con;
                if (bb_conn_command(con->commands, on_explain_entry, ctx, 4, argv, NULL) != BB_OK) {
                    free(ctx);
                    reply_error(req, 503, "redis_down");
                }
            }
        }
        json_object_put(body);
        return;
    }
    if (!json_object_object_get_ex(body, "report", &report) ||
        !json_object_is_type(report, json_type_object)) {
        json_object_put(body);
        reply_error(req, 400, "give_report_or_entry");
        return;
    }
    struct bb_jarena *arena = bb_jarena_new();
    Bb__Report *rep = NULL;
    char err[256];
    if (!arena) {
        reply_error(req, 500, "out_of_memory");
    } else if (bb_json_report(arena, report, bb_now_ms(), &rep, err, sizeof(err)) != BB_OK) {
        /* err names the field ("path: message"); it holds no token. */
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "error", json_object_new_string("bad_report"));
        json_object_object_add(o, "detail", json_object_new_string(err));
        reply_obj(req, 400, o);
    } else {
        size_t len = bb__report__get_packed_size(rep);
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf) {
            reply_error(req, 500, "out_of_memory");
        } else {
            bb__report__pack(rep, buf);
            explain_start(con, req, buf, len);
            free(buf);
        }
    }
    bb_jarena_free(arena);
    json_object_put(body);
}

/* ---- routing the requests ---------------------------------------------------------------- */

static void on_page(struct evhttp_request *req, const char *path, void *arg)
{
    if (strcmp(path, "/console") == 0) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "/console/");
        secure_headers(req);
        bb_httpd_reply(req, 301, "text/plain", "/console/\n", 10);
        return;
    }
    const char *name = strcmp(path, "/console/") == 0 ? "index.html" : path + strlen("/console/");
    for (size_t i = 0; i < bb_console_nassets; i++) {
        if (strcmp(bb_console_assets[i].path, name) == 0) {
            secure_headers(req);
            bb_httpd_reply(req, 200, bb_console_assets[i].type, bb_console_assets[i].data,
                           bb_console_assets[i].len);
            return;
        }
    }
    reply_error(req, 404, "not_found");
}

static void on_api(struct evhttp_request *req, const char *path, void *arg)
{
    struct bb_console *con = arg;
    static const struct {
        const char *path;
        unsigned method;
        void (*fn)(struct bb_console *, struct evhttp_request *);
    } api[] = {
        {"/console/api/stats", BB_HTTP_GET, api_stats},
        {"/console/api/streams", BB_HTTP_GET, api_streams},
        {"/console/api/dead", BB_HTTP_GET, api_dead},
        {"/console/api/dead/replay", BB_HTTP_POST, api_replay},
        {"/console/api/reports", BB_HTTP_GET, api_reports},
        {"/console/api/explain", BB_HTTP_POST, api_explain},
    };
    if (!authorized(con, req)) {
        return;
    }
    unsigned m = bb_httpd_method(req);
    if (m == BB_HTTP_HEAD) {
        m = BB_HTTP_GET;
    }
    for (size_t i = 0; i < sizeof(api) / sizeof(api[0]); i++) {
        if (strcmp(path, api[i].path) == 0) {
            if (m != api[i].method) {
                evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                                  api[i].method == BB_HTTP_GET ? "GET, HEAD" : "POST");
                reply_error(req, 405, "method_not_allowed");
                return;
            }
            api[i].fn(con, req);
            return;
        }
    }
    reply_error(req, 404, "not_found");
}

int bb_console_check(const struct bb_broker_config *cfg, char *err, size_t errlen)
{
    if (!cfg->console) {
        return BB_OK;
    }
    if (!cfg->metrics_addr || !*cfg->metrics_addr) {
        snprintf(err, errlen, "console yes needs metrics_addr (the console is served there)");
        return BB_ECONFIG;
    }
    if (!cfg->console_token || strlen(cfg->console_token) < MIN_TOKEN) {
        snprintf(err, errlen,
                 "console yes needs console_token_file holding a token of at least %d characters",
                 MIN_TOKEN);
        return BB_ECONFIG;
    }
    for (const char *p = cfg->console_token; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            snprintf(err, errlen,
                     "console_token_file: the token must not hold white space or "
                     "control characters");
            return BB_ECONFIG;
        }
    }
    return BB_OK;
}

struct bb_console *bb_console_new(struct event_base *base, struct bb_httpd *httpd,
                                  struct bb_conn *commands, const struct bb_broker_config *cfg,
                                  bool *failed)
{
    *failed = false;
    if (!cfg->console) {
        return NULL;
    }
    struct bb_console *con = calloc(1, sizeof(*con));
    if (!con || !httpd) {
        free(con);
        *failed = true;
        bb_error("cannot start the console", "why=%s", httpd ? "out_of_memory" : "metrics_off");
        return NULL;
    }
    con->base = base;
    con->commands = commands;
    con->cfg = cfg;
    con->explained = event_new(base, -1, 0, on_explained, con);
    if (!con->explained || bb_httpd_route(httpd, BB_HTTP_GET, "/console", on_page, con) != 0 ||
        bb_httpd_route(httpd, BB_HTTP_GET | BB_HTTP_POST, "/console/api", on_api, con) != 0) {
        bb_console_free(con);
        *failed = true;
        bb_error("cannot start the console", NULL);
        return NULL;
    }
    bb_httpd_set_max_body(httpd, MAX_BODY);
    bb_metrics_streams_detail(true);
    bb_info("console on", "addr=%s path=/console/", cfg->metrics_addr);
    return con;
}

void bb_console_free(struct bb_console *con)
{
    if (!con) {
        return;
    }
    if (con->job) {
        pthread_join(con->thread, NULL);
        secure_headers(con->job->req);
        bb_httpd_reply_error(con->job->req, 503, "shutting_down");
        job_free(con->job);
        con->job = NULL;
    }
    if (con->explained) {
        event_free(con->explained);
    }
    free(con);
}
