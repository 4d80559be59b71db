/* The router (see route.h). The hot loop is consider(): a bit test against
 * the per-thread "seen" bitmap, one 32-byte user record, a few compares.
 * Everything it needs per report (zone offsets, the hour) is computed once
 * before the loop. */
#include "route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "tz.h"

/* A set of slots, cleared in time proportional to what was set. */
struct bitset {
    uint64_t *w;
    uint32_t nw;
    uint32_t *touched; /* slots set, to clear after the report */
    uint32_t n, cap;
};

struct bb_router {
    struct bb_dir *dir;
    struct bb_dir_reader *reader;
    struct bitset seen;   /* users considered */
    struct bitset groups; /* groups expanded (cells of several precisions may name one) */
    struct bb_route_result res;
    /* per report */
    const struct Bb__Report *rep;
    struct bb_explain *ex;
    uint16_t catbit;
    uint8_t urgency;
    uint32_t hour;
    int64_t t_s;
    uint32_t minute_utc; /* minute of the UTC day */
    int32_t zone_off[BB_ZONES_MAX];
    uint8_t zone_ok[BB_ZONES_MAX];
    bool oom;
};

/* Adds slot; false if it was there already (or memory ran out). */
static inline bool bitset_add(struct bitset *b, uint32_t slot, bool *oom)
{
    uint32_t w = slot >> 6;
    if (__builtin_expect(w >= b->nw, 0)) {
        uint32_t nw = b->nw ? b->nw : 1024;
        while (nw <= w) {
            nw *= 2;
        }
        uint64_t *s = realloc(b->w, nw * sizeof(uint64_t));
        if (!s) {
            *oom = true;
            return false;
        }
        memset(s + b->nw, 0, (nw - b->nw) * sizeof(uint64_t));
        b->w = s;
        b->nw = nw;
    }
    uint64_t bit = 1ULL << (slot & 63);
    if (b->w[w] & bit) {
        return false;
    }
    if (__builtin_expect(b->n == b->cap, 0)) {
        uint32_t nc = b->cap ? b->cap * 2 : 4096;
        uint32_t *t = realloc(b->touched, nc * sizeof(*t));
        if (!t) {
            *oom = true;
            return false;
        }
        b->touched = t;
        b->cap = nc;
    }
    b->w[w] |= bit;
    b->touched[b->n++] = slot;
    return true;
}

static inline bool bitset_has(const struct bitset *b, uint32_t slot)
{
    uint32_t w = slot >> 6;
    return w < b->nw && (b->w[w] >> (slot & 63)) & 1;
}

static void bitset_clear(struct bitset *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        b->w[b->touched[i] >> 6] = 0;
    }
    b->n = 0;
}

static void bitset_free(struct bitset *b)
{
    free(b->w);
    free(b->touched);
}

static const char *const route_names[] = {"", "group", "area", "watch", "reporter", "follower"};
static const char *const verdict_names[] = {
    "notified",        "author",         "muted_author",  "muted_group",
    "policy_category", "policy_urgency", "policy_source", "outside_radius",
    "pref_category",   "pref_urgency",   "no_channel",
};
static const char *const channel_names[] = {"push", "email", "inbox", "digest", "social"};

const char *bb_route_kind_name(int kind)
{
    return kind > 0 && kind <= BB_ROUTE_FOLLOWER ? route_names[kind] : "?";
}

const char *bb_verdict_name(int v)
{
    return v >= 0 && v < BB_V_COUNT ? verdict_names[v] : "?";
}

const char *bb_channel_name(unsigned i)
{
    return i < BB_CHANNELS ? channel_names[i] : "?";
}

void bb_explain_reset(struct bb_explain *ex)
{
    ex->n = 0;
    ex->oom = false;
}

void bb_explain_free(struct bb_explain *ex)
{
    free(ex->lines);
    memset(ex, 0, sizeof(*ex));
}

static void explain(struct bb_router *r, uint64_t user, uint64_t group, int route, int verdict,
                    uint8_t channels, uint8_t notes)
{
    struct bb_explain *ex = r->ex;
    if (ex->n == ex->cap) {
        uint32_t nc = ex->cap ? ex->cap * 2 : 256;
        struct bb_explain_line *l = realloc(ex->lines, nc * sizeof(*l));
        if (!l) {
            ex->oom = true;
            return;
        }
        ex->lines = l;
        ex->cap = nc;
    }
    ex->lines[ex->n++] =
        (struct bb_explain_line){user, group, (uint8_t)route, (uint8_t)verdict, channels, notes};
}

struct bb_router *bb_router_new(struct bb_dir *dir)
{
    struct bb_router *r = calloc(1, sizeof(*r));
    if (!r) {
        return NULL;
    }
    r->dir = dir;
    r->reader = bb_dir_reader_new(dir);
    if (!r->reader) {
        free(r);
        return NULL;
    }
    return r;
}

void bb_router_free(struct bb_router *r)
{
    if (!r) {
        return;
    }
    bb_dir_reader_free(r->reader);
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            free(r->res.lists[c][l].ids);
        }
    }
    free(r->res.social.ids);
    bitset_free(&r->seen);
    bitset_free(&r->groups);
    free(r);
}

static bool rlist_push(struct bb_rlist *l, uint64_t id)
{
    if (l->n == l->cap) {
        uint32_t nc = l->cap ? l->cap * 2 : 64;
        uint64_t *ids = realloc(l->ids, nc * sizeof(*ids));
        if (!ids) {
            return false;
        }
        l->ids = ids;
        l->cap = nc;
    }
    l->ids[l->n++] = id;
    return true;
}

static inline bool mark(struct bb_router *r, uint32_t slot)
{
    return bitset_add(&r->seen, slot, &r->oom);
}

static inline bool is_seen(const struct bb_router *r, uint32_t slot)
{
    return bitset_has(&r->seen, slot);
}

static void reset(struct bb_router *r)
{
    bitset_clear(&r->seen);
    bitset_clear(&r->groups);
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        for (uint32_t used = r->res.used[c]; used; used &= used - 1) {
            r->res.lists[c][__builtin_ctz(used)].n = 0;
        }
        r->res.used[c] = 0;
    }
    r->res.social.n = 0;
    r->res.decisions = r->res.recipients = r->res.deliveries = 0;
    r->res.group_name[0] = '\0';
    memset(r->zone_ok, 0, sizeof(r->zone_ok));
    r->oom = false;
}

static bool in_quiet(struct bb_router *r, const struct bb_user *u)
{
    if (u->quiet_from == u->quiet_to) {
        return false;
    }
    if (!r->zone_ok[u->tz]) {
        r->zone_off[u->tz] = bb_tz_offset_s(bb_dir_zone(r->dir, u->tz), r->t_s);
        r->zone_ok[u->tz] = 1;
    }
    int m = ((int)r->minute_utc + r->zone_off[u->tz] / 60) % 1440;
    if (m < 0) {
        m += 1440;
    }
    if (u->quiet_from < u->quiet_to) {
        return m >= u->quiet_from && m < u->quiet_to;
    }
    return m >= u->quiet_from || m < u->quiet_to; /* across midnight */
}

/* The person's preferences decide the channels; the recipient lists get
 * the user once per channel. */
static void deliver(struct bb_router *r, uint32_t slot, const struct bb_user *u, int route,
                    uint64_t via, bool filter_interest)
{
    uint8_t ch, notes = 0;
    int verdict = BB_V_NOTIFIED;
    if (filter_interest && !(u->categories & r->catbit)) {
        verdict = BB_V_PREF_CATEGORY;
        goto out;
    }
    if (filter_interest && r->urgency < u->min_urgency) {
        verdict = BB_V_PREF_URGENCY;
        goto out;
    }
    ch = u->chan[r->urgency - 1];
    if ((ch & BB_CH_LOUD) && r->urgency != BB__URGENCY__URGENCY_IN_PROGRESS) {
        if (in_quiet(r, u)) {
            ch = (uint8_t)((ch & ~BB_CH_LOUD) | BB_CH_DIGEST);
            notes |= BB_NOTE_QUIET;
        } else if (u->max_per_hour && !bb_dir_cap_take(r->dir, slot, r->hour, u->max_per_hour)) {
            ch = (uint8_t)((ch & ~BB_CH_LOUD) | BB_CH_DIGEST);
            notes |= BB_NOTE_CAPPED;
        }
    }
    if (!ch) {
        verdict = BB_V_NO_CHANNEL;
        goto out;
    }
    r->res.recipients++;
    for (uint8_t bits = ch; bits; bits &= (uint8_t)(bits - 1)) {
        unsigned c = (unsigned)__builtin_ctz(bits);
        if (!rlist_push(&r->res.lists[c][u->locale], u->id)) {
            r->oom = true;
            return;
        }
        r->res.used[c] |= 1u << u->locale;
        r->res.deliveries++;
    }
out:
    if (r->ex) {
        explain(r, u->id, via, route, verdict, verdict == BB_V_NOTIFIED ? ch : 0, notes);
    }
}

static inline void consider(struct bb_router *r, uint32_t slot, int route, uint64_t via)
{
    r->res.decisions++;
    if (!mark(r, slot)) {
        return;
    }
    const struct bb_user *u = bb_dir_user_at(r->dir, slot);
    if (u) {
        deliver(r, slot, u, route, via, true);
    }
}

/* Marks users who must not get the report before any route runs. */
static void exclude(struct bb_router *r, const struct bb_slots *s, int verdict, uint64_t via)
{
    for (uint32_t i = 0; s && i < s->n; i++) {
        if (mark(r, s->v[i]) && r->ex) {
            const struct bb_user *u = bb_dir_user_at(r->dir, s->v[i]);
            if (u) {
                explain(r, u->id, via, 0, verdict, 0, 0);
            }
        }
    }
}

static int policy_verdict(const struct bb_router *r, const struct bb_group *g)
{
    const struct Bb__Report *rep = r->rep;
    if (!(g->categories & r->catbit)) {
        return BB_V_POLICY_CATEGORY;
    }
    if (r->urgency < g->min_urgency) {
        return BB_V_POLICY_URGENCY;
    }
    if (!(g->sources & (1u << rep->source))) {
        return BB_V_POLICY_SOURCE;
    }
    return BB_V_NOTIFIED;
}

/* Expands a group's members through one route. A group refused by its
 * policy reaches nobody; when explaining, its members are listed with the
 * rule at the end (if no other route reached them). */
static void expand_group(struct bb_router *r, const struct bb_group *g, int route,
                         const struct bb_group **refused, unsigned *nrefused)
{
    int v = policy_verdict(r, g);
    if (v != BB_V_NOTIFIED) {
        if (r->ex) {
            explain(r, 0, g->id, route, v, 0, 0);
            if (*nrefused < 64) {
                refused[(*nrefused)++] = g;
            }
        }
        return;
    }
    if (g->public_posting) {
        if (!rlist_push(&r->res.social, g->id)) {
            r->oom = true;
        }
    }
    const struct bb_slots *m = bb_group_members(g);
    const struct bb_slots *muted = bb_group_muted_by(g);
    if (!m) {
        return;
    }
    if (!muted) {
        for (uint32_t i = 0; i < m->n; i++) {
            consider(r, m->v[i], route, g->id);
        }
        return;
    }
    for (uint32_t i = 0; i < m->n; i++) {
        if (!bb_slots_has(muted, m->v[i])) {
            consider(r, m->v[i], route, g->id);
        } else if (r->ex && !is_seen(r, m->v[i])) {
            const struct bb_user *u = bb_dir_user_at(r->dir, m->v[i]);
            if (u) {
                explain(r, u->id, g->id, route, BB_V_MUTED_GROUP, 0, 0);
            }
        }
    }
}

static void begin(struct bb_router *r, struct bb_explain *ex, int64_t time_ms, int category,
                  int urgency)
{
    reset(r);
    r->ex = ex;
    if (ex) {
        bb_explain_reset(ex);
    }
    r->catbit = (uint16_t)(category > 0 && category <= BB_CATEGORY_MAX ? 1u << category : 0);
    r->urgency = (uint8_t)(urgency >= 1 && urgency <= 3 ? urgency : 1);
    r->t_s = time_ms / 1000;
    r->hour = (uint32_t)(r->t_s / 3600);
    int64_t day_s = r->t_s % 86400;
    r->minute_utc = (uint32_t)((day_s < 0 ? day_s + 86400 : day_s) / 60);
    r->res.precision = (uint8_t)0;
}

int bb_route_report(struct bb_router *r, const Bb__Report *rep, struct bb_explain *ex,
                    const struct bb_route_result **out)
{
    begin(r, ex, rep->time_ms, rep->category, rep->urgency);
    r->rep = rep;
    const struct bb_group *refused[64];
    unsigned nrefused = 0;

    bb_dir_read_begin(r->reader);
    uint32_t author_slot;
    const struct bb_user *author = bb_dir_user_find(r->dir, rep->author_id, &author_slot);
    if (author && mark(r, author_slot) && ex) {
        explain(r, author->id, 0, 0, BB_V_AUTHOR, 0, 0);
    }
    exclude(r, bb_dir_muted_author(r->dir, rep->author_id), BB_V_MUTED_AUTHOR, 0);

    uint32_t gslot;
    const struct bb_group *own =
        rep->group_id ? bb_dir_group_find(r->dir, rep->group_id, &gslot) : NULL;
    if (rep->group_id && !own) {
        bb_dir_read_end(r->reader);
        return BB_ENOTFOUND;
    }
    if (own) {
        bitset_add(&r->groups, gslot, &r->oom);
        r->res.precision = own->precision;
        snprintf(r->res.group_name, sizeof(r->res.group_name), "%s", own->name);
        exclude(r, bb_group_muted_by(own), BB_V_MUTED_GROUP, own->id);
        expand_group(r, own, BB_ROUTE_GROUP, refused, &nrefused);
    }

    /* One cell lookup per indexed precision serves routes (b) and (c). */
    bb_cell finest = bb_geohash_encode(rep->lat, rep->lon, BB_GEOHASH_MAX_PRECISION);
    uint32_t precisions = bb_dir_cell_precisions(r->dir);
    const struct bb_cellent *cells[BB_GEOHASH_MAX_PRECISION + 1];
    unsigned ncells = 0;
    for (uint32_t p = precisions; p; p &= p - 1) {
        const struct bb_cellent *c =
            bb_dir_cell_find(r->dir, bb_cell_parent(finest, (unsigned)__builtin_ctz(p)));
        if (c) {
            cells[ncells++] = c;
        }
    }
    for (unsigned i = 0; i < ncells; i++) {
        const struct bb_slots *gs = bb_cell_groups(cells[i]);
        for (uint32_t j = 0; gs && j < gs->n; j++) {
            if (!bitset_add(&r->groups, gs->v[j], &r->oom)) {
                continue; /* reached through another cell already */
            }
            const struct bb_group *g = bb_dir_group_at(r->dir, gs->v[j]);
            if (g && g != own) {
                expand_group(r, g, BB_ROUTE_AREA, refused, &nrefused);
            }
        }
    }
    float lat = (float)rep->lat, lon = (float)rep->lon;
    for (unsigned i = 0; i < ncells; i++) {
        const struct bb_slots *us = bb_cell_users(cells[i]);
        for (uint32_t j = 0; us && j < us->n; j++) {
            uint32_t slot = us->v[j];
            if (is_seen(r, slot)) {
                r->res.decisions++;
                continue;
            }
            const struct bb_user *u = bb_dir_user_at(r->dir, slot);
            if (!u) {
                continue;
            }
            if (bb_distance_fast_m(lat, lon, u->lat, u->lon) > (float)u->radius_m) {
                r->res.decisions++;
                if (ex) {
                    explain(r, u->id, 0, BB_ROUTE_WATCH, BB_V_OUTSIDE_RADIUS, 0, 0);
                }
                continue;
            }
            consider(r, slot, BB_ROUTE_WATCH, 0);
        }
    }
    /* Members of refused groups nobody reached: say why they got nothing. */
    for (unsigned i = 0; i < nrefused; i++) {
        int v = policy_verdict(r, refused[i]);
        const struct bb_slots *m = bb_group_members(refused[i]);
        for (uint32_t j = 0; m && j < m->n; j++) {
            if (mark(r, m->v[j])) {
                const struct bb_user *u = bb_dir_user_at(r->dir, m->v[j]);
                if (u) {
                    explain(r, u->id, refused[i]->id,
                            refused[i] == own ? BB_ROUTE_GROUP : BB_ROUTE_AREA, v, 0, 0);
                }
            }
        }
    }
    bb_dir_read_end(r->reader);
    if (!r->res.precision) {
        r->res.precision = (uint8_t)bb_dir_default_precision(r->dir);
    }
    *out = &r->res;
    return r->oom ? BB_ENOMEM : BB_OK;
}

int bb_route_status(struct bb_router *r, const Bb__ReportStatus *st, struct bb_explain *ex,
                    const struct bb_route_result **out)
{
    begin(r, ex, st->time_ms, st->category, st->urgency ? st->urgency : 1);
    r->rep = NULL;
    bb_dir_read_begin(r->reader);
    uint32_t slot;
    const struct bb_user *u;
    if (st->reporter_id && (u = bb_dir_user_find(r->dir, st->reporter_id, &slot)) &&
        mark(r, slot)) {
        r->res.decisions++;
        deliver(r, slot, u, BB_ROUTE_REPORTER, 0, false);
    }
    const struct bb_slots *f = bb_dir_followers(r->dir, st->report_id);
    for (uint32_t i = 0; f && i < f->n; i++) {
        r->res.decisions++;
        if (mark(r, f->v[i]) && (u = bb_dir_user_at(r->dir, f->v[i]))) {
            /* They asked for this report: only channels, quiet hours and cap apply. */
            deliver(r, f->v[i], u, BB_ROUTE_FOLLOWER, 0, false);
        }
    }
    bb_dir_read_end(r->reader);
    r->res.precision = (uint8_t)bb_dir_default_precision(r->dir);
    *out = &r->res;
    return r->oom ? BB_ENOMEM : BB_OK;
}
