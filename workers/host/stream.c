/* One channel instance's stream: bb:out:<inst> read through the instance's
 * consumer group, each DeliveryBatch decoded (dictionary fetched and
 * cached, decompressed with a size cap), every recipient's contact
 * resolved, the delivery collected or recorded, handed to the plug-in, its
 * outcome written, and the entry acked once all its deliveries are done or
 * parked in Redis. Jobs taken from bb:later (later.c: retries, and
 * collections due to be sent as a digest) run through the same steps.
 *
 * Per delivery, each step one Redis round trip on the commands connection
 * (replies come in order, so the steps of a batch's deliveries pipeline):
 *   contact  HMGET bb:user:{id} email push_token push_platform u; the
 *            plug-in is picked by push_platform when the instance has several
 *   collect  (collecting instances) the notification into the recipient's
 *            collection, its send time into bb:later: done
 *   gate     token bucket, concurrency, circuit breaker (open: park, unsent)
 *   record   SET bb:sent:<inst>:{delivery id} p<now ms> NX GET PX sent_ttl:
 *            "p..." while the delivery is with the plug-in (nil: new, send
 *            it; "1": done before, skip; "p...": see below)
 *   send     the plug-in's send(); done() gives the outcome
 *            (at most max_unconfirmed deliveries per instance are between
 *            record and outcome at any time; the others wait their turn)
 *   outcome  SET bb:sent:... 1 XX KEEPTTL for a final outcome, XADD
 *            bb:receipts (+ XADD bb:dead for a permanent failure); gone: the
 *            address removed with a contact_gone event; a retry is parked in
 *            bb:later with its record dropped, in one script.
 *
 * Exactly-once effect: a delivery whose record says "1" is never sent
 * again, by this worker or any other. A record "p<ms>" younger than
 * claim_idle is another try still in flight (the same report id posted
 * twice): the delivery waits until that try is done or stale. A stale "p"
 * means a worker died (or stalled past claim_idle) between handing the
 * delivery over and recording the outcome: the provider may or may not
 * have it. A plug-in with BB_CAP_IDEMPOTENCY_KEY gets it again with
 * maybe_sent set and makes the resend harmless (the provider deduplicates
 * on the delivery id, or the plug-in checks its sink), so nothing is lost
 * or doubled. Any other plug-in's delivery is skipped with an
 * "unconfirmed" receipt: possibly lost, never duplicated. At most
 * max_unconfirmed deliveries per channel are in that window. A lost XACK
 * or a crash after the outcome only leads to a re-read that finds every
 * record and writes SKIPPED_DUPLICATE receipts.
 *
 * A batch that cannot be decoded (no payload, bad protobuf, unknown or bad
 * dictionary, corrupt or oversized frame, invalid UTF-8) goes to bb:dead
 * with the reason and is acked.
 *
 * Threads: the event-loop thread only. */
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_conn.h"
#include "bb_err.h"
#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "host.h"
#include "log.h"
#include "wire.h"

#define RECEIPTS_STREAM "bb:receipts"
#define DEAD_STREAM "bb:dead"
#define REDO_MS 500 /* a step whose connection failed runs again after this */

struct dict_entry {
    uint32_t id;
    struct bb_zdict *d;
    struct dict_entry *next;
};

struct bb_stream {
    struct event_base *base;
    const struct bb_worker_config *cfg;
    const struct bb_chan_conf *conf;
    const struct bb_chan_plugin *plugins;
    size_t nplugins;
    struct bb_conn *reader, *commands;
    struct bb_later *later;
    struct bb_zdec *zdec;
    struct dict_entry *dicts;
    struct batch *batches; /* in flight */
    struct event *tick, *claim_ev;
    char claim_cursor[48];
    bool claiming;
    bool reading, stopping, group_ready, pending_phase;
    char pending_from[48];
    unsigned inflight;
    /* Deliveries recorded (or being recorded) and not yet completed: the
     * crash window. Capped by max_unconfirmed; the rest wait in order. */
    unsigned unconfirmed;
    struct delivery *wait_head, *wait_tail;
    /* Isolation from a slow or failing provider: a token bucket on sends
     * started, and a circuit breaker that parks deliveries in Redis while
     * it is open. gate_ev runs the waiting deliveries when either allows. */
    double tokens;
    int64_t tokens_ms;
    unsigned failures;  /* consecutive retryable outcomes */
    int64_t open_until; /* breaker open until (monotonic ms); 0: closed */
    bool trial;         /* half-open: one send is testing the provider */
    struct event *gate_ev;
    unsigned jobs; /* later jobs held */
    struct bb_stream_stats stats;
};

enum step { STEP_CONTACT, STEP_COLLECT, STEP_RECORD, STEP_SEND, STEP_PARK, STEP_DONE };

struct delivery {
    struct batch *b;
    struct bb_delivery pub;
    struct bb_contact contact;
    char id[192];
    char rec[256];   /* its bb:sent record: bb:sent:<inst>:<id> */
    char *fields[6]; /* email, push_token, push_platform, locale, screen_name, time zone (owned) */
    const struct bb_chan_plugin *pl; /* the plug-in that sends it */
    enum step step;
    unsigned attempt;
    bool sending;
    bool holds_slot;
    bool parked; /* its next try is in bb:later, not ours */
    unsigned digest_hour;
    bool digest_weekly;
    struct delivery *next_wait;
    int64_t first_ms; /* wall clock */
    int64_t park_due; /* STEP_PARK: when the next try is due */
    char park_reason[64];
    struct event *timer;
};

/* What deliveries come from: a bb:out entry (a DeliveryBatch), or a job
 * taken from bb:later (one delivery: a retry, or a collection's digest). */
struct batch {
    struct bb_stream *s;
    struct batch *next;
    char id[48]; /* the entry id; for a job, the entry it came from */
    uint8_t *p;  /* the entry's payload, or the job's PendingDelivery */
    size_t plen;
    int channel; /* Channel number */
    Bb__DeliveryBatch *db;
    Bb__Notification *n;
    uint8_t *raw; /* n packed (kept for parking and collecting) */
    size_t rawlen;
    struct bb_notification bn;
    struct bb_media *media;
    struct delivery *d;
    size_t nd, left;
    struct event *ack_ev;
    /* A stream entry that is dead as a whole: its dead letter and its ack go
     * in one script (dead_and_ack), retried together until Redis has both. */
    bool dead;
    char dead_reason[48];
    char dead_detail[160];
    /* A job: */
    char *member; /* its bb:later member; NULL for an entry */
    Bb__PendingDelivery *pd;
    /* A collection's items (the digest's notifications) and their delivery ids. */
    Bb__Notification **in;
    struct bb_notification *ibn;
    const struct bb_notification **items;
    struct bb_media **imedia;
    char **item_ids;
    size_t nitems;
};

static void read_next(struct bb_stream *s);
static void run(struct delivery *d);
static void release_slot(struct delivery *d);
static void confirm(struct delivery *d);

/* An entry we gave up on for now stays pending; read our pending entries
 * again (those still in flight are skipped) so it is not stranded. */
static void reread_pending(struct bb_stream *s)
{
    s->pending_phase = true;
    snprintf(s->pending_from, sizeof(s->pending_from), "0");
}

static void arm_ms(struct event *ev, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(ev, &tv);
}

static const char *category_name(int c)
{
    static const char *const names[] = {
        "unspecified", "burglary", "suspicious_person", "suspicious_vehicle",
        "fire",        "nuisance", "traffic",           "missing_person",
        "other",       "cyber",    "public_transport"};
    return c >= 0 && (size_t)c < sizeof(names) / sizeof(names[0]) ? names[c] : "unknown";
}

/* ---- batches ----------------------------------------------------------------------------- */

static void batch_free(struct batch *b)
{
    struct bb_stream *s = b->s;
    for (struct batch **pp = &s->batches; *pp; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    }
    for (size_t i = 0; i < b->nd; i++) {
        struct delivery *d = &b->d[i];
        if (d->timer) {
            event_free(d->timer);
        }
        for (int k = 0; k < 6; k++) {
            free(d->fields[k]);
        }
    }
    if (b->ack_ev) {
        event_free(b->ack_ev);
    }
    free(b->d);
    free(b->media);
    if (b->n) {
        bb__notification__free_unpacked(b->n, NULL);
    }
    if (b->db) {
        bb__delivery_batch__free_unpacked(b->db, NULL);
    }
    for (size_t i = 0; i < b->nitems; i++) {
        if (b->in && b->in[i]) {
            bb__notification__free_unpacked(b->in[i], NULL);
        }
        if (b->imedia) {
            free(b->imedia[i]);
        }
        if (b->item_ids) {
            free(b->item_ids[i]);
        }
    }
    free(b->in);
    free(b->ibn);
    free(b->items);
    free(b->imedia);
    free(b->item_ids);
    if (b->pd) {
        bb__pending_delivery__free_unpacked(b->pd, NULL);
    }
    if (b->member) {
        free(b->member);
        s->jobs--;
        bb_later_kick(s->later);
    } else {
        s->inflight--;
    }
    free(b->raw);
    free(b->p);
    free(b);
}

static void ack(struct batch *b);

static void on_ack(struct bb_conn *c, redisReply *r, void *priv)
{
    struct batch *b = priv;
    struct bb_stream *s = b->s;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        arm_ms(b->ack_ev, REDO_MS);
        return;
    }
    bb_debug("batch acked", "stream=%s entry=%s deliveries=%zu", s->conf->stream, b->id, b->nd);
    batch_free(b);
    read_next(s);
}

static void dead_and_ack(struct batch *b);

static void on_ack_timer(evutil_socket_t fd, short what, void *arg)
{
    struct batch *b = arg;
    if (b->dead) {
        dead_and_ack(b);
    } else {
        ack(b);
    }
}

static void complete_job(struct batch *b);

static void ack(struct batch *b)
{
    struct bb_stream *s = b->s;
    if (b->member) {
        complete_job(b);
        return;
    }
    if (bb_conn_commandf(s->commands, on_ack, b, "XACK %s %s %s", s->conf->stream, s->conf->group,
                         b->id) != BB_OK) {
        arm_ms(b->ack_ev, REDO_MS);
    }
}

/* A dead letter about the whole batch or one delivery of it (delivery may be NULL). */
static void dead_letter(struct batch *b, const char *reason, const char *detail,
                        const char *delivery)
{
    struct bb_stream *s = b->s;
    const char *argv[19] = {"XADD",
                            DEAD_STREAM,
                            "*",
                            "reason",
                            reason,
                            "detail",
                            detail,
                            "stream",
                            s->conf->stream,
                            "id",
                            b->id,
                            "p",
                            b->p ? (const char *)b->p : "",
                            "worker",
                            s->cfg->name};
    int argc = 15;
    if (delivery) {
        argv[argc++] = "delivery";
        argv[argc++] = delivery;
    }
    argv[argc++] = "instance";
    argv[argc++] = s->conf->instance;
    size_t len[19];
    for (int i = 0; i < argc; i++) {
        len[i] = i == 12 ? (b->p ? b->plen : 0) : strlen(argv[i]); /* p is binary */
    }
    if (bb_conn_command(s->commands, NULL, NULL, argc, argv, len) != BB_OK) {
        bb_error("dead letter not written: redis down", "stream=%s entry=%s reason=%s",
                 s->conf->stream, b->id, reason);
    }
}

/* KEYS: bb:dead, the stream; ARGV: group, entry id, the dead letter's
 * field/value pairs. One step, so a crash never leaves the entry acked
 * without its dead letter, nor dead-lettered twice. */
static const char dead_ack_lua[] = "redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))\n"
                                   "return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])\n";

static void dead_and_ack(struct batch *b)
{
    struct bb_stream *s = b->s;
    const char *argv[] = {"EVAL",
                          dead_ack_lua,
                          "2",
                          DEAD_STREAM,
                          s->conf->stream,
                          s->conf->group,
                          b->id,
                          "reason",
                          b->dead_reason,
                          "detail",
                          b->dead_detail,
                          "stream",
                          s->conf->stream,
                          "id",
                          b->id,
                          "p",
                          b->p ? (const char *)b->p : "",
                          "worker",
                          s->cfg->name,
                          "instance",
                          s->conf->instance};
    enum { ARGC = sizeof(argv) / sizeof(argv[0]) };
    size_t len[ARGC];
    for (size_t i = 0; i < ARGC; i++) {
        len[i] = i == 16 ? (b->p ? b->plen : 0) : strlen(argv[i]); /* p is binary */
    }
    if (bb_conn_command(s->commands, on_ack, b, ARGC, argv, len) != BB_OK) {
        arm_ms(b->ack_ev, REDO_MS);
    }
}

/* The whole batch is unusable: dead letter and ack (a job: dead letter,
 * then the job is finished). */
static void batch_dead(struct batch *b, const char *reason, const char *detail)
{
    bb_warn("batch to dead letters", "stream=%s entry=%s reason=%s", b->s->conf->stream, b->id,
            reason);
    b->s->stats.dead_batches++;
    if (b->member) {
        dead_letter(b, reason, detail, NULL);
        ack(b);
        return;
    }
    b->dead = true;
    snprintf(b->dead_reason, sizeof(b->dead_reason), "%s", reason);
    snprintf(b->dead_detail, sizeof(b->dead_detail), "%s", detail);
    dead_and_ack(b);
}

/* ---- outcomes ---------------------------------------------------------------------------- */

static void write_receipt(struct bb_stream *s, const char *id, int channel, Bb__Outcome outcome,
                          const char *reason, unsigned attempts)
{
    char why[128];
    /* A plug-in's reason is short by contract; keep the receipt bounded anyway. */
    snprintf(why, sizeof(why), "%s", reason ? reason : "");
    Bb__Receipt r = BB__RECEIPT__INIT;
    r.schema_version = 1;
    r.delivery_id = (char *)id;
    r.channel = (Bb__Channel)channel;
    r.outcome = outcome;
    r.reason = why;
    r.time_ms = bb_now_ms();
    r.attempts = attempts;
    uint8_t buf[512];
    size_t n = bb__receipt__get_packed_size(&r);
    if (n > sizeof(buf)) {
        return;
    }
    bb__receipt__pack(&r, buf);
    const char *argv[] = {"XADD", RECEIPTS_STREAM, "*", "p", (const char *)buf};
    size_t len[] = {4, strlen(RECEIPTS_STREAM), 1, 1, n};
    if (bb_conn_command(s->commands, NULL, NULL, 5, argv, len) != BB_OK) {
        bb_warn("receipt not written: redis down", "delivery=%s", id);
    }
}

/* d's receipt; a digest's final outcome is also each collected item's. */
static void receipt(struct delivery *d, Bb__Outcome outcome, const char *reason)
{
    struct batch *b = d->b;
    if (outcome >= 1 && outcome <= 4) {
        b->s->stats.outcome[outcome]++;
    }
    write_receipt(b->s, d->id, b->channel, outcome, reason, d->attempt);
    for (size_t i = 0; outcome != BB__OUTCOME__OUTCOME_RETRY && i < b->nitems; i++) {
        write_receipt(b->s, b->item_ids[i], b->channel, outcome, reason, d->attempt);
    }
}

static void finish(struct delivery *d)
{
    struct batch *b = d->b;
    d->step = STEP_DONE;
    if (--b->left == 0) {
        ack(b);
    }
}

static int64_t backoff_ms(const struct bb_worker_config *cfg, unsigned attempt)
{
    int64_t w = cfg->retry_min_ms;
    for (unsigned i = 1; i < attempt && w < cfg->retry_max_ms; i++) {
        w *= 2;
    }
    if (w > cfg->retry_max_ms) {
        w = cfg->retry_max_ms;
    }
    return w / 2 + rand() % (w / 2 + 1);
}

static void park(struct delivery *d, int64_t due_ms, const char *reason)
{
    d->step = STEP_PARK;
    d->park_due = due_ms;
    snprintf(d->park_reason, sizeof(d->park_reason), "%s", reason);
    run(d);
}

/* A delivery held back unsent while the breaker is open: parked until the
 * breaker may close, unless that would pass its retry budget; then it ends
 * as retries_exhausted, as if the provider had kept failing it. */
static void park_while_open(struct delivery *d, int64_t due_ms)
{
    struct bb_stream *s = d->b->s;
    if (due_ms - d->first_ms > s->cfg->retry_budget_ms) {
        char detail[160];
        snprintf(detail, sizeof(detail), "attempts=%u last=circuit_open", d->attempt);
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "retries_exhausted");
        dead_letter(d->b, "retries_exhausted", detail, d->id);
        finish(d);
        return;
    }
    s->stats.parked_open++;
    park(d, due_ms, "circuit_open");
}

/* ---- isolation: token bucket and circuit breaker ----------------------------------------- */

enum gate { GATE_GO, GATE_WAIT, GATE_PARK };

static unsigned concurrency(const struct bb_stream *s)
{
    return s->conf->o.concurrency > 0 ? (unsigned)s->conf->o.concurrency
                                      : (unsigned)s->cfg->max_unconfirmed;
}

/* May one more delivery start now? On GATE_WAIT, gate_ev is armed if no
 * completing send will wake the waiters. */
static enum gate gate(struct bb_stream *s)
{
    int64_t now = bb_mono_ms();
    if (s->open_until) {
        if (now < s->open_until) {
            return GATE_PARK;
        }
        if (s->trial) {
            return GATE_WAIT; /* the trial's outcome decides */
        }
    }
    if (s->unconfirmed >= concurrency(s)) {
        return GATE_WAIT;
    }
    int64_t rate = s->conf->o.rate;
    if (rate > 0) {
        double burst = (double)(s->conf->o.burst > 0 ? s->conf->o.burst : rate);
        s->tokens += (double)(now - s->tokens_ms) * (double)rate / 1000.0;
        s->tokens_ms = now;
        if (s->tokens > burst) {
            s->tokens = burst;
        }
        if (s->tokens < 1.0) {
            if (!evtimer_pending(s->gate_ev, NULL)) {
                arm_ms(s->gate_ev, 1 + (int64_t)((1.0 - s->tokens) * 1000.0 / (double)rate));
            }
            return GATE_WAIT;
        }
    }
    return GATE_GO;
}

/* d may start: it holds a place in the crash window and a token. */
static void admit(struct bb_stream *s, struct delivery *d)
{
    d->holds_slot = true;
    s->unconfirmed++;
    if (s->conf->o.rate > 0) {
        s->tokens -= 1.0;
    }
    if (s->open_until) {
        s->trial = true;
        bb_info("circuit half-open: trial send", "channel=%s", s->conf->instance);
    }
}

/* The wall-clock time an open breaker lets a parked delivery try again. */
static int64_t breaker_due(const struct bb_stream *s)
{
    int64_t left = s->open_until - bb_mono_ms();
    return bb_now_ms() + (left > 0 ? left : 0) + rand() % 1000;
}

/* Starts waiting deliveries, in order, as far as the gate allows. */
static void pump(struct bb_stream *s)
{
    while (s->wait_head) {
        enum gate g = gate(s);
        if (g == GATE_WAIT) {
            return;
        }
        struct delivery *w = s->wait_head;
        s->wait_head = w->next_wait;
        if (!s->wait_head) {
            s->wait_tail = NULL;
        }
        w->next_wait = NULL;
        if (g == GATE_PARK) {
            park_while_open(w, breaker_due(s));
            continue;
        }
        admit(s, w);
        run(w);
    }
}

static void on_gate(evutil_socket_t fd, short what, void *arg)
{
    pump(arg);
}

/* A provider answered (any status): it is reachable. */
static void breaker_answered(struct bb_stream *s)
{
    if (s->open_until) {
        bb_info("circuit closed", "channel=%s", s->conf->instance);
    }
    s->failures = 0;
    s->open_until = 0;
    s->trial = false;
}

static void breaker_failed(struct bb_stream *s, const char *reason)
{
    s->failures++;
    if (s->trial || (!s->open_until && s->failures >= (unsigned)s->conf->o.breaker_failures)) {
        s->open_until = bb_mono_ms() + s->conf->o.breaker_cooldown_ms;
        s->trial = false;
        s->stats.breaker_opened++;
        bb_warn("circuit open: sends paused, deliveries parked",
                "channel=%s failures=%u last=%s "
                "cooldown_ms=%lld",
                s->conf->instance, s->failures, reason, (long long)s->conf->o.breaker_cooldown_ms);
        arm_ms(s->gate_ev, s->conf->o.breaker_cooldown_ms);
    }
}

/* ---- an address that is gone --------------------------------------------------------------- */

/* KEYS: user hash, directory stream; ARGV: field, the value that failed, event. Only
 * the address that failed is removed: one the app rotated in meanwhile stays. */
static const char gone_lua[] =
    "if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end\n"
    "redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "if ARGV[1] == 'push_token' then\n"
    "  redis.call('HDEL', KEYS[1], 'push_platform')\n"
    "end\n"
    "redis.call('XADD', KEYS[2], '*', 'p', ARGV[3])\n"
    "return 1\n";

static void on_gone(struct bb_conn *c, redisReply *r, void *priv)
{
    if (r && r->type == REDIS_REPLY_ERROR) {
        bb_warn("address removal failed", "err=\"%.120s\"", r->str);
    }
}

/* The provider says d's address will never work again: remove it from the
 * user's record and tell the directory (a ContactGone event). */
static void contact_gone(struct delivery *d, const char *reason)
{
    struct batch *b = d->b;
    const char *field =
        b->channel == BB__CHANNEL__CHANNEL_PUSH ? "push_token"
        : b->channel == BB__CHANNEL__CHANNEL_EMAIL || b->channel == BB__CHANNEL__CHANNEL_DIGEST
            ? "email"
            : NULL;
    const char *value = !field ? NULL : field[0] == 'p' ? d->contact.push_token : d->contact.email;
    if (!field || d->pub.recipient_kind != BB_RECIPIENT_USER || !value || !value[0]) {
        return;
    }
    Bb__ContactGone g = BB__CONTACT_GONE__INIT;
    g.user_id = d->pub.recipient;
    g.field = (char *)field;
    g.channel = (Bb__Channel)b->channel;
    g.reason = (char *)reason;
    g.time_ms = bb_now_ms();
    Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
    ev.schema_version = 1;
    ev.change_case = BB__DIRECTORY_EVENT__CHANGE_CONTACT_GONE;
    ev.contact_gone = &g;
    uint8_t buf[512];
    size_t n = bb__directory_event__get_packed_size(&ev);
    if (n > sizeof(buf)) {
        return;
    }
    bb__directory_event__pack(&ev, buf);
    char key[48];
    snprintf(key, sizeof(key), "bb:user:%" PRIu64, d->pub.recipient);
    const char *argv[] = {"EVAL",         gone_lua, "2",   key,
                          "bb:directory", field,    value, (const char *)buf};
    size_t len[] = {4, strlen(gone_lua), 1, strlen(key), 12, strlen(field), strlen(value), n};
    b->s->stats.gone++;
    if (bb_conn_command(b->s->commands, on_gone, NULL, 8, argv, len) != BB_OK) {
        bb_warn("address removal not written: redis down", "delivery=%s", d->id);
    }
}

const double bb_latency_bounds_ms[BB_LATENCY_BUCKETS] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 60000, 600000, 3600000};

static void observe_latency(struct bb_stream *s, const struct delivery *d)
{
    int64_t from = d->b->db ? d->b->db->source_time_ms : 0;
    if (from <= 0) {
        return; /* a retry or a digest: its wait is not the engine's latency */
    }
    double ms = (double)(bb_now_ms() - from);
    size_t k = 0;
    while (k < BB_LATENCY_BUCKETS && ms > bb_latency_bounds_ms[k]) {
        k++;
    }
    s->stats.latency[k]++;
    s->stats.latency_sum_ms += ms < 0 ? 0 : ms;
}

static void on_sent(void *token, int status, unsigned retry_after_s, const char *reason)
{
    struct delivery *d = token;
    struct bb_stream *s = d->b->s;
    if (!d->sending) {
        bb_error("plug-in completed a send twice", "channel=%s delivery=%s", s->conf->instance,
                 d->id);
        return;
    }
    d->sending = false;
    reason = reason && reason[0] ? reason : "";
    if (status == BB_SEND_RETRY) {
        breaker_failed(s, reason);
    } else {
        breaker_answered(s);
    }
    release_slot(d);
    if (status == BB_SEND_OK) {
        confirm(d);
        receipt(d, BB__OUTCOME__OUTCOME_OK, reason);
        observe_latency(s, d);
        finish(d);
        return;
    }
    if (status == BB_SEND_RETRY) {
        int64_t wait =
            retry_after_s ? (int64_t)retry_after_s * 1000 : backoff_ms(s->cfg, d->attempt);
        if (wait > s->cfg->retry_max_ms) {
            wait = s->cfg->retry_max_ms;
        }
        int64_t now = bb_now_ms();
        if (d->attempt < (unsigned)s->cfg->max_attempts &&
            now - d->first_ms + wait <= s->cfg->retry_budget_ms) {
            receipt(d, BB__OUTCOME__OUTCOME_RETRY, reason);
            /* The next try waits in Redis; the record goes in the same step,
             * so a crash now leads to a resend, not a loss. */
            park(d, now + wait, reason[0] ? reason : "retry");
            return;
        }
        char detail[160];
        snprintf(detail, sizeof(detail), "attempts=%u last=%s", d->attempt, reason);
        confirm(d);
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "retries_exhausted");
        dead_letter(d->b, "retries_exhausted", detail, d->id);
        finish(d);
        return;
    }
    /* PERMANENT, GONE, or a status this host does not know. */
    confirm(d);
    if (status == BB_SEND_GONE) {
        contact_gone(d, reason[0] ? reason : "gone");
    }
    char detail[160];
    snprintf(detail, sizeof(detail), "attempts=%u status=%d", d->attempt, status);
    receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, reason[0] ? reason : "permanent");
    dead_letter(d->b, reason[0] ? reason : "permanent", detail, d->id);
    finish(d);
}

static void send_one(struct delivery *d)
{
    const struct bb_channel *ch = d->pl->pl.ch;
    d->attempt++;
    d->pub.attempt = d->attempt;
    d->sending = true;
    if (ch->send(d->pl->ctx, &d->pub, on_sent, d) != 0 && d->sending) {
        on_sent(d, BB_SEND_RETRY, 0, "send_failed");
    }
}

/* ---- the steps --------------------------------------------------------------------------- */

static void redo_later(struct delivery *d)
{
    arm_ms(d->timer, REDO_MS);
}

/* Ends d's hold on the crash window and starts whoever waited for it. */
static void release_slot(struct delivery *d)
{
    struct bb_stream *s = d->b->s;
    if (!d->holds_slot) {
        return;
    }
    d->holds_slot = false;
    s->unconfirmed--;
    pump(s);
}

static char *dup_reply(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_STRING) {
        return strdup("");
    }
    char *s = malloc(r->len + 1);
    if (s) {
        memcpy(s, r->str, r->len);
        s[r->len] = '\0';
    }
    return s;
}

/* The plug-in for d: the instance's only one, or the one its push_platform names. */
static const struct bb_chan_plugin *pick_plugin(const struct bb_stream *s, const char *platform)
{
    if (s->nplugins == 1) {
        return &s->plugins[0];
    }
    for (size_t i = 0; i < s->nplugins; i++) {
        if (strcmp(s->plugins[i].pl.ch->name, platform) == 0) {
            return &s->plugins[i];
        }
    }
    return NULL;
}

static void next_step(struct delivery *d)
{
    struct batch *b = d->b;
    d->pl = pick_plugin(b->s, d->contact.push_platform);
    if (!d->pl) {
        char detail[96];
        snprintf(detail, sizeof(detail), "push_platform=%.40s", d->contact.push_platform);
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "no_plugin_for_platform");
        dead_letter(b, "no_plugin_for_platform", detail, d->id);
        finish(d);
        return;
    }
    if (b->member && b->nitems) {
        b->bn.locale = d->contact.locale; /* a digest is in the reader's language */
    }
    d->step = !b->member && b->s->conf->collect_ms >= 0 ? STEP_COLLECT : STEP_RECORD;
    run(d);
}

static void on_contact(struct bb_conn *c, redisReply *r, void *priv)
{
    struct delivery *d = priv;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
        redo_later(d);
        return;
    }
    bool any = false;
    for (size_t i = 0; i < 4; i++) {
        any = any || r->element[i]->type == REDIS_REPLY_STRING;
    }
    if (!any) {
        /* Erased or never known: nobody to reach. */
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "unknown_user");
        finish(d);
        return;
    }
    for (int k = 0; k < 3; k++) {
        free(d->fields[k]);
        d->fields[k] = dup_reply(r->element[k]);
    }
    const char *locale = "nl", *screen = "", *tz = "";
    Bb__User *u = NULL;
    if (r->element[3]->type == REDIS_REPLY_STRING) {
        u = bb__user__unpack(NULL, r->element[3]->len, (const uint8_t *)r->element[3]->str);
        if (u && u->locale[0] && bb_utf8_is_valid(u->locale, strlen(u->locale))) {
            locale = u->locale;
        }
        if (u && bb_utf8_is_valid(u->screen_name, strlen(u->screen_name))) {
            screen = u->screen_name;
        }
        if (u && bb_utf8_is_valid(u->time_zone, strlen(u->time_zone))) {
            tz = u->time_zone;
        }
        if (u && u->prefs) {
            d->digest_hour = u->prefs->digest_hour;
            d->digest_weekly = u->prefs->digest_weekly;
        }
    }
    free(d->fields[3]);
    free(d->fields[4]);
    free(d->fields[5]);
    d->fields[3] = strdup(locale);
    d->fields[4] = strdup(screen);
    d->fields[5] = strdup(tz);
    if (u) {
        bb__user__free_unpacked(u, NULL);
    }
    for (int k = 0; k < 6; k++) {
        if (!d->fields[k]) {
            redo_later(d);
            return;
        }
    }
    d->contact.email = d->fields[0];
    d->contact.push_token = d->fields[1];
    d->contact.push_platform = d->fields[2];
    d->contact.locale = d->fields[3];
    d->contact.screen_name = d->fields[4];
    d->contact.time_zone = d->fields[5];
    next_step(d);
}

static void on_record(struct bb_conn *c, redisReply *r, void *priv)
{
    struct delivery *d = priv;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        release_slot(d);
        redo_later(d);
        return;
    }
    if (r->type == REDIS_REPLY_STRING && (r->len == 0 || r->str[0] != 'p')) {
        release_slot(d);
        receipt(d, BB__OUTCOME__OUTCOME_SKIPPED_DUPLICATE, "already_sent");
        finish(d);
        return;
    }
    if (r->type == REDIS_REPLY_STRING) {
        struct bb_stream *s = d->b->s;
        /* "p<ms>": another try, recorded at <ms>, has no outcome yet. Younger
         * than claim_idle it may still be in flight (the same report posted
         * twice, a batch claimed from a slow worker): ask again when it
         * would be stale. */
        char when[24];
        snprintf(when, sizeof(when), "%.*s", (int)(r->len < 20 ? r->len - 1 : 19), r->str + 1);
        int64_t age = bb_now_ms() - strtoll(when, NULL, 10);
        if (age >= 0 && age < s->cfg->claim_idle_ms) {
            s->stats.in_flight_elsewhere++;
            release_slot(d);
            arm_ms(d->timer, s->cfg->claim_idle_ms - age + 100);
            return;
        }
        /* Stale: the worker that tried died before recording the outcome. */
        if (!(d->pl->pl.ch->caps & BB_CAP_IDEMPOTENCY_KEY)) {
            s->stats.unconfirmed++;
            bb_warn("delivery skipped: an earlier try may have reached the provider",
                    "channel=%s delivery=%s", s->conf->instance, d->id);
            release_slot(d);
            receipt(d, BB__OUTCOME__OUTCOME_SKIPPED_DUPLICATE, "unconfirmed");
            finish(d);
            return;
        }
        s->stats.resent++;
        d->pub.maybe_sent = 1;
    }
    d->step = STEP_SEND;
    send_one(d);
}

/* Marks d's record done: a final outcome (sent, or failed for good). */
static void confirm(struct delivery *d)
{
    if (bb_conn_commandf(d->b->s->commands, NULL, NULL, "SET %s 1 XX KEEPTTL", d->rec) != BB_OK) {
        bb_warn("record not confirmed: redis down", "delivery=%s", d->id);
    }
}

static void on_parked(void *arg, long long result)
{
    struct delivery *d = arg;
    if (result < 0) {
        redo_later(d);
        return;
    }
    if (result == BB_LATER_USER_GONE) {
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "unknown_user");
        finish(d);
        return;
    }
    d->parked = true;
    d->b->s->stats.parked++;
    finish(d);
}

static void on_collected(void *arg, long long result)
{
    struct delivery *d = arg;
    if (result < 0) {
        redo_later(d);
        return;
    }
    if (result == BB_LATER_USER_GONE) {
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "unknown_user");
        finish(d);
        return;
    }
    if (result == 0) {
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "collection_full");
    } else {
        d->b->s->stats.collected++;
    }
    finish(d);
}

/* A PendingDelivery for d's next try (or a collection's schedule), packed
 * into buf (from malloc); returns its length, 0 on failure. */
static size_t pack_job(const struct delivery *d, int64_t due_ms, const char *reason, uint8_t **buf)
{
    const struct batch *b = d->b;
    Bb__PendingDelivery pd = BB__PENDING_DELIVERY__INIT;
    pd.schema_version = 1;
    pd.recipient = d->pub.recipient;
    pd.recipient_kind = d->pub.recipient_kind == BB_RECIPIENT_GROUP
                            ? BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP
                            : BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
    pd.channel = (Bb__Channel)b->channel;
    pd.attempts = d->attempt;
    pd.first_ms = d->first_ms;
    pd.last_reason = (char *)reason;
    pd.source = (char *)b->id;
    pd.due_ms = due_ms;
    if (!b->member || b->nitems == 0) {
        pd.notification_key = b->db ? b->db->notification_key : b->pd->notification_key;
        pd.notification.data = b->raw;
        pd.notification.len = b->rawlen;
    }
    size_t n = bb__pending_delivery__get_packed_size(&pd);
    *buf = malloc(n ? n : 1);
    if (!*buf) {
        return 0;
    }
    return bb__pending_delivery__pack(&pd, *buf);
}

/* "c:u<id>" or "c:g<id>": the collection of d's recipient. */
static void collection_member(const struct delivery *d, char *out, size_t cap)
{
    snprintf(out, cap, "c:%c%" PRIu64, d->pub.recipient_kind == BB_RECIPIENT_GROUP ? 'g' : 'u',
             d->pub.recipient);
}

/* When d's recipient's collection is sent next. */
static int64_t collection_due(const struct delivery *d, int64_t now)
{
    const struct bb_chan_conf *conf = d->b->s->conf;
    if (conf->collect_ms > 0) {
        return bb_next_interval_ms(conf->collect_ms, now);
    }
    if (d->pub.recipient_kind == BB_RECIPIENT_GROUP) {
        return bb_next_local_hour_ms("", 9, false, now); /* a group: daily, 09:00 */
    }
    return bb_next_local_hour_ms(d->fields[5], d->digest_hour, d->digest_weekly, now);
}

static void run(struct delivery *d)
{
    struct batch *b = d->b;
    struct bb_stream *s = b->s;
    int rc = BB_OK;
    switch (d->step) {
    case STEP_CONTACT:
        if (d->pub.recipient_kind == BB_RECIPIENT_GROUP) {
            /* A group's public account: its endpoint is the plug-in's configuration. */
            for (int k = 0; k < 6; k++) {
                d->fields[k] = strdup(k == 3 ? (b->bn.locale[0] ? b->bn.locale : "nl") : "");
            }
            d->contact.email = d->contact.push_token = d->contact.push_platform = "";
            d->contact.locale = d->fields[3] ? d->fields[3] : "nl";
            d->contact.screen_name = "";
            next_step(d);
            return;
        }
        rc = bb_conn_commandf(s->commands, on_contact, d,
                              "HMGET bb:user:%" PRIu64 " email push_token push_platform u",
                              d->pub.recipient);
        break;
    case STEP_COLLECT: {
        char member[48];
        uint8_t *blob;
        int64_t now = bb_now_ms(), due = collection_due(d, now);
        collection_member(d, member, sizeof(member));
        size_t n = pack_job(d, due, "", &blob);
        if (!n) {
            redo_later(d);
            return;
        }
        rc = bb_later_collect(s->later, member, d->id, b->raw, b->rawlen, due, blob, n,
                              s->conf->o.collect_max, on_collected, d);
        free(blob);
        break;
    }
    case STEP_RECORD:
        if (!d->holds_slot) {
            enum gate g = s->wait_head ? GATE_WAIT : gate(s);
            if (g == GATE_WAIT) {
                if (s->wait_tail) {
                    s->wait_tail->next_wait = d;
                } else {
                    s->wait_head = d;
                }
                s->wait_tail = d;
                return;
            }
            if (g == GATE_PARK) {
                park_while_open(d, breaker_due(s));
                return;
            }
            admit(s, d);
        }
        rc = bb_conn_commandf(s->commands, on_record, d, "SET %s p%lld NX GET PX %lld", d->rec,
                              (long long)bb_now_ms(), (long long)s->cfg->sent_ttl_ms);
        break;
    case STEP_PARK: {
        char member[224];
        uint8_t *blob;
        if (b->member) {
            snprintf(member, sizeof(member), "%s", b->member);
        } else {
            snprintf(member, sizeof(member), "r:%s", d->id);
        }
        size_t n = pack_job(d, b->pd ? b->pd->due_ms : 0, d->park_reason, &blob);
        if (!n) {
            redo_later(d);
            return;
        }
        rc = bb_later_park(s->later, member, d->park_due, blob, n, d->rec, on_parked, d);
        free(blob);
        break;
    }
    case STEP_SEND:
        send_one(d);
        return;
    case STEP_DONE:
        return;
    }
    if (rc != BB_OK) {
        redo_later(d);
    }
}

static void on_delivery_timer(evutil_socket_t fd, short what, void *arg)
{
    run(arg);
}

/* ---- decoding ---------------------------------------------------------------------------- */

/* Sets up delivery d of b to recipient: its id, record and timer. */
static int delivery_init(struct batch *b, struct delivery *d, const char *key, uint64_t recipient,
                         int kind, int64_t first_ms)
{
    struct bb_stream *s = b->s;
    d->b = b;
    d->first_ms = first_ms;
    d->timer = evtimer_new(s->base, on_delivery_timer, d);
    if (!d->timer) {
        return -1;
    }
    if (key && !bb_delivery_id(d->id, sizeof(d->id), key, b->channel, recipient)) {
        return -1;
    }
    snprintf(d->rec, sizeof(d->rec), "bb:sent:%s:%s", s->conf->instance, d->id);
    d->contact.struct_size = sizeof(d->contact);
    d->contact.unsubscribe_url = "";
    d->contact.endpoint = "";
    d->contact.email = d->contact.push_token = d->contact.push_platform = "";
    d->contact.locale = "nl";
    d->contact.screen_name = "";
    d->contact.time_zone = "";
    d->pub.struct_size = sizeof(d->pub);
    d->pub.delivery_id = d->id;
    d->pub.recipient = recipient;
    d->pub.recipient_kind = kind;
    d->pub.n = &b->bn;
    d->pub.contact = &d->contact;
    d->pub.items = b->items;
    d->pub.nitems = b->nitems;
    return 0;
}

static void start_deliveries(struct batch *b)
{
    const Bb__DeliveryBatch *db = b->db;
    b->nd = db->n_recipients;
    b->left = b->nd;
    b->d = calloc(b->nd ? b->nd : 1, sizeof(*b->d));
    if (!b->d) {
        /* Leave the entry pending: a restart (or a later claim) retries it. */
        bb_error("out of memory for a batch; it stays pending", "entry=%s", b->id);
        b->nd = 0;
        return;
    }
    if (b->nd == 0) {
        ack(b);
        return;
    }
    int64_t now = bb_now_ms();
    int kind = db->recipient_kind == BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP ? BB_RECIPIENT_GROUP
                                                                              : BB_RECIPIENT_USER;
    for (size_t i = 0; i < b->nd; i++) {
        if (delivery_init(b, &b->d[i], db->notification_key, db->recipients[i], kind, now) != 0) {
            bb_error("cannot set up a delivery; the batch stays pending", "entry=%s", b->id);
            b->left = SIZE_MAX; /* never acked by this process */
            return;
        }
    }
    for (size_t i = 0; i < b->nd; i++) {
        run(&b->d[i]);
    }
}

/* What plug-ins see of n; media from malloc into *media. Returns 0, or -1
 * when n is not valid UTF-8 or memory ran out. */
static int view_notification(const Bb__Notification *n, struct bb_notification *bn,
                             struct bb_media **media)
{
    if (!bb_notification_valid(n)) {
        return -1;
    }
    *media = calloc(n->n_media ? n->n_media : 1, sizeof(**media));
    if (!*media) {
        return -1;
    }
    for (size_t i = 0; i < n->n_media; i++) {
        (*media)[i] =
            (struct bb_media){n->media[i]->url, n->media[i]->mime_type, n->media[i]->publishable};
    }
    *bn = (struct bb_notification){
        .struct_size = sizeof(struct bb_notification),
        .kind = n->kind == BB__NOTIFICATION_KIND__NOTIFICATION_KIND_STATUS ? BB_KIND_STATUS
                                                                           : BB_KIND_REPORT,
        .report_id = n->report_id,
        .status_id = n->status_id,
        .time_ms = n->time_ms,
        .category = (int)n->category,
        .category_name = category_name((int)n->category),
        .urgency = (int)n->urgency,
        .source = (int)n->source,
        .locale = n->locale,
        .title = n->title,
        .text = n->text,
        .author = n->anonymous ? "" : n->author,
        .anonymous = n->anonymous,
        .cell = n->cell,
        .lat = n->lat,
        .lon = n->lon,
        .group_name = n->group_name,
        .status = (int)n->status,
        .media = *media,
        .nmedia = n->n_media,
    };
    return 0;
}

static void decode(struct batch *b, const struct bb_zdict *dict)
{
    struct bb_stream *s = b->s;
    const uint8_t *raw;
    size_t rawlen;
    int rc = bb_zdec_decompress(s->zdec, dict, b->db->notification_zstd.data,
                                b->db->notification_zstd.len, &raw, &rawlen);
    if (rc != BB_OK) {
        batch_dead(b, rc == BB_ETOOBIG ? "payload_too_big" : "decompress_error", bb_strerror(rc));
        return;
    }
    b->n = bb__notification__unpack(NULL, rawlen, raw);
    if (!b->n) {
        batch_dead(b, "decode_error", "notification");
        return;
    }
    if (!bb_notification_valid(b->n)) {
        batch_dead(b, "invalid_utf8", "notification");
        return;
    }
    b->raw = malloc(rawlen ? rawlen : 1);
    if (!b->raw || view_notification(b->n, &b->bn, &b->media) != 0) {
        bb_error("out of memory for a batch; it stays pending", "entry=%s", b->id);
        return;
    }
    memcpy(b->raw, raw, rawlen);
    b->rawlen = rawlen;
    start_deliveries(b);
}

struct dict_fetch {
    struct batch *b;
    uint32_t id;
};

static struct bb_zdict *dict_find(struct bb_stream *s, uint32_t id)
{
    for (struct dict_entry *e = s->dicts; e; e = e->next) {
        if (e->id == id) {
            return e->d;
        }
    }
    return NULL;
}

static void on_dict(struct bb_conn *c, redisReply *r, void *priv)
{
    struct dict_fetch *f = priv;
    struct batch *b = f->b;
    struct bb_stream *s = b->s;
    uint32_t id = f->id;
    free(f);
    char detail[64];
    snprintf(detail, sizeof(detail), "dict=%u", id);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        /* Not the batch's fault: the entry stays pending and is read again. */
        bb_warn("dictionary fetch failed; batch stays pending", "dict=%u entry=%s", id, b->id);
        batch_free(b);
        reread_pending(s);
        return;
    }
    if (r->type != REDIS_REPLY_STRING) {
        batch_dead(b, "unknown_dictionary", detail);
        return;
    }
    struct bb_zdict *d = dict_find(s, id);
    if (!d) {
        struct dict_entry *e = calloc(1, sizeof(*e));
        d = bb_zdict_new(r->str, r->len, 3);
        if (!e || !d || bb_zdict_id(d) != id) {
            free(e);
            bb_zdict_unref(d);
            batch_dead(b, "bad_dictionary", detail);
            return;
        }
        e->id = id;
        e->d = d;
        e->next = s->dicts;
        s->dicts = e;
        bb_info("dictionary loaded", "dict=%u bytes=%zu", id, r->len);
    }
    decode(b, d);
}

/* ---- jobs from bb:later: retries and collections ------------------------------------------- */

static void on_job_done(void *arg, long long result)
{
    struct batch *b = arg;
    if (result < 0) {
        arm_ms(b->ack_ev, REDO_MS); /* ack() comes back here */
        return;
    }
    batch_free(b);
}

/* A job's delivery is over: a retry is removed; a collection drops what
 * was sent and is scheduled again if more came in meanwhile. A parked
 * delivery has rewritten its job already. */
static void complete_job(struct batch *b)
{
    struct bb_stream *s = b->s;
    const struct delivery *d = b->nd ? &b->d[0] : NULL;
    if (d && d->parked) {
        batch_free(b);
        return;
    }
    int rc;
    if (b->member[0] == 'c' && b->pd) {
        int64_t now = bb_now_ms();
        /* Without a delivery (nothing was collected) the user's hour is not
         * known here: the next take computes it. */
        int64_t next = d ? collection_due(d, now) : now + 60000;
        b->pd->due_ms = next;
        b->pd->attempts = 0;
        b->pd->first_ms = now;
        size_t n = bb__pending_delivery__get_packed_size(b->pd);
        uint8_t *blob = malloc(n ? n : 1);
        if (!blob) {
            arm_ms(b->ack_ev, REDO_MS);
            return;
        }
        bb__pending_delivery__pack(b->pd, blob);
        rc = bb_later_flushed(s->later, b->member, next, blob, n, on_job_done, b);
        free(blob);
    } else {
        rc = bb_later_finish(s->later, b->member, on_job_done, b);
    }
    if (rc != BB_OK) {
        arm_ms(b->ack_ev, REDO_MS);
    }
}

static unsigned job_room(void *arg)
{
    struct bb_stream *s = arg;
    int64_t room = s->cfg->max_inflight - (int64_t)s->jobs;
    return s->stopping || room <= 0 ? 0 : (unsigned)room;
}

struct item {
    Bb__Notification *n;
    char *id;
};

static int item_cmp(const void *a, const void *b)
{
    const struct item *x = a, *y = b;
    return (x->n->time_ms > y->n->time_ms) - (x->n->time_ms < y->n->time_ms);
}

/* A collection's items, oldest first; undecodable ones go to bb:dead. */
static int load_items(struct batch *b, const redisReply *items)
{
    size_t n = items ? items->elements / 2 : 0;
    struct item *v = calloc(n ? n : 1, sizeof(*v));
    b->in = calloc(n ? n : 1, sizeof(*b->in));
    b->ibn = calloc(n ? n : 1, sizeof(*b->ibn));
    b->items = calloc(n ? n : 1, sizeof(*b->items));
    b->imedia = calloc(n ? n : 1, sizeof(*b->imedia));
    b->item_ids = calloc(n ? n : 1, sizeof(*b->item_ids));
    if (!v || !b->in || !b->ibn || !b->items || !b->imedia || !b->item_ids) {
        free(v);
        return -1;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *f = items->element[2 * i], *p = items->element[2 * i + 1];
        if (f->type != REDIS_REPLY_STRING || p->type != REDIS_REPLY_STRING) {
            continue;
        }
        Bb__Notification *note = bb__notification__unpack(NULL, p->len, (const uint8_t *)p->str);
        if (!note || !bb_notification_valid(note)) {
            if (note) {
                bb__notification__free_unpacked(note, NULL);
            }
            dead_letter(b, "bad_item", "collection", f->str);
            continue;
        }
        v[k].n = note;
        v[k].id = strdup(f->str);
        if (!v[k].id) {
            bb__notification__free_unpacked(note, NULL);
            continue;
        }
        k++;
    }
    qsort(v, k, sizeof(*v), item_cmp);
    for (size_t i = 0; i < k; i++) {
        b->in[b->nitems] = v[i].n;
        b->item_ids[b->nitems] = v[i].id;
        b->nitems++;
        if (view_notification(v[i].n, &b->ibn[i], &b->imedia[i]) != 0) {
            free(v);
            return -1;
        }
        b->items[i] = &b->ibn[i];
    }
    free(v);
    return 0;
}

static void on_job(void *arg, const struct bb_later_job *job)
{
    struct bb_stream *s = arg;
    struct batch *b = calloc(1, sizeof(*b));
    char *member = strdup(job->member);
    if (!b || !member) {
        free(b);
        free(member);
        return; /* still leased: it comes back when the lease ends */
    }
    b->s = s;
    b->member = member;
    s->jobs++;
    b->next = s->batches;
    s->batches = b;
    b->ack_ev = evtimer_new(s->base, on_ack_timer, b);
    b->p = malloc(job->bloblen ? job->bloblen : 1);
    if (!b->ack_ev || !b->p) {
        batch_free(b);
        return;
    }
    memcpy(b->p, job->blob, job->bloblen);
    b->plen = job->bloblen;
    b->pd = bb__pending_delivery__unpack(NULL, b->plen, b->p);
    if (!b->pd) {
        bb_error("unreadable job: to dead letters", "channel=%s job=%.120s", s->conf->instance,
                 member);
        dead_letter(b, "bad_job", "pending_delivery", NULL);
        ack(b);
        return;
    }
    b->channel = (int)b->pd->channel;
    snprintf(b->id, sizeof(b->id), "%s", b->pd->source);
    int kind = b->pd->recipient_kind == BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP
                   ? BB_RECIPIENT_GROUP
                   : BB_RECIPIENT_USER;
    b->d = calloc(1, sizeof(*b->d));
    if (!b->d) {
        batch_free(b);
        return;
    }
    struct delivery *d = &b->d[0];
    if (member[0] == 'r') {
        b->n = bb__notification__unpack(NULL, b->pd->notification.len, b->pd->notification.data);
        b->raw = malloc(b->pd->notification.len ? b->pd->notification.len : 1);
        if (!b->n || !b->raw || view_notification(b->n, &b->bn, &b->media) != 0) {
            dead_letter(b, "bad_job", "notification", member + 2);
            ack(b);
            return;
        }
        memcpy(b->raw, b->pd->notification.data, b->pd->notification.len);
        b->rawlen = b->pd->notification.len;
        snprintf(d->id, sizeof(d->id), "%s", member + 2);
    } else {
        if (load_items(b, job->items) != 0) {
            batch_free(b); /* out of memory: the lease brings it back */
            return;
        }
        if (b->nitems == 0) {
            ack(b);
            return;
        }
        int urgency = BB_URGENCY_INFORMATIONAL;
        for (size_t i = 0; i < b->nitems; i++) {
            urgency = b->items[i]->urgency > urgency ? b->items[i]->urgency : urgency;
        }
        b->bn = (struct bb_notification){
            .struct_size = sizeof(struct bb_notification),
            .kind = BB_KIND_DIGEST,
            .report_id = "",
            .status_id = "",
            .time_ms = b->pd->due_ms,
            .category_name = "",
            .urgency = urgency,
            /* A user's language comes with the contact; a group's posts are
             * in the language its reports were rendered in. */
            .locale = b->items[0]->locale[0] ? b->items[0]->locale : "nl",
            .title = "",
            .text = "",
            .author = "",
            .cell = "",
            .group_name = kind == BB_RECIPIENT_GROUP ? b->items[0]->group_name : "",
        };
        snprintf(d->id, sizeof(d->id), "c:%s:%s:%" PRId64, s->conf->instance, member + 2,
                 b->pd->due_ms);
    }
    b->nd = b->left = 1;
    if (delivery_init(b, d, NULL, b->pd->recipient, kind, b->pd->first_ms) != 0) {
        batch_free(b);
        return;
    }
    d->attempt = b->pd->attempts;
    run(d);
}

/* ---- reading ----------------------------------------------------------------------------- */

static bool in_flight(const struct bb_stream *s, const char *id)
{
    for (const struct batch *b = s->batches; b; b = b->next) {
        if (!b->member && strcmp(b->id, id) == 0) {
            return true;
        }
    }
    return false;
}

static void take_entry(struct bb_stream *s, const redisReply *e)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 ||
        e->element[0]->type != REDIS_REPLY_STRING || in_flight(s, e->element[0]->str)) {
        return;
    }
    struct batch *b = calloc(1, sizeof(*b));
    if (!b) {
        return; /* stays pending */
    }
    b->s = s;
    s->stats.batches++;
    snprintf(b->id, sizeof(b->id), "%s", e->element[0]->str);
    b->next = s->batches;
    s->batches = b;
    s->inflight++;
    b->ack_ev = evtimer_new(s->base, on_ack_timer, b);
    if (!b->ack_ev) {
        batch_free(b);
        return;
    }
    const redisReply *f = e->elements > 1 ? e->element[1] : NULL;
    const redisReply *p = NULL;
    for (size_t i = 0; f && f->type == REDIS_REPLY_ARRAY && i + 1 < f->elements; i += 2) {
        if (f->element[i]->type == REDIS_REPLY_STRING && strcmp(f->element[i]->str, "p") == 0 &&
            f->element[i + 1]->type == REDIS_REPLY_STRING) {
            p = f->element[i + 1];
        }
    }
    if (!p) {
        batch_dead(b, f && f->type == REDIS_REPLY_ARRAY ? "missing_payload" : "entry_deleted", "");
        return;
    }
    b->p = malloc(p->len ? p->len : 1);
    if (!b->p) {
        batch_free(b);
        return;
    }
    memcpy(b->p, p->str, p->len);
    b->plen = p->len;
    b->db = bb__delivery_batch__unpack(NULL, b->plen, b->p);
    if (!b->db) {
        batch_dead(b, "decode_error", "delivery_batch");
        return;
    }
    b->channel = (int)b->db->channel;
    if (!bb_entry_key_valid(b->db->notification_key)) {
        batch_dead(b, "bad_notification_key", "");
        return;
    }
    if (b->db->notification_zstd.len == 0) {
        batch_dead(b, "missing_field:notification_zstd", "");
        return;
    }
    uint32_t id = bb_zframe_dict_id(b->db->notification_zstd.data, b->db->notification_zstd.len);
    if (id == 0) {
        decode(b, NULL); /* no dictionary, or not a frame: decompression tells */
        return;
    }
    struct bb_zdict *d = dict_find(s, id);
    if (d) {
        decode(b, d);
        return;
    }
    struct dict_fetch *df = malloc(sizeof(*df));
    if (!df) {
        batch_free(b);
        return;
    }
    *df = (struct dict_fetch){b, id};
    if (bb_conn_commandf(s->commands, on_dict, df, "GET bb:zdict:%u", id) != BB_OK) {
        free(df);
        batch_free(b);
        reread_pending(s);
    }
}

static void on_read(struct bb_conn *c, redisReply *r, void *priv)
{
    struct bb_stream *s = priv;
    s->reading = false;
    if (!r) {
        return; /* on_reader_ready reads again */
    }
    if (r->type == REDIS_REPLY_ERROR) {
        bb_warn("read failed", "stream=%s err=\"%.120s\"", s->conf->stream, r->str);
        if (strncmp(r->str, "NOGROUP", 7) == 0) {
            s->group_ready = false;
            bb_stream_commands_ready(s);
        }
        return; /* the tick reads again */
    }
    size_t got = 0;
    for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
        const redisReply *sr = r->element[k];
        if (sr->type != REDIS_REPLY_ARRAY || sr->elements != 2 ||
            sr->element[1]->type != REDIS_REPLY_ARRAY) {
            continue;
        }
        const redisReply *entries = sr->element[1];
        for (size_t i = 0; i < entries->elements; i++) {
            const redisReply *e = entries->element[i];
            if (s->pending_phase && e->type == REDIS_REPLY_ARRAY && e->elements >= 1 &&
                e->element[0]->type == REDIS_REPLY_STRING) {
                snprintf(s->pending_from, sizeof(s->pending_from), "%s", e->element[0]->str);
            }
            got++;
            take_entry(s, e);
        }
    }
    if (s->pending_phase && got == 0) {
        s->pending_phase = false;
        bb_info("own pending entries re-read", "stream=%s", s->conf->stream);
    }
    read_next(s);
}

static void read_next(struct bb_stream *s)
{
    if (s->reading || s->stopping || !s->group_ready || !bb_conn_is_ready(s->reader)) {
        return;
    }
    int64_t room = s->cfg->max_inflight - (int64_t)s->inflight;
    if (room <= 0) {
        return;
    }
    char count[24], block[24];
    snprintf(count, sizeof(count), "%lld",
             (long long)(room < s->cfg->read_count ? room : s->cfg->read_count));
    snprintf(block, sizeof(block), "%lld", (long long)s->cfg->block_ms);
    const char *argv[12];
    int n = 0;
    argv[n++] = "XREADGROUP";
    argv[n++] = "GROUP";
    argv[n++] = s->conf->group;
    argv[n++] = s->cfg->name;
    argv[n++] = "COUNT";
    argv[n++] = count;
    if (!s->pending_phase) {
        argv[n++] = "BLOCK";
        argv[n++] = block;
    }
    argv[n++] = "STREAMS";
    argv[n++] = s->conf->stream;
    /* With an id Redis returns our own pending entries after it. */
    argv[n++] = s->pending_phase ? s->pending_from : ">";
    if (bb_conn_command(s->reader, on_read, s, n, argv, NULL) == BB_OK) {
        s->reading = true;
    }
}

/* ---- claiming ---------------------------------------------------------------------------- */

/* Entries another worker of the group read and left (it died or hangs)
 * are taken over once idle for claim_idle. The records make this safe:
 * what that worker sent is skipped. */
static void on_claim(struct bb_conn *c, redisReply *r, void *priv)
{
    struct bb_stream *s = priv;
    s->claiming = false;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) {
        if (r && r->type == REDIS_REPLY_ERROR) {
            bb_warn("claim failed", "stream=%s err=\"%.120s\"", s->conf->stream, r->str);
        }
        return;
    }
    snprintf(s->claim_cursor, sizeof(s->claim_cursor), "%s",
             r->element[0]->type == REDIS_REPLY_STRING ? r->element[0]->str : "0-0");
    const redisReply *entries = r->element[1];
    for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 1) {
            bb_info("entry claimed", "stream=%s entry=%s", s->conf->stream, e->element[0]->str);
            take_entry(s, e);
        }
    }
    /* Redis 7 drops pending entries that were trimmed away and names them. */
    if (r->elements > 2 && r->element[2]->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->element[2]->elements; i++) {
            bb_error("pending batch was trimmed before it was delivered", "stream=%s entry=%s",
                     s->conf->stream, r->element[2]->element[i]->str);
        }
    }
}

/* The instance's backlog for /metrics: XINFO GROUPS (lag, pending) and ZCARD bb:later. */
static void on_backlog(struct bb_conn *c, redisReply *r, void *priv)
{
    struct bb_stream *s = priv;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        return;
    }
    for (size_t g = 0; g < r->elements; g++) {
        const redisReply *gr = r->element[g];
        bool ours = false;
        long long lag = -1, pending = -1;
        for (size_t k = 0; gr->type == REDIS_REPLY_ARRAY && k + 1 < gr->elements; k += 2) {
            const redisReply *key = gr->element[k], *v = gr->element[k + 1];
            if (key->type != REDIS_REPLY_STRING) {
                continue;
            }
            if (strcmp(key->str, "name") == 0 && v->type == REDIS_REPLY_STRING) {
                ours = strcmp(v->str, s->conf->group) == 0;
            } else if (strcmp(key->str, "lag") == 0 && v->type == REDIS_REPLY_INTEGER) {
                lag = v->integer;
            } else if (strcmp(key->str, "pending") == 0 && v->type == REDIS_REPLY_INTEGER) {
                pending = v->integer;
            }
        }
        if (ours) {
            s->stats.lag = lag;
            s->stats.pending = pending;
        }
    }
}

static void on_later_size(struct bb_conn *c, redisReply *r, void *priv)
{
    struct bb_stream *s = priv;
    if (r && r->type == REDIS_REPLY_INTEGER) {
        s->stats.later = r->integer;
    }
}

static void on_claim_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_stream *s = arg;
    arm_ms(s->claim_ev, s->cfg->claim_interval_ms);
    if (s->group_ready) {
        bb_conn_commandf(s->commands, on_backlog, s, "XINFO GROUPS %s", s->conf->stream);
        bb_conn_commandf(s->commands, on_later_size, s, "ZCARD bb:later:%s", s->conf->instance);
    }
    int64_t room = s->cfg->max_inflight - (int64_t)s->inflight;
    if (s->claiming || s->stopping || !s->group_ready || room <= 0) {
        return;
    }
    if (bb_conn_commandf(s->commands, on_claim, s, "XAUTOCLAIM %s %s %s %lld %s COUNT %lld",
                         s->conf->stream, s->conf->group, s->cfg->name,
                         (long long)s->cfg->claim_idle_ms, s->claim_cursor,
                         (long long)(room < 100 ? room : 100)) == BB_OK) {
        s->claiming = true;
    }
}

/* ---- connections ------------------------------------------------------------------------- */

static void on_group(struct bb_conn *c, redisReply *r, void *priv)
{
    struct bb_stream *s = priv;
    if (!r) {
        return;
    }
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        bb_error("cannot create consumer group", "stream=%s err=\"%.120s\"", s->conf->stream,
                 r->str);
        return;
    }
    s->group_ready = true;
    read_next(s);
}

void bb_stream_commands_ready(struct bb_stream *s)
{
    /* From 0: batches written before the first worker ran are delivered. */
    bb_conn_commandf(s->commands, on_group, s, "XGROUP CREATE %s %s 0 MKSTREAM", s->conf->stream,
                     s->conf->group);
}

static void on_reader_ready(struct bb_conn *c, void *arg)
{
    struct bb_stream *s = arg;
    s->reading = false;
    /* After a (re)connect, our own pending entries first: a read whose reply
     * was lost, or a previous run with this name, left them. */
    s->pending_phase = true;
    snprintf(s->pending_from, sizeof(s->pending_from), "0");
    read_next(s);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    read_next(arg);
}

struct bb_stream *bb_stream_new(struct event_base *base, const struct bb_worker_config *cfg,
                                const struct bb_chan_conf *conf,
                                const struct bb_chan_plugin *plugins, size_t nplugins,
                                struct bb_conn *commands)
{
    struct bb_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        return NULL;
    }
    s->base = base;
    s->cfg = cfg;
    s->conf = conf;
    s->plugins = plugins;
    s->nplugins = nplugins;
    s->commands = commands;
    s->tokens_ms = bb_mono_ms();
    s->tokens = (double)(conf->o.burst > 0 ? conf->o.burst : conf->o.rate);
    s->pending_phase = true;
    snprintf(s->pending_from, sizeof(s->pending_from), "0");
    s->stats.lag = s->stats.pending = s->stats.later = -1;
    s->zdec = bb_zdec_new((size_t)cfg->max_payload);
    s->tick = event_new(base, -1, EV_PERSIST, on_tick, s);
    s->claim_ev = evtimer_new(base, on_claim_tick, s);
    s->gate_ev = evtimer_new(base, on_gate, s);
    /* A job is leased as long as a batch entry may stay pending. */
    s->later = bb_later_new(base, commands, conf->instance, cfg->later_poll_ms, cfg->claim_idle_ms,
                            on_job, job_room, s);
    snprintf(s->claim_cursor, sizeof(s->claim_cursor), "0-0");
    if (!s->zdec || !s->tick || !s->claim_ev || !s->gate_ev || !s->later) {
        goto fail;
    }
    arm_ms(s->claim_ev, cfg->claim_interval_ms);
    struct timeval tv = {0, 200 * 1000};
    event_add(s->tick, &tv);
    char name[160];
    snprintf(name, sizeof(name), "reader:%s", conf->instance);
    struct bb_conn_opts o = {
        .name = name,
        .addr = cfg->redis,
        .user = cfg->redis_user,
        .password = cfg->redis_password,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        /* A blocking read may take block_ms before any reply. */
        .command_timeout_ms = cfg->command_timeout_ms + cfg->block_ms,
        .reconnect_min_ms = cfg->reconnect_min_ms,
        .reconnect_max_ms = cfg->reconnect_max_ms,
        .keepalive_s = (int)cfg->keepalive_s,
        .on_ready = on_reader_ready,
        .arg = s,
    };
    s->reader = bb_conn_new(base, &o);
    if (!s->reader) {
        goto fail;
    }
    return s;

fail:
    bb_stream_free(s);
    return NULL;
}

void bb_stream_stop(struct bb_stream *s)
{
    s->stopping = true;
    bb_later_stop(s->later);
}

unsigned bb_stream_inflight(const struct bb_stream *s)
{
    return s->inflight + s->jobs;
}

void bb_stream_free(struct bb_stream *s)
{
    if (!s) {
        return;
    }
    bb_conn_free(s->reader);
    /* Unfinished batches stay pending in Redis; the next run re-reads them. */
    s->wait_head = s->wait_tail = NULL;
    while (s->batches) {
        batch_free(s->batches);
    }
    while (s->dicts) {
        struct dict_entry *e = s->dicts;
        s->dicts = e->next;
        bb_zdict_unref(e->d);
        free(e);
    }
    if (s->tick) {
        event_free(s->tick);
    }
    if (s->claim_ev) {
        event_free(s->claim_ev);
    }
    if (s->gate_ev) {
        event_free(s->gate_ev);
    }
    bb_later_free(s->later);
    bb_zdec_free(s->zdec);
    free(s);
}

const struct bb_stream_stats *bb_stream_stats(const struct bb_stream *s)
{
    return &s->stats;
}

const char *bb_stream_instance(const struct bb_stream *s)
{
    return s->conf->instance;
}
