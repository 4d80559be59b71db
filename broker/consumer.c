/* The broker's streams, on the I/O thread: reading reports and status
 * updates through a consumer group, claiming what dead consumers left,
 * tailing the directory, committing routed output, and backpressure.
 *
 * Three connections, because a blocking read stalls everything queued
 * behind it on its connection:
 *   reader     XREADGROUP on bb:reports + bb:report-status (own pending
 *              entries first, then new ones with a finite BLOCK);
 *   directory  XREAD BLOCK on bb:directory, applied to the index (this
 *              thread is the index's only writer);
 *   commands   the commit script, XAUTOCLAIM, dead letters, XLEN, dictionaries.
 *
 * Commit: one Lua script per input entry adds every output entry and acks
 * the source atomically, and only if the entry is still pending for this
 * consumer. So a report's batches are written exactly once even when a
 * commit is retried after a lost reply, or when another broker claimed the
 * entry while this one was paused (it then skips: the claimer writes).
 *
 * Threads: the I/O thread only. */
#include <errno.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "internal.h"
#include "log.h"
#include "wire.h"

#define NSRC 2
#define DIRECTORY_STREAM "bb:directory"
#define DEAD_STREAM "bb:dead"
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 5000

static const char *const src_streams[NSRC] = {"bb:reports", "bb:report-status"};

/* KEYS[1] source stream, KEYS[2..] output streams.
 * ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer, then for each output:
 * a field count n and n field/value pairs. Returns the number of entries
 * added, 0 if the entry was no longer pending, -1 if another consumer owns it.
 * The "#!lua" line (Redis 7) declares a writing script without allow-oom:
 * Redis refuses it whole when memory is over maxmemory, instead of failing
 * at some XADD after others went in. */
static const char commit_script[] =
    "#!lua\n"
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)\n"
    "if #p == 0 then return 0 end\n"
    "if p[1][2] ~= ARGV[3] then return -1 end\n"
    "local a = 4\n"
    "for k = 2, #KEYS do\n"
    "  local n = tonumber(ARGV[a]); a = a + 1\n"
    "  local f = {}\n"
    "  for i = 1, 2 * n do f[i] = ARGV[a]; a = a + 1 end\n"
    "  redis.call('XADD', KEYS[k], '*', unpack(f))\n"
    "end\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "return #KEYS - 1\n";

struct bb_consumer {
    struct event_base *base;
    struct bb_dir *dir;
    const struct bb_broker_config *cfg;
    struct bb_dispatch *dispatch;
    struct bb_conn *reader, *commands, *directory;
    struct bb_retention *retention;
    char name[128];
    char sha[48];
    bool cmd_ready; /* script loaded and groups exist */
    bool reading, tailing, stopping, paused;
    bool bp_known; /* output backlog measured since the commands connection came up */
    bool pending_phase[NSRC];
    char pending_from[NSRC][48];
    char dir_last[48];
    int64_t inflight;
    struct bb_job *retry_head; /* commits waiting to be retried */
    struct event *tick;        /* retries, shutdown, reclaim */
    struct event *claim_ev, *bp_ev, *dict_ev;
    char claim_cursor[NSRC][48];
    uint32_t dict_id;
    struct bb_zdict *dict;
    int64_t stop_deadline;
    int bp_pending;
    int64_t bp_max;
};

static void read_next(struct bb_consumer *c);
static void commit(struct bb_consumer *c, struct bb_job *job);

static void arm_ms(struct event *ev, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(ev, &tv);
}

static int64_t id_ms(const char *id)
{
    return strtoll(id, NULL, 10);
}

static void finish(struct bb_consumer *c, struct bb_job *job)
{
    c->inflight--;
    atomic_store(&bb_metrics.inflight, c->inflight);
    bb_job_free(job);
    read_next(c);
}

static void retry_later(struct bb_consumer *c, struct bb_job *job)
{
    job->attempts++;
    int64_t wait = RETRY_MIN_MS << (job->attempts < 6 ? job->attempts : 6);
    if (wait > RETRY_MAX_MS) {
        wait = RETRY_MAX_MS;
    }
    job->retry_at_ms = bb_mono_ms() + wait / 2 + rand() % (wait / 2 + 1);
    job->next = c->retry_head;
    c->retry_head = job;
    atomic_fetch_add(&bb_metrics.commit_retries, 1);
}

/* ---- commit ------------------------------------------------------------------------------ */

static void on_commit(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_job *job = priv;
    struct bb_consumer *c = job->owner;
    if (!r) {
        retry_later(c, job);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0) {
            c->cmd_ready = false;
            bb_conn_reset(c->commands, "script missing");
        } else {
            bb_warn("commit failed, will retry", "entry=%s err=\"%.120s\"", job->id, r->str);
        }
        retry_later(c, job);
        return;
    }
    long long added = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    if (added < 0 || (added == 0 && job->out.n + (job->result == BB_RESULT_DEAD) > 0)) {
        /* Already acked, or another consumer owns the entry: it is theirs. */
        atomic_fetch_add(&bb_metrics.commits_skipped, 1);
        bb_debug("commit skipped", "entry=%s owner=%s", job->id, added < 0 ? "other" : "none");
    } else if (job->result == BB_RESULT_DEAD) {
        atomic_fetch_add(&bb_metrics.dead_letters, 1);
    } else {
        atomic_fetch_add(&bb_metrics.commits, 1);
        atomic_fetch_add(&bb_metrics.reports_routed, 1);
        atomic_fetch_add(&bb_metrics.deliveries, job->out.deliveries);
        atomic_fetch_add(&bb_metrics.batches, job->out.n);
        atomic_fetch_add(&bb_metrics.recipients, job->recipients);
        atomic_fetch_add(&bb_metrics.decisions, job->decisions);
        atomic_fetch_add(&bb_metrics.route_ns, job->route_ns);
        atomic_fetch_add(&bb_metrics.bytes_out, job->out.len);
        atomic_fetch_add(&bb_metrics.raw_bytes, job->out.raw_bytes);
        atomic_fetch_add(&bb_metrics.zstd_bytes, job->out.zstd_bytes);
        for (uint32_t i = 0; i < job->out.n; i++) {
            atomic_fetch_add(&bb_metrics.deliveries_by_channel[job->out.e[i].channel],
                             job->out.e[i].recipients);
        }
        bb_metrics_latency((bb_now_ms() - job->entry_ms) * 1000);
        if (job->kind == BB_JOB_REPORT) {
            bb_metrics_recipients(job->recipients);
        }
    }
    finish(c, job);
}

static void commit(struct bb_consumer *c, struct bb_job *job)
{
    bool dead = job->result == BB_RESULT_DEAD;
    size_t nout = dead ? 1 : job->out.n;
    size_t argc = 3 + 1 + nout + 3 + nout * (dead ? 13 : 3);
    const char **argv = malloc(argc * sizeof(*argv));
    size_t *len = malloc(argc * sizeof(*len));
    char nkeys[16];
    if (!argv || !len) {
        free(argv);
        free(len);
        retry_later(c, job);
        return;
    }
    size_t i = 0;
#define ARG(s, n) (argv[i] = (s), len[i] = (n), i++)
#define ARGS(s) ARG((s), strlen(s))
    snprintf(nkeys, sizeof(nkeys), "%zu", 1 + nout);
    ARGS("EVALSHA");
    ARGS(c->sha);
    ARGS(nkeys);
    ARGS(src_streams[job->src]);
    for (size_t k = 0; k < nout; k++) {
        ARGS(dead ? DEAD_STREAM : bb_out_stream(job->out.e[k].channel));
    }
    ARGS(c->cfg->group);
    ARGS(job->id);
    ARGS(c->name);
    if (dead) {
        ARGS("6");
        ARGS("reason");
        ARGS(job->reason);
        ARGS("detail");
        ARGS(job->detail);
        ARGS("stream");
        ARGS(src_streams[job->src]);
        ARGS("id");
        ARGS(job->id);
        ARGS("p");
        ARG((const char *)(job->payload ? (char *)job->payload : ""), job->len);
        ARGS("broker");
        ARGS(c->name);
    } else {
        for (size_t k = 0; k < nout; k++) {
            ARGS("1");
            ARGS("p");
            ARG((const char *)job->out.buf + job->out.e[k].off, job->out.e[k].len);
        }
    }
#undef ARG
#undef ARGS
    job->owner = c;
    int rc =
        c->cmd_ready ? bb_conn_command(c->commands, on_commit, job, (int)i, argv, len) : BB_AGAIN;
    free(argv);
    free(len);
    if (rc != BB_OK) {
        retry_later(c, job);
    }
}

/* Router threads hand finished jobs back here. */
static void on_done(struct bb_job *job, void *arg)
{
    struct bb_consumer *c = arg;
    if (job->result == BB_RESULT_RETRY) {
        bb_warn("routing failed for lack of memory, will retry", "entry=%s", job->id);
        job->result = BB_RESULT_OK;
        job->out.n = 0;
        job->reroute = true;
        retry_later(c, job);
        return;
    }
    if (job->result == BB_RESULT_DEAD) {
        bb_info("dead letter", "stream=%s entry=%s reason=%s", src_streams[job->src], job->id,
                job->reason);
    }
    commit(c, job);
}

/* ---- reading ----------------------------------------------------------------------------- */

static struct bb_job *job_new(uint8_t src, const char *id)
{
    struct bb_job *job = calloc(1, sizeof(*job));
    if (!job) {
        return NULL;
    }
    job->kind = src == 0 ? BB_JOB_REPORT : BB_JOB_STATUS;
    job->src = src;
    snprintf(job->id, sizeof(job->id), "%s", id);
    job->entry_ms = id_ms(id);
    return job;
}

/* One stream entry, read or claimed: a job for the routers, or a dead
 * letter straight away when the entry has no payload to route. */
static void take_entry(struct bb_consumer *c, uint8_t src, const redisReply *e)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 ||
        e->element[0]->type != REDIS_REPLY_STRING) {
        return;
    }
    struct bb_job *job = job_new(src, e->element[0]->str);
    if (!job) {
        bb_error("out of memory reading an entry; it stays pending", "entry=%s",
                 e->element[0]->str);
        return;
    }
    c->inflight++;
    atomic_store(&bb_metrics.inflight, c->inflight);
    atomic_fetch_add(src == 0 ? &bb_metrics.reports_in : &bb_metrics.status_in, 1);
    const redisReply *f = e->elements > 1 ? e->element[1] : NULL;
    const redisReply *p = NULL;
    if (f && f->type == REDIS_REPLY_ARRAY) {
        /* Other fields are tolerated (a producer's trace id, a timestamp). */
        for (size_t i = 0; i + 1 < f->elements; i += 2) {
            if (f->element[i]->type == REDIS_REPLY_STRING && strcmp(f->element[i]->str, "p") == 0 &&
                f->element[i + 1]->type == REDIS_REPLY_STRING) {
                p = f->element[i + 1];
            }
        }
    }
    if (p) {
        job->payload = malloc(p->len ? p->len : 1);
        if (!job->payload) {
            c->inflight--;
            bb_job_free(job);
            return;
        }
        memcpy(job->payload, p->str, p->len);
        job->len = p->len;
        bb_dispatch_submit(c->dispatch, job);
        return;
    }
    job->result = BB_RESULT_DEAD;
    job->reason = !f || f->type != REDIS_REPLY_ARRAY ? "entry_deleted" : "missing_payload";
    snprintf(job->detail, sizeof(job->detail), "fields=%zu",
             f && f->type == REDIS_REPLY_ARRAY ? f->elements : 0);
    on_done(job, c);
}

static void on_read(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_consumer *c = priv;
    c->reading = false;
    if (!r) {
        return; /* connection gone; on_ready starts reading again */
    }
    if (r->type == REDIS_REPLY_ERROR) {
        bb_warn("read failed", "err=\"%.120s\"", r->str);
        if (strncmp(r->str, "NOGROUP", 7) == 0) {
            c->cmd_ready = false;
            bb_conn_reset(c->commands, "consumer group missing");
        }
        return; /* the tick reads again */
    }
    bool seen[NSRC] = {false, false};
    for (size_t s = 0; r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
        const redisReply *sr = r->element[s];
        if (sr->type != REDIS_REPLY_ARRAY || sr->elements != 2) {
            continue;
        }
        uint8_t src = strcmp(sr->element[0]->str, src_streams[0]) == 0 ? 0 : 1;
        const redisReply *entries = sr->element[1];
        seen[src] = true;
        if (c->pending_phase[src] &&
            (entries->type != REDIS_REPLY_ARRAY || entries->elements == 0)) {
            c->pending_phase[src] = false;
            bb_info("own pending entries re-read", "stream=%s", src_streams[src]);
        }
        for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++) {
            const redisReply *e = entries->element[i];
            if (c->pending_phase[src] && e->type == REDIS_REPLY_ARRAY && e->elements >= 1) {
                snprintf(c->pending_from[src], sizeof(c->pending_from[src]), "%s",
                         e->element[0]->str);
            }
            take_entry(c, src, e);
        }
    }
    for (int s = 0; s < NSRC; s++) {
        if (c->pending_phase[s] && !seen[s] && r->type != REDIS_REPLY_NIL) {
            c->pending_phase[s] = false;
        }
    }
    read_next(c);
}

static void read_next(struct bb_consumer *c)
{
    if (c->reading || c->stopping || c->paused || !c->bp_known || !c->cmd_ready ||
        !bb_conn_is_ready(c->reader)) {
        return;
    }
    int64_t room = c->cfg->max_inflight - c->inflight;
    if (room <= 0) {
        return;
    }
    char count[24], block[24];
    snprintf(count, sizeof(count), "%lld",
             (long long)(room < c->cfg->read_count ? room : c->cfg->read_count));
    snprintf(block, sizeof(block), "%lld", (long long)c->cfg->block_ms);
    bool history = c->pending_phase[0] || c->pending_phase[1];
    const char *argv[16];
    int n = 0;
    argv[n++] = "XREADGROUP";
    argv[n++] = "GROUP";
    argv[n++] = c->cfg->group;
    argv[n++] = c->name;
    argv[n++] = "COUNT";
    argv[n++] = count;
    if (!history) {
        argv[n++] = "BLOCK";
        argv[n++] = block;
    }
    argv[n++] = "STREAMS";
    argv[n++] = src_streams[0];
    argv[n++] = src_streams[1];
    for (int s = 0; s < NSRC; s++) {
        /* With an explicit id Redis returns our pending entries after it:
         * pending_from is the last one already taken. */
        argv[n++] = c->pending_phase[s] ? c->pending_from[s] : ">";
    }
    if (bb_conn_command(c->reader, on_read, c, n, argv, NULL) == BB_OK) {
        c->reading = true;
    }
}

/* ---- claiming ---------------------------------------------------------------------------- */

struct claim_ctx {
    struct bb_consumer *c;
    uint8_t src;
};

static void on_claim_src(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct claim_ctx *cc = priv;
    struct bb_consumer *c = cc->c;
    uint8_t src = cc->src;
    free(cc);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) {
        if (r && r->type == REDIS_REPLY_ERROR) {
            bb_warn("claim failed", "stream=%s err=\"%.120s\"", src_streams[src], r->str);
        }
        return;
    }
    snprintf(c->claim_cursor[src], sizeof(c->claim_cursor[src]), "%s",
             r->element[0]->type == REDIS_REPLY_STRING ? r->element[0]->str : "0-0");
    const redisReply *entries = r->element[1];
    for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++) {
        atomic_fetch_add(&bb_metrics.claimed, 1);
        take_entry(c, src, entries->element[i]);
    }
    if (entries->type == REDIS_REPLY_ARRAY && entries->elements) {
        bb_info("claimed idle entries", "stream=%s count=%zu", src_streams[src], entries->elements);
    }
    /* Entries trimmed away while pending: Redis 7 drops them from the PEL and
     * names them here. Their content is gone; say so loudly. */
    if (r->elements > 2 && r->element[2]->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->element[2]->elements; i++) {
            const char *id = r->element[2]->element[i]->str;
            bb_error("pending entry was trimmed before it was handled", "stream=%s entry=%s",
                     src_streams[src], id);
            bb_conn_commandf(c->commands, NULL, NULL,
                             "XADD %s * reason entry_trimmed stream %s id %s broker %s",
                             DEAD_STREAM, src_streams[src], id, c->name);
        }
    }
}

static void on_claim_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_consumer *c = arg;
    arm_ms(c->claim_ev, c->cfg->claim_interval_ms);
    if (!c->cmd_ready || c->stopping) {
        return;
    }
    for (uint8_t s = 0; s < NSRC; s++) {
        int64_t room = c->cfg->max_inflight - c->inflight;
        if (room <= 0) {
            return;
        }
        struct claim_ctx *cc = malloc(sizeof(*cc));
        if (!cc) {
            return;
        }
        *cc = (struct claim_ctx){c, s};
        if (bb_conn_commandf(c->commands, on_claim_src, cc,
                             "XAUTOCLAIM %s %s %s %lld %s COUNT %lld", src_streams[s],
                             c->cfg->group, c->name, (long long)c->cfg->claim_idle_ms,
                             c->claim_cursor[s], (long long)(room < 100 ? room : 100)) != BB_OK) {
            free(cc);
        }
    }
}

/* ---- directory tail ---------------------------------------------------------------------- */

static void tail_next(struct bb_consumer *c);

static void dir_dead(struct bb_consumer *c, const char *id, const char *reason, const char *p,
                     size_t plen)
{
    atomic_fetch_add(&bb_metrics.directory_errors, 1);
    bb_warn("directory event rejected", "entry=%s reason=%s", id, reason);
    const char *argv[] = {"XADD",     DEAD_STREAM,      "*",    "reason", reason,
                          "stream",   DIRECTORY_STREAM, "id",   id,       "p",
                          p ? p : "", "broker",         c->name};
    size_t len[13];
    for (int i = 0; i < 13; i++) {
        len[i] = strlen(argv[i]);
    }
    len[10] = p ? plen : 0;
    bb_conn_command(c->commands, NULL, NULL, 13, argv, len);
}

static void on_tail(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_consumer *c = priv;
    c->tailing = false;
    if (!r) {
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        bb_warn("directory read failed", "err=\"%.120s\"", r->str);
        return;
    }
    for (size_t s = 0; r->type == REDIS_REPLY_ARRAY && s < r->elements; s++) {
        const redisReply *entries = r->element[s]->element[1];
        for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++) {
            const redisReply *e = entries->element[i];
            const char *id = e->element[0]->str;
            snprintf(c->dir_last, sizeof(c->dir_last), "%s", id);
            const redisReply *f = e->elements > 1 ? e->element[1] : NULL;
            const redisReply *p = NULL;
            for (size_t k = 0; f && f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
                if (strcmp(f->element[k]->str, "p") == 0) {
                    p = f->element[k + 1];
                }
            }
            if (!p) {
                dir_dead(c, id, "missing_payload", NULL, 0);
                continue;
            }
            Bb__DirectoryEvent *ev = bb__directory_event__unpack(NULL, p->len, (uint8_t *)p->str);
            if (!ev) {
                dir_dead(c, id, "decode_error", p->str, p->len);
                continue;
            }
            char why[96] = "";
            int rc = bb_dir_apply(c->dir, ev, why, sizeof(why));
            bb__directory_event__free_unpacked(ev, NULL);
            if (rc != BB_OK) {
                /* Writers check events before they append them (bb_store),
                 * so a refusal here is an ordering effect — replaying the
                 * tail over a snapshot that already holds a later state
                 * (a membership of a user erased since) — not bad input. */
                atomic_fetch_add(&bb_metrics.directory_errors, 1);
                bb_warn("directory event not applied", "entry=%s reason=%s", id,
                        why[0] ? why : bb_strerror(rc));
                continue;
            }
            atomic_fetch_add(&bb_metrics.directory_events, 1);
        }
    }
    struct bb_dir_stats st;
    bb_dir_stats(c->dir, &st);
    atomic_store(&bb_metrics.users, st.users);
    atomic_store(&bb_metrics.groups, st.groups);
    bb_dir_reclaim(c->dir);
    tail_next(c);
}

static void tail_next(struct bb_consumer *c)
{
    if (c->tailing || !bb_conn_is_ready(c->directory)) {
        return;
    }
    if (bb_conn_commandf(c->directory, on_tail, c, "XREAD COUNT 1000 BLOCK %lld STREAMS %s %s",
                         (long long)c->cfg->block_ms, DIRECTORY_STREAM, c->dir_last) == BB_OK) {
        c->tailing = true;
    }
}

/* ---- dictionaries ------------------------------------------------------------------------ */

static void on_dict_bytes(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_consumer *c = priv;
    if (!r || r->type != REDIS_REPLY_STRING) {
        return;
    }
    struct bb_zdict *d = bb_zdict_new(r->str, r->len, (int)c->cfg->zstd_level);
    if (!d) {
        bb_error("stored dictionary is not a zstd dictionary; compressing without", NULL);
        return;
    }
    bb_zdict_unref(c->dict);
    c->dict = d;
    c->dict_id = bb_zdict_id(d);
    bb_dispatch_set_dict(c->dispatch, d);
    bb_info("compression dictionary loaded", "id=%u bytes=%zu", c->dict_id, r->len);
}

static void on_dict_current(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_consumer *c = priv;
    if (!r || r->type != REDIS_REPLY_STRING) {
        return;
    }
    uint32_t id = (uint32_t)strtoul(r->str, NULL, 10);
    if (id && id != c->dict_id) {
        bb_conn_commandf(c->commands, on_dict_bytes, c, "GET bb:zdict:%u", id);
    }
}

static void check_dict(struct bb_consumer *c)
{
    if (c->cmd_ready) {
        bb_conn_commandf(c->commands, on_dict_current, c, "GET bb:zdict:current");
    }
}

static void on_dict_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_consumer *c = arg;
    arm_ms(c->dict_ev, c->cfg->dict_check_ms);
    check_dict(c);
}

void bb_consumer_reload(struct bb_consumer *c)
{
    check_dict(c);
}

/* ---- backpressure ------------------------------------------------------------------------ */

static void on_xlen(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_consumer *c = priv;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer > c->bp_max) {
        c->bp_max = r->integer;
    }
    if (--c->bp_pending > 0) {
        return;
    }
    atomic_store(&bb_metrics.backlog_max, c->bp_max);
    bool first = !c->bp_known;
    c->bp_known = true;
    if (!c->paused && c->bp_max >= c->cfg->out_high_watermark) {
        c->paused = true;
        atomic_store(&bb_metrics.paused, 1);
        bb_warn("output backlog over the high watermark, pausing input", "backlog=%lld",
                (long long)c->bp_max);
    } else if (c->paused && c->bp_max <= c->cfg->out_low_watermark) {
        c->paused = false;
        atomic_store(&bb_metrics.paused, 0);
        bb_info("output backlog drained, resuming input", "backlog=%lld", (long long)c->bp_max);
        read_next(c);
    } else if (first) {
        read_next(c);
    }
}

static void on_bp_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_consumer *c = arg;
    arm_ms(c->bp_ev, c->cfg->backpressure_check_ms);
    if (!c->cmd_ready || c->bp_pending) {
        return;
    }
    c->bp_max = 0;
    for (unsigned ch = 0; ch < BB_CHANNELS; ch++) {
        if (bb_conn_commandf(c->commands, on_xlen, c, "XLEN %s", bb_out_stream(ch)) == BB_OK) {
            c->bp_pending++;
        }
    }
}

/* ---- connections ------------------------------------------------------------------------- */

static void on_group(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_consumer *c = priv;
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        bb_error("cannot create consumer group", "err=\"%.120s\"", r->str);
    }
    (void)c;
}

static void on_script(struct bb_conn *conn, redisReply *r, void *priv)
{
    struct bb_consumer *c = priv;
    if (!r || r->type != REDIS_REPLY_STRING) {
        /* E.g. Redis at maxmemory: try again after a reconnect's backoff. */
        bb_error("cannot load the commit script", "err=\"%.120s\"",
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
        if (r) {
            bb_conn_reset(c->commands, "commit script not loaded");
        }
        return;
    }
    snprintf(c->sha, sizeof(c->sha), "%s", r->str);
    c->cmd_ready = true;
    atomic_store(&bb_metrics.ready, 1);
    check_dict(c);
    /* Measure the outputs before the first read: a broker (re)starting into
     * a full backlog must not add to it. */
    on_bp_tick(-1, 0, c);
    /* Commits that waited for the connection go out on the next tick. */
    read_next(c);
}

static void on_commands_ready(struct bb_conn *conn, void *arg)
{
    struct bb_consumer *c = arg;
    /* Groups start at 0: reports posted before the first broker ran are
     * routed, not skipped. Replies come in order, so the groups exist when
     * the script reply marks us ready. */
    for (int s = 0; s < NSRC; s++) {
        bb_conn_commandf(conn, on_group, c, "XGROUP CREATE %s %s 0 MKSTREAM", src_streams[s],
                         c->cfg->group);
    }
    bb_conn_commandf(conn, on_script, c, "SCRIPT LOAD %s", commit_script);
}

static void on_commands_down(struct bb_conn *conn, void *arg)
{
    struct bb_consumer *c = arg;
    c->cmd_ready = false;
    c->bp_known = false;
    c->bp_pending = 0;
    atomic_store(&bb_metrics.ready, 0);
}

static void on_reader_ready(struct bb_conn *conn, void *arg)
{
    struct bb_consumer *c = arg;
    c->reading = false;
    /* After a reconnect, re-read our own pending entries first: a read whose
     * reply was lost delivered entries we never saw. */
    for (int s = 0; s < NSRC; s++) {
        c->pending_phase[s] = true;
        snprintf(c->pending_from[s], sizeof(c->pending_from[s]), "0");
    }
    read_next(c);
}

static void on_directory_ready(struct bb_conn *conn, void *arg)
{
    struct bb_consumer *c = arg;
    c->tailing = false;
    tail_next(c);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_consumer *c = arg;
    int64_t now = bb_mono_ms();
    struct bb_job **pp = &c->retry_head, *due = NULL;
    while (*pp) {
        struct bb_job *j = *pp;
        if (j->retry_at_ms <= now && (c->cmd_ready || j->reroute)) {
            *pp = j->next;
            j->next = due;
            due = j;
        } else {
            pp = &j->next;
        }
    }
    while (due) {
        struct bb_job *j = due;
        due = j->next;
        j->next = NULL;
        if (j->reroute) {
            j->reroute = false;
            bb_dispatch_submit(c->dispatch, j);
        } else {
            commit(c, j);
        }
    }
    bb_dir_reclaim(c->dir);
    if (c->stopping && (c->inflight == 0 || now >= c->stop_deadline)) {
        if (c->inflight) {
            bb_warn("grace period over; unfinished entries stay pending for others",
                    "inflight=%lld", (long long)c->inflight);
        }
        event_base_loopexit(c->base, NULL);
    }
    read_next(c);
    tail_next(c);
}

struct bb_consumer *bb_consumer_new(struct event_base *base, struct bb_dir *dir,
                                    const struct bb_broker_config *cfg,
                                    const char *directory_last_id)
{
    struct bb_consumer *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    c->base = base;
    c->dir = dir;
    c->cfg = cfg;
    snprintf(c->name, sizeof(c->name), "%s", cfg->name);
    snprintf(c->dir_last, sizeof(c->dir_last), "%s", directory_last_id);
    for (int s = 0; s < NSRC; s++) {
        c->pending_phase[s] = true;
        snprintf(c->pending_from[s], sizeof(c->pending_from[s]), "0");
        snprintf(c->claim_cursor[s], sizeof(c->claim_cursor[s]), "0-0");
    }
    c->dispatch = bb_dispatch_new(base, dir, cfg, on_done, c);
    c->tick = event_new(base, -1, EV_PERSIST, on_tick, c);
    c->claim_ev = evtimer_new(base, on_claim_tick, c);
    c->bp_ev = evtimer_new(base, on_bp_tick, c);
    c->dict_ev = evtimer_new(base, on_dict_tick, c);
    if (!c->dispatch || !c->tick || !c->claim_ev || !c->bp_ev || !c->dict_ev) {
        goto fail;
    }
    struct timeval tv = {0, 100 * 1000};
    event_add(c->tick, &tv);
    arm_ms(c->claim_ev, cfg->claim_interval_ms);
    arm_ms(c->bp_ev, cfg->backpressure_check_ms);
    arm_ms(c->dict_ev, cfg->dict_check_ms);

    struct bb_conn_opts o = {
        .addr = cfg->redis,
        .user = cfg->redis_user,
        .password = cfg->redis_password,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .command_timeout_ms = cfg->command_timeout_ms,
        .reconnect_min_ms = cfg->reconnect_min_ms,
        .reconnect_max_ms = cfg->reconnect_max_ms,
        .keepalive_s = (int)cfg->keepalive_s,
        .arg = c,
    };
    o.name = "commands";
    o.on_ready = on_commands_ready;
    o.on_down = on_commands_down;
    c->commands = bb_conn_new(base, &o);
    /* Blocking reads may legitimately take block_ms before any reply. */
    o.command_timeout_ms = cfg->command_timeout_ms + cfg->block_ms;
    o.name = "reader";
    o.on_ready = on_reader_ready;
    o.on_down = NULL;
    c->reader = bb_conn_new(base, &o);
    o.name = "directory";
    o.on_ready = on_directory_ready;
    c->directory = bb_conn_new(base, &o);
    if (!c->commands || !c->reader || !c->directory) {
        goto fail;
    }
    c->retention = bb_retention_new(base, c->commands, cfg);
    if (!c->retention && cfg->trim_interval_ms > 0) {
        goto fail;
    }
    return c;

fail:
    bb_consumer_free(c);
    return NULL;
}

struct bb_conn *bb_consumer_commands(struct bb_consumer *c)
{
    return c->commands;
}

void bb_consumer_shutdown(struct bb_consumer *c)
{
    if (c->stopping) {
        return;
    }
    c->stopping = true;
    c->stop_deadline = bb_mono_ms() + c->cfg->shutdown_grace_ms;
    bb_info("draining", "inflight=%lld grace_ms=%lld", (long long)c->inflight,
            (long long)c->cfg->shutdown_grace_ms);
}

void bb_consumer_free(struct bb_consumer *c)
{
    if (!c) {
        return;
    }
    /* Routers first: they may still hand jobs back. */
    bb_dispatch_free(c->dispatch);
    bb_conn_free(c->reader);
    bb_conn_free(c->directory);
    bb_conn_free(c->commands);
    bb_retention_free(c->retention);
    while (c->retry_head) {
        struct bb_job *j = c->retry_head;
        c->retry_head = j->next;
        bb_job_free(j);
    }
    struct event *evs[] = {c->tick, c->claim_ev, c->bp_ev, c->dict_ev};
    for (size_t i = 0; i < 4; i++) {
        if (evs[i]) {
            event_free(evs[i]);
        }
    }
    bb_zdict_unref(c->dict);
    free(c);
}
