/* One channel instance's stream: bb:out:<inst> read through the consumer
 * group, each DeliveryBatch decoded (dictionary fetched and cached,
 * decompressed with a size cap), every recipient's contact resolved,
 * the delivery recorded, handed to the plug-in, its outcome written, and
 * the entry acked once all its deliveries are done.
 *
 * Per delivery, each step one Redis round trip on the commands connection
 * (replies come in order, so the steps of a batch's deliveries pipeline):
 *   contact  HMGET bb:user:{id} email push_token push_platform u
 *   record   SET bb:sent:{delivery id} 1 NX PX sent_ttl   (nil: sent before -> skip)
 *   send     the plug-in's send(); done() gives the outcome
 *            (at most max_unconfirmed deliveries per channel are between
 *            record and outcome at any time; the others wait their turn)
 *   outcome  XADD bb:receipts (+ XADD bb:dead for a permanent failure); a retry
 *            first DELs the record, waits (backoff with jitter, or Retry-After,
 *            within retry_budget), then records again.
 *
 * Exactly-once effect: a delivery whose record exists is never sent again,
 * by this worker or any other. The one window: the worker dies after
 * Redis stored the record and before the provider accepted the message
 * (the record's reply in flight, or send() started); that delivery is then
 * lost, never duplicated. At most max_unconfirmed deliveries per channel
 * are in that window: a smaller cap narrows it at the cost of throughput
 * with slow providers. A lost XACK or a crash after sending only leads
 * to a re-read that finds every record and writes SKIPPED_DUPLICATE
 * receipts.
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
    const struct bb_channel *ch;
    void *pctx;
    struct bb_conn *reader, *commands;
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
    struct bb_stream_stats stats;
};

enum step { STEP_CONTACT, STEP_RECORD, STEP_SEND, STEP_UNRECORD, STEP_DONE };

struct delivery {
    struct batch *b;
    struct bb_delivery pub;
    struct bb_contact contact;
    char id[192];
    char *fields[5]; /* email, push_token, push_platform, locale, screen_name (owned) */
    enum step step;
    unsigned attempt;
    bool sending;
    bool holds_slot;
    struct delivery *next_wait;
    int64_t first_ms;
    struct event *timer;
};

struct batch {
    struct bb_stream *s;
    struct batch *next;
    char id[48];
    uint8_t *p;
    size_t plen;
    Bb__DeliveryBatch *db;
    Bb__Notification *n;
    struct bb_notification bn;
    struct bb_media *media;
    struct delivery *d;
    size_t nd, left;
    struct event *ack_ev;
};

static void read_next(struct bb_stream *s);
static void run(struct delivery *d);
static void release_slot(struct delivery *d);

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
        for (int k = 0; k < 5; k++) {
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
    free(b->p);
    free(b);
    s->inflight--;
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

static void on_ack_timer(evutil_socket_t fd, short what, void *arg)
{
    ack(arg);
}

static void ack(struct batch *b)
{
    struct bb_stream *s = b->s;
    if (bb_conn_commandf(s->commands, on_ack, b, "XACK %s %s %s", s->conf->stream, s->cfg->group,
                         b->id) != BB_OK) {
        arm_ms(b->ack_ev, REDO_MS);
    }
}

/* A dead letter about the whole batch or one delivery of it (delivery may be NULL). */
static void dead_letter(struct batch *b, const char *reason, const char *detail,
                        const char *delivery)
{
    struct bb_stream *s = b->s;
    const char *argv[] = {"XADD",
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
                          s->cfg->name,
                          "delivery",
                          delivery ? delivery : ""};
    size_t len[17];
    for (int i = 0; i < 17; i++) {
        len[i] = i == 12 ? (b->p ? b->plen : 0) : strlen(argv[i]); /* p is binary */
    }
    int argc = delivery ? 17 : 15;
    if (bb_conn_command(s->commands, NULL, NULL, argc, argv, len) != BB_OK) {
        bb_error("dead letter not written: redis down", "stream=%s entry=%s reason=%s",
                 s->conf->stream, b->id, reason);
    }
}

/* The whole batch is unusable: dead letter, then ack. */
static void batch_dead(struct batch *b, const char *reason, const char *detail)
{
    bb_warn("batch to dead letters", "stream=%s entry=%s reason=%s", b->s->conf->stream, b->id,
            reason);
    b->s->stats.dead_batches++;
    dead_letter(b, reason, detail, NULL);
    ack(b);
}

/* ---- outcomes ---------------------------------------------------------------------------- */

static void receipt(struct delivery *d, Bb__Outcome outcome, const char *reason)
{
    struct bb_stream *s = d->b->s;
    if (outcome >= 1 && outcome <= 4) {
        s->stats.outcome[outcome]++;
    }
    char why[128];
    /* A plug-in's reason is short by contract; keep the receipt bounded anyway. */
    snprintf(why, sizeof(why), "%s", reason ? reason : "");
    Bb__Receipt r = BB__RECEIPT__INIT;
    r.schema_version = 1;
    r.delivery_id = d->id;
    r.channel = d->b->db->channel;
    r.outcome = outcome;
    r.reason = why;
    r.time_ms = bb_now_ms();
    r.attempts = d->attempt;
    uint8_t buf[512];
    size_t n = bb__receipt__get_packed_size(&r);
    if (n > sizeof(buf)) {
        return;
    }
    bb__receipt__pack(&r, buf);
    const char *argv[] = {"XADD", RECEIPTS_STREAM, "*", "p", (const char *)buf};
    size_t len[] = {4, strlen(RECEIPTS_STREAM), 1, 1, n};
    if (bb_conn_command(s->commands, NULL, NULL, 5, argv, len) != BB_OK) {
        bb_warn("receipt not written: redis down", "delivery=%s", d->id);
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
    release_slot(d);
    reason = reason && reason[0] ? reason : "";
    if (status == BB_SEND_OK) {
        receipt(d, BB__OUTCOME__OUTCOME_OK, reason);
        finish(d);
        return;
    }
    if (status == BB_SEND_RETRY) {
        int64_t wait =
            retry_after_s ? (int64_t)retry_after_s * 1000 : backoff_ms(s->cfg, d->attempt);
        if (wait > s->cfg->retry_max_ms) {
            wait = s->cfg->retry_max_ms;
        }
        int64_t spent = bb_mono_ms() - d->first_ms;
        if (d->attempt < (unsigned)s->cfg->max_attempts &&
            spent + wait <= s->cfg->retry_budget_ms) {
            receipt(d, BB__OUTCOME__OUTCOME_RETRY, reason);
            d->step = STEP_UNRECORD;
            /* Drop the record first, so a crash while waiting resends rather than loses. */
            run(d);
            arm_ms(d->timer, wait);
            return;
        }
        char detail[160];
        snprintf(detail, sizeof(detail), "attempts=%u last=%s", d->attempt, reason);
        receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, "retries_exhausted");
        dead_letter(d->b, "retries_exhausted", detail, d->id);
        finish(d);
        return;
    }
    /* PERMANENT, GONE, or a status this host does not know. */
    if (status == BB_SEND_GONE) {
        /* TODO: a DirectoryEvent removing the address; for now the log says so. */
        bb_warn("address gone; directory not updated", "channel=%s delivery=%s", s->conf->instance,
                d->id);
    }
    char detail[160];
    snprintf(detail, sizeof(detail), "attempts=%u status=%d", d->attempt, status);
    receipt(d, BB__OUTCOME__OUTCOME_PERMANENT, reason[0] ? reason : "permanent");
    dead_letter(d->b, reason[0] ? reason : "permanent", detail, d->id);
    finish(d);
}

static void send_one(struct delivery *d)
{
    struct bb_stream *s = d->b->s;
    d->attempt++;
    d->pub.attempt = d->attempt;
    d->sending = true;
    if (s->ch->send(s->pctx, &d->pub, on_sent, d) != 0 && d->sending) {
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
    while (s->wait_head && s->unconfirmed < (unsigned)s->cfg->max_unconfirmed) {
        struct delivery *w = s->wait_head;
        s->wait_head = w->next_wait;
        if (!s->wait_head) {
            s->wait_tail = NULL;
        }
        w->next_wait = NULL;
        run(w);
    }
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
    const char *locale = "nl", *screen = "";
    Bb__User *u = NULL;
    if (r->element[3]->type == REDIS_REPLY_STRING) {
        u = bb__user__unpack(NULL, r->element[3]->len, (const uint8_t *)r->element[3]->str);
        if (u && u->locale[0] && bb_utf8_is_valid(u->locale, strlen(u->locale))) {
            locale = u->locale;
        }
        if (u && bb_utf8_is_valid(u->screen_name, strlen(u->screen_name))) {
            screen = u->screen_name;
        }
    }
    free(d->fields[3]);
    free(d->fields[4]);
    d->fields[3] = strdup(locale);
    d->fields[4] = strdup(screen);
    if (u) {
        bb__user__free_unpacked(u, NULL);
    }
    for (int k = 0; k < 5; k++) {
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
    d->step = STEP_RECORD;
    run(d);
}

static void on_record(struct bb_conn *c, redisReply *r, void *priv)
{
    struct delivery *d = priv;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        release_slot(d);
        redo_later(d);
        return;
    }
    if (r->type == REDIS_REPLY_NIL) {
        release_slot(d);
        receipt(d, BB__OUTCOME__OUTCOME_SKIPPED_DUPLICATE, "already_sent");
        finish(d);
        return;
    }
    d->step = STEP_SEND;
    send_one(d);
}

static void on_unrecord(struct bb_conn *c, redisReply *r, void *priv)
{
    struct delivery *d = priv;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        /* Still waiting for the retry timer, or not: try again then. */
        if (!evtimer_pending(d->timer, NULL)) {
            redo_later(d);
        }
        return;
    }
    d->step = STEP_RECORD; /* the armed retry timer records and sends again */
}

static void run(struct delivery *d)
{
    struct bb_stream *s = d->b->s;
    int rc = BB_OK;
    switch (d->step) {
    case STEP_CONTACT:
        if (d->pub.recipient_kind == BB_RECIPIENT_GROUP) {
            /* A group's public account: its endpoint is the plug-in's configuration. */
            for (int k = 0; k < 5; k++) {
                d->fields[k] = strdup(k == 3 ? (d->b->bn.locale[0] ? d->b->bn.locale : "nl") : "");
            }
            d->contact.email = d->contact.push_token = d->contact.push_platform = "";
            d->contact.locale = d->fields[3] ? d->fields[3] : "nl";
            d->contact.screen_name = "";
            d->step = STEP_RECORD;
            run(d);
            return;
        }
        rc = bb_conn_commandf(s->commands, on_contact, d,
                              "HMGET bb:user:%" PRIu64 " email push_token push_platform u",
                              d->pub.recipient);
        break;
    case STEP_RECORD:
        if (!d->holds_slot && s->unconfirmed >= (unsigned)s->cfg->max_unconfirmed) {
            if (s->wait_tail) {
                s->wait_tail->next_wait = d;
            } else {
                s->wait_head = d;
            }
            s->wait_tail = d;
            return;
        }
        if (!d->holds_slot) {
            d->holds_slot = true;
            s->unconfirmed++;
        }
        rc = bb_conn_commandf(s->commands, on_record, d, "SET bb:sent:%s 1 NX PX %lld", d->id,
                              (long long)s->cfg->sent_ttl_ms);
        break;
    case STEP_UNRECORD:
        rc = bb_conn_commandf(s->commands, on_unrecord, d, "DEL bb:sent:%s", d->id);
        break;
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
    struct delivery *d = arg;
    if (d->step == STEP_UNRECORD) {
        /* The DEL never got through; try it, then this timer comes back. */
        run(d);
        arm_ms(d->timer, REDO_MS);
        return;
    }
    run(d);
}

/* ---- decoding ---------------------------------------------------------------------------- */

static bool notification_ok(const Bb__Notification *n)
{
    const char *strs[] = {n->report_id, n->status_id, n->locale, n->title,
                          n->text,      n->author,    n->cell,   n->group_name};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        if (!bb_utf8_is_valid(strs[i], strlen(strs[i]))) {
            return false;
        }
    }
    for (size_t i = 0; i < n->n_media; i++) {
        if (!n->media[i] || !bb_utf8_is_valid(n->media[i]->url, strlen(n->media[i]->url)) ||
            !bb_utf8_is_valid(n->media[i]->mime_type, strlen(n->media[i]->mime_type))) {
            return false;
        }
    }
    return true;
}

static void start_deliveries(struct batch *b)
{
    struct bb_stream *s = b->s;
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
    int64_t now = bb_mono_ms();
    for (size_t i = 0; i < b->nd; i++) {
        struct delivery *d = &b->d[i];
        d->b = b;
        d->first_ms = now;
        d->timer = evtimer_new(s->base, on_delivery_timer, d);
        if (!d->timer || !bb_delivery_id(d->id, sizeof(d->id), db->notification_key,
                                         (int)db->channel, db->recipients[i])) {
            bb_error("cannot set up a delivery; the batch stays pending", "entry=%s", b->id);
            b->left = SIZE_MAX; /* never acked by this process */
            return;
        }
        d->contact.struct_size = sizeof(d->contact);
        d->contact.unsubscribe_url = "";
        d->contact.endpoint = "";
        d->pub.struct_size = sizeof(d->pub);
        d->pub.delivery_id = d->id;
        d->pub.recipient = db->recipients[i];
        d->pub.recipient_kind = db->recipient_kind == BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP
                                    ? BB_RECIPIENT_GROUP
                                    : BB_RECIPIENT_USER;
        d->pub.n = &b->bn;
        d->pub.contact = &d->contact;
    }
    for (size_t i = 0; i < b->nd; i++) {
        run(&b->d[i]);
    }
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
    if (!notification_ok(b->n)) {
        batch_dead(b, "invalid_utf8", "notification");
        return;
    }
    const Bb__Notification *n = b->n;
    b->media = calloc(n->n_media ? n->n_media : 1, sizeof(*b->media));
    if (!b->media) {
        bb_error("out of memory for a batch; it stays pending", "entry=%s", b->id);
        return;
    }
    for (size_t i = 0; i < n->n_media; i++) {
        b->media[i] =
            (struct bb_media){n->media[i]->url, n->media[i]->mime_type, n->media[i]->publishable};
    }
    b->bn = (struct bb_notification){
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
        .media = b->media,
        .nmedia = n->n_media,
    };
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

/* ---- reading ----------------------------------------------------------------------------- */

static bool in_flight(const struct bb_stream *s, const char *id)
{
    for (const struct batch *b = s->batches; b; b = b->next) {
        if (strcmp(b->id, id) == 0) {
            return true;
        }
    }
    return false;
}

/* "r:{report id}" or "s:{status id}": printable ASCII without spaces, and
 * short enough for a delivery id. */
static bool key_is_valid(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > 80) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (key[i] < 0x21 || key[i] > 0x7e) {
            return false;
        }
    }
    return true;
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
    if (!key_is_valid(b->db->notification_key)) {
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
    argv[n++] = s->cfg->group;
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

static void on_claim_tick(evutil_socket_t fd, short what, void *arg)
{
    struct bb_stream *s = arg;
    arm_ms(s->claim_ev, s->cfg->claim_interval_ms);
    int64_t room = s->cfg->max_inflight - (int64_t)s->inflight;
    if (s->claiming || s->stopping || !s->group_ready || room <= 0) {
        return;
    }
    if (bb_conn_commandf(s->commands, on_claim, s, "XAUTOCLAIM %s %s %s %lld %s COUNT %lld",
                         s->conf->stream, s->cfg->group, s->cfg->name,
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
                     s->cfg->group);
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
                                const struct bb_chan_conf *conf, const struct bb_channel *ch,
                                void *plugin_ctx, struct bb_conn *commands)
{
    struct bb_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        return NULL;
    }
    s->base = base;
    s->cfg = cfg;
    s->conf = conf;
    s->ch = ch;
    s->pctx = plugin_ctx;
    s->commands = commands;
    s->pending_phase = true;
    snprintf(s->pending_from, sizeof(s->pending_from), "0");
    s->zdec = bb_zdec_new((size_t)cfg->max_payload);
    s->tick = event_new(base, -1, EV_PERSIST, on_tick, s);
    s->claim_ev = evtimer_new(base, on_claim_tick, s);
    snprintf(s->claim_cursor, sizeof(s->claim_cursor), "0-0");
    if (!s->zdec || !s->tick || !s->claim_ev) {
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
}

unsigned bb_stream_inflight(const struct bb_stream *s)
{
    return s->inflight;
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
