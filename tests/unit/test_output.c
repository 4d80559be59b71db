/* Unit tests for broker/output.c: a routed report (or status update) becomes DeliveryBatch
 * entries; each is decoded again here, with its zstd Notification, and checked against the
 * routing result: recipients, channels, locales, batch numbering, and what readers and public
 * accounts are shown (anonymity, coarse location, no internal author id, stripped social
 * posts). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "geohash.h"
#include "output.h"
#include "report.pb-c.h"
#include "route.h"
#include "wire.h"

#define P_LAT 51.69781234 /* 's-Hertogenbosch, not a cell centre */
#define P_LON 5.30371234
#define AUTHOR_ID 0x5a5a123456789abcull
#define AUTHOR_NAME "Henk de Vries"
#define SECRET_TEXT "Twee mannen bij de achterdeur van nummer 12"
#define PRIVATE_URL "https://img.example/private-b.jpg"
#define PUBLIC_URL "https://img.example/public-a.jpg"
#define OWN_GROUP 55
#define AREA_GROUP 56

static const struct bb_dir_params params = {
    .default_precision = 7,
    .watch_max_cells = 8,
    .max_radius_m = 5000,
};

/* ---- fixture ----------------------------------------------------------------------------- */

struct fx {
    struct bb_dir *dir;
    struct bb_router *r;
    struct bb_encoder *enc;
    struct bb_zdec *zd;
    struct bb_out out;
    unsigned nusers;
};

static void add_user(struct bb_dir *dir, uint64_t id, const char *locale, unsigned recent_mask)
{
    Bb__User u = BB__USER__INIT;
    Bb__WatchArea w = BB__WATCH_AREA__INIT;
    Bb__Preferences p = BB__PREFERENCES__INIT;
    Bb__ChannelSet cs = BB__CHANNEL_SET__INIT;
    Bb__Channel ch[4];
    char why[64] = "";
    u.id = id;
    w.lat = P_LAT + 0.001;
    w.lon = P_LON;
    w.radius_m = 800;
    u.watch = &w;
    u.locale = (char *)locale;
    if (recent_mask) {
        for (unsigned c = 0; c < 4; c++) {
            if (recent_mask & (1u << c)) {
                ch[cs.n_channels++] = (Bb__Channel)(c + 1);
            }
        }
        cs.channels = ch;
        p.recent = &cs;
        u.prefs = &p;
    }
    assert_int_equal(bb_dir_upsert_user(dir, &u, why, sizeof(why)), BB_OK);
}

static void add_group(struct bb_dir *dir, uint64_t id, const char *name, const char *cell,
                      unsigned precision)
{
    Bb__Group g = BB__GROUP__INIT;
    Bb__Policy p = BB__POLICY__INIT;
    char *cells[1] = {(char *)cell};
    char why[64] = "";
    p.public_posting = true;
    g.id = id;
    g.name = (char *)name;
    g.cells = cells;
    g.n_cells = cell ? 1 : 0;
    g.policy = &p;
    g.location_precision = precision;
    assert_int_equal(bb_dir_upsert_group(dir, &g, why, sizeof(why)), BB_OK);
}

/* 7 Dutch, 4 English, 2 German readers (one German by e-mail only), the author, and the
 * report's own group (public, shown at own_precision) plus a public area group. */
static struct fx *fx_new(unsigned batch_size, unsigned own_precision)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->dir = bb_dir_new(&params);
    assert_non_null(f->dir);
    char cell[13];
    bb_geohash_format(bb_geohash_encode(P_LAT, P_LON, 5), cell);
    add_group(f->dir, OWN_GROUP, "Rosmalen-Noord", NULL, own_precision);
    add_group(f->dir, AREA_GROUP, "Den Bosch-Oost", cell, 0);
    uint64_t id = 1;
    for (int i = 0; i < 7; i++) {
        add_user(f->dir, id++, "nl", 0);
    }
    for (int i = 0; i < 4; i++) {
        add_user(f->dir, id++, "en", 0);
    }
    add_user(f->dir, id++, "de", 0);
    add_user(f->dir, id++, "de", BB_CH_EMAIL);
    f->nusers = (unsigned)id - 1;
    add_user(f->dir, AUTHOR_ID, "nl", 0);
    char why[64];
    assert_int_equal(bb_dir_add_member(f->dir, AUTHOR_ID, OWN_GROUP, why, sizeof(why)), BB_OK);
    assert_int_equal(bb_dir_add_member(f->dir, 1, OWN_GROUP, why, sizeof(why)), BB_OK);
    f->r = bb_router_new(f->dir);
    f->enc = bb_encoder_new(3, batch_size);
    f->zd = bb_zdec_new(1 << 20);
    assert_non_null(f->r);
    assert_non_null(f->enc);
    assert_non_null(f->zd);
    return f;
}

static void fx_free(struct fx *f)
{
    bb_dir_reclaim_all(f->dir);
    bb_out_free(&f->out);
    bb_zdec_free(f->zd);
    bb_encoder_free(f->enc);
    bb_router_free(f->r);
    bb_dir_free(f->dir);
    free(f);
}

static Bb__Media media_pub = {PROTOBUF_C_MESSAGE_INIT(&bb__media__descriptor), PUBLIC_URL,
                              "image/jpeg", 1};
static Bb__Media media_priv = {PROTOBUF_C_MESSAGE_INIT(&bb__media__descriptor), PRIVATE_URL,
                               "image/jpeg", 0};
static Bb__Media *media[] = {&media_priv, &media_pub};

static Bb__Report the_report(Bb__Anonymity anonymity)
{
    Bb__Report r = BB__REPORT__INIT;
    r.schema_version = 1;
    r.id = "r-abc";
    r.time_ms = 1800000000000LL;
    r.author_id = AUTHOR_ID;
    r.author_screen_name = AUTHOR_NAME;
    r.group_id = OWN_GROUP;
    r.lat = P_LAT;
    r.lon = P_LON;
    r.category = BB__CATEGORY__CATEGORY_BURGLARY;
    r.urgency = BB__URGENCY__URGENCY_RECENT;
    r.source = BB__SOURCE__SOURCE_RESIDENT;
    r.text = SECRET_TEXT;
    r.media = media;
    r.n_media = 2;
    r.anonymity = anonymity;
    r.locale = "nl";
    return r;
}

/* ---- decoding helpers -------------------------------------------------------------------- */

static bool contains(const uint8_t *hay, size_t n, const void *needle, size_t m)
{
    for (size_t i = 0; m && i + m <= n; i++) {
        if (memcmp(hay + i, needle, m) == 0) {
            return true;
        }
    }
    return false;
}

static size_t varint(uint64_t v, uint8_t *out)
{
    size_t n = 0;
    do {
        out[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return n;
}

/* No trace of the author's internal id: neither its varint, nor its 8 raw bytes, nor its
 * decimal form. */
static void assert_no_author_id(const uint8_t *p, size_t n)
{
    uint8_t v[10], raw[8];
    char dec[24];
    size_t vn = varint(AUTHOR_ID, v);
    uint64_t id = AUTHOR_ID;
    memcpy(raw, &id, 8);
    snprintf(dec, sizeof(dec), "%llu", (unsigned long long)AUTHOR_ID);
    assert_false(contains(p, n, v, vn));
    assert_false(contains(p, n, raw, 8));
    assert_false(contains(p, n, dec, strlen(dec)));
}

static Bb__Notification *decode_notification(struct fx *f, const Bb__DeliveryBatch *b)
{
    const uint8_t *raw;
    size_t rawlen;
    assert_int_equal(bb_zdec_decompress(f->zd, NULL, b->notification_zstd.data,
                                        b->notification_zstd.len, &raw, &rawlen),
                     BB_OK);
    assert_no_author_id(raw, rawlen);
    Bb__Notification *n = bb__notification__unpack(NULL, rawlen, raw);
    assert_non_null(n);
    return n;
}

/* One (channel, locale) stream of batches, reassembled. */
struct stream {
    unsigned channel;
    char locale[16];
    uint64_t ids[1024];
    uint32_t n;
    uint32_t count;    /* batch_count, the same in every batch */
    uint32_t seen;     /* batches seen */
    uint64_t idx_mask; /* batch indexes seen (< 64) */
};

struct decoded {
    struct stream s[64];
    unsigned ns;
    unsigned entries;
    uint32_t deliveries;
};

static struct stream *stream_for(struct decoded *d, unsigned channel, const char *locale)
{
    for (unsigned i = 0; i < d->ns; i++) {
        if (d->s[i].channel == channel && strcmp(d->s[i].locale, locale) == 0) {
            return &d->s[i];
        }
    }
    assert_true(d->ns < 64);
    struct stream *s = &d->s[d->ns++];
    memset(s, 0, sizeof(*s));
    s->channel = channel;
    snprintf(s->locale, sizeof(s->locale), "%s", locale);
    return s;
}

typedef void (*notification_check)(struct fx *f, const Bb__DeliveryBatch *b,
                                   const Bb__Notification *n, void *ctx);

/* Decodes every entry of f->out, checks the framing, and hands each Notification to check. */
static void decode_all(struct fx *f, unsigned batch_size, const char *key, int64_t source_ms,
                       struct decoded *d, notification_check check, void *ctx)
{
    memset(d, 0, sizeof(*d));
    size_t end = 0;
    for (uint32_t i = 0; i < f->out.n; i++) {
        const struct bb_out_entry *e = &f->out.e[i];
        assert_true(e->off + e->len <= f->out.len);
        assert_true(e->off >= end); /* entries do not overlap */
        end = e->off + e->len;
        const uint8_t *p = f->out.buf + e->off;
        Bb__DeliveryBatch *b = bb__delivery_batch__unpack(NULL, e->len, p);
        assert_non_null(b);
        assert_int_equal(b->schema_version, 1);
        assert_int_equal(b->channel, e->channel + 1);
        assert_int_equal(b->n_recipients, e->recipients);
        assert_true(b->n_recipients >= 1 && b->n_recipients <= batch_size);
        assert_string_equal(b->notification_key, key);
        assert_int_equal(b->source_time_ms, source_ms);
        assert_int_equal(b->recipient_kind, e->channel == 4
                                                ? BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP
                                                : BB__RECIPIENT_KIND__RECIPIENT_KIND_USER);
        assert_no_author_id(p, e->len);

        struct stream *s = stream_for(d, e->channel, b->locale);
        if (s->seen == 0) {
            s->count = b->batch_count;
        }
        assert_int_equal(b->batch_count, s->count);
        assert_true(b->batch_index < s->count && b->batch_index < 64);
        assert_false(s->idx_mask & (1ull << b->batch_index));
        s->idx_mask |= 1ull << b->batch_index;
        s->seen++;
        for (size_t k = 0; k < b->n_recipients; k++) {
            assert_true(s->n < 1024);
            s->ids[s->n++] = b->recipients[k];
        }
        d->deliveries += (uint32_t)b->n_recipients;

        Bb__Notification *n = decode_notification(f, b);
        assert_int_equal(n->schema_version, 1);
        assert_string_equal(n->locale, b->locale);
        check(f, b, n, ctx);
        bb__notification__free_unpacked(n, NULL);
        bb__delivery_batch__free_unpacked(b, NULL);
        d->entries++;
    }
    assert_int_equal(d->deliveries, f->out.deliveries);
    for (unsigned i = 0; i < d->ns; i++) {
        const struct stream *s = &d->s[i];
        assert_int_equal(s->count, (s->n + batch_size - 1) / batch_size);
        assert_int_equal(s->seen, s->count);
    }
}

/* The decoded streams carry exactly the router's lists. */
static void assert_streams_match(struct fx *f, const struct decoded *d,
                                 const struct bb_route_result *res)
{
    unsigned lists = 0;
    for (unsigned c = 0; c < BB_CHANNELS - 1; c++) {
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            const struct bb_rlist *list = &res->lists[c][l];
            if (!list->n) {
                continue;
            }
            lists++;
            const struct stream *s = NULL;
            for (unsigned i = 0; i < d->ns; i++) {
                if (d->s[i].channel == c &&
                    strcmp(d->s[i].locale, bb_dir_locale_name(f->dir, l)) == 0) {
                    s = &d->s[i];
                }
            }
            assert_non_null(s);
            assert_int_equal(s->n, list->n);
            /* Batches may arrive in any order; compare as sets. */
            for (uint32_t k = 0; k < list->n; k++) {
                bool found = false;
                for (uint32_t j = 0; j < s->n && !found; j++) {
                    found = s->ids[j] == list->ids[k];
                }
                assert_true(found);
            }
        }
    }
    unsigned social = res->social.n ? 1 : 0;
    assert_int_equal(d->ns, lists + social);
}

/* ---- what readers are shown -------------------------------------------------------------- */

struct report_expect {
    bool anonymous;
    unsigned precision;
    unsigned social_n;
};

static const char *expected_title(const char *locale)
{
    if (strcmp(locale, "en") == 0) {
        return "Burglary";
    }
    if (strcmp(locale, "de") == 0) {
        return "Einbruch";
    }
    return "Inbraak";
}

static void check_cell(const Bb__Notification *n, unsigned precision)
{
    char want[13];
    bb_cell c = bb_geohash_encode(P_LAT, P_LON, precision);
    bb_geohash_format(c, want);
    assert_string_equal(n->cell, want);
    double lat, lon;
    bb_cell_center(c, &lat, &lon);
    assert_true(n->lat == lat && n->lon == lon);
    assert_true(n->lat != P_LAT && n->lon != P_LON);
}

static void check_report_notification(struct fx *f, const Bb__DeliveryBatch *b,
                                      const Bb__Notification *n, void *ctx)
{
    const struct report_expect *x = ctx;
    assert_int_equal(n->kind, BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT);
    assert_string_equal(n->report_id, "r-abc");
    assert_string_equal(n->status_id, "");
    assert_int_equal(n->time_ms, 1800000000000LL);
    assert_int_equal(n->category, BB__CATEGORY__CATEGORY_BURGLARY);
    assert_int_equal(n->urgency, BB__URGENCY__URGENCY_RECENT);
    assert_int_equal(b->urgency, BB__URGENCY__URGENCY_RECENT);
    assert_int_equal(n->source, BB__SOURCE__SOURCE_RESIDENT);
    assert_string_equal(n->group_name, "Rosmalen-Noord");
    if (b->channel == BB__CHANNEL__CHANNEL_SOCIAL) {
        /* Public accounts: no text, no author, only publishable media, at most ~1 km. */
        assert_string_equal(b->locale, "nl");
        assert_string_equal(n->title, "Inbraak");
        assert_string_equal(n->text, "");
        assert_string_equal(n->author, "");
        assert_true(n->anonymous);
        assert_int_equal(n->n_media, 1);
        assert_string_equal(n->media[0]->url, PUBLIC_URL);
        assert_true(n->media[0]->publishable);
        unsigned p = x->precision < 6 ? x->precision : 6;
        assert_true(strlen(n->cell) <= 6);
        check_cell(n, p);
        assert_true(b->n_recipients <= x->social_n);
        return;
    }
    assert_string_equal(n->title, expected_title(b->locale));
    assert_string_equal(n->text, SECRET_TEXT);
    assert_int_equal(n->n_media, 2);
    assert_int_equal(n->anonymous, x->anonymous);
    assert_string_equal(n->author, x->anonymous ? "" : AUTHOR_NAME);
    check_cell(n, x->precision);
    for (size_t k = 0; k < b->n_recipients; k++) {
        assert_true(b->recipients[k] >= 1 && b->recipients[k] <= f->nusers);
    }
}

static const struct {
    const char *name;
    Bb__Anonymity anonymity;
    bool anonymous;
    unsigned batch_size;
    unsigned own_precision;
} report_cases[] = {
    {"neighbour, batches of 3, precision 9", BB__ANONYMITY__ANONYMITY_NEIGHBOUR, true, 3, 9},
    {"screen name, batches of 2, precision 6", BB__ANONYMITY__ANONYMITY_SCREEN_NAME, false, 2, 6},
    {"unspecified is anonymous, batches of 256", BB__ANONYMITY__ANONYMITY_UNSPECIFIED, true, 256,
     7},
    {"screen name, batches of 1, precision 4", BB__ANONYMITY__ANONYMITY_SCREEN_NAME, false, 1, 4},
};

static void test_encode_report(void **state)
{
    for (size_t i = 0; i < sizeof(report_cases) / sizeof(report_cases[0]); i++) {
        struct fx *f = fx_new(report_cases[i].batch_size, report_cases[i].own_precision);
        Bb__Report rep = the_report(report_cases[i].anonymity);
        const struct bb_route_result *res;
        assert_int_equal(bb_route_report(f->r, &rep, NULL, &res), BB_OK);
        assert_int_equal(res->recipients, f->nusers); /* everyone but the author */
        assert_int_equal(res->social.n, 2);
        assert_int_equal(bb_encode_report(f->enc, f->dir, &rep, res, 1234, &f->out), BB_OK);
        assert_int_equal(f->out.deliveries, res->deliveries + res->social.n);
        assert_true(f->out.raw_bytes > 0 && f->out.zstd_bytes > 0);

        struct report_expect x = {report_cases[i].anonymous, report_cases[i].own_precision, 2};
        struct decoded d;
        decode_all(f, report_cases[i].batch_size, "r:r-abc", 1234, &d, check_report_notification,
                   &x);
        assert_streams_match(f, &d, res);
        /* push nl/en/de, e-mail de, inbox nl/en/de, social */
        assert_int_equal(d.ns, 8);
        const struct stream *soc = stream_for(&d, 4, "nl");
        assert_int_equal(soc->n, 2);
        assert_true((soc->ids[0] == OWN_GROUP && soc->ids[1] == AREA_GROUP) ||
                    (soc->ids[1] == OWN_GROUP && soc->ids[0] == AREA_GROUP));
        /* Nothing of the author anywhere, nor their name when anonymous. */
        assert_no_author_id(f->out.buf, f->out.len);
        fx_free(f);
    }
}

/* A second report appended to the same bb_out, then a reset. */
static void test_out_append_and_reset(void **state)
{
    struct fx *f = fx_new(4, 7);
    Bb__Report rep = the_report(BB__ANONYMITY__ANONYMITY_NEIGHBOUR);
    const struct bb_route_result *res;
    assert_int_equal(bb_route_report(f->r, &rep, NULL, &res), BB_OK);
    assert_int_equal(bb_encode_report(f->enc, f->dir, &rep, res, 1, &f->out), BB_OK);
    uint32_t n1 = f->out.n, dl1 = f->out.deliveries;
    size_t len1 = f->out.len;
    assert_int_equal(bb_encode_report(f->enc, f->dir, &rep, res, 1, &f->out), BB_OK);
    assert_int_equal(f->out.n, 2 * n1);
    assert_int_equal(f->out.deliveries, 2 * dl1);
    assert_int_equal(f->out.len, 2 * len1);
    assert_memory_equal(f->out.buf, f->out.buf + len1, len1); /* deterministic */
    bb_out_reset(&f->out);
    assert_int_equal(f->out.n, 0);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(f->out.deliveries, 0);
    fx_free(f);
}

/* Many recipients: every batch full but the last, none lost, none twice. */
static void test_large_fanout_batches(void **state)
{
    static const unsigned sizes[] = {1, 7, 256, 10000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct fx *f = fx_new(sizes[i], 7);
        for (uint64_t id = 1000; id < 1700; id++) {
            add_user(f->dir, id, "nl", 0);
        }
        Bb__Report rep = the_report(BB__ANONYMITY__ANONYMITY_NEIGHBOUR);
        rep.group_id = 0;
        const struct bb_route_result *res;
        assert_int_equal(bb_route_report(f->r, &rep, NULL, &res), BB_OK);
        assert_int_equal(bb_encode_report(f->enc, f->dir, &rep, res, 1, &f->out), BB_OK);
        uint32_t per_stream[BB_CHANNELS] = {0}, full[BB_CHANNELS] = {0};
        uint64_t sum = 0;
        for (uint32_t k = 0; k < f->out.n; k++) {
            const struct bb_out_entry *e = &f->out.e[k];
            Bb__DeliveryBatch *b = bb__delivery_batch__unpack(NULL, e->len, f->out.buf + e->off);
            assert_non_null(b);
            if (strcmp(b->locale, "nl") == 0 && e->channel == 0) {
                per_stream[0]++;
                full[0] += b->n_recipients == sizes[i];
                for (size_t j = 0; j < b->n_recipients; j++) {
                    sum += b->recipients[j];
                }
            }
            bb__delivery_batch__free_unpacked(b, NULL);
        }
        uint32_t n = res->lists[0][0].n;
        uint64_t want = 0;
        for (uint32_t j = 0; j < n; j++) {
            want += res->lists[0][0].ids[j];
        }
        assert_true(n > 700);
        assert_int_equal(per_stream[0], (n + sizes[i] - 1) / sizes[i]);
        assert_int_equal(full[0], n / sizes[i]);
        assert_int_equal(sum, want);
        fx_free(f);
    }
}

/* ---- status updates ---------------------------------------------------------------------- */

static void check_status_notification(struct fx *f, const Bb__DeliveryBatch *b,
                                      const Bb__Notification *n, void *ctx)
{
    assert_int_equal(n->kind, BB__NOTIFICATION_KIND__NOTIFICATION_KIND_STATUS);
    assert_string_equal(n->report_id, "r-abc");
    assert_string_equal(n->status_id, "st-1");
    assert_int_equal(n->status, BB__STATUS__STATUS_SUSPECT_ARRESTED);
    assert_string_equal(n->title, strcmp(b->locale, "en") == 0 ? "Suspect arrested"
                                                               : "Verdachte aangehouden");
    assert_string_equal(n->text, "Eén persoon aangehouden");
    assert_true(n->anonymous);
    assert_string_equal(n->author, "");
    assert_int_equal(n->urgency, BB__URGENCY__URGENCY_INFORMATIONAL);
    assert_int_equal(b->urgency, BB__URGENCY__URGENCY_INFORMATIONAL);
    assert_int_not_equal(b->channel, BB__CHANNEL__CHANNEL_SOCIAL);
}

static void test_encode_status(void **state)
{
    struct fx *f = fx_new(2, 7);
    char why[64];
    assert_int_equal(bb_dir_add_follow(f->dir, 2, "r-abc", why, sizeof(why)), BB_OK);
    assert_int_equal(bb_dir_add_follow(f->dir, 9, "r-abc", why, sizeof(why)), BB_OK); /* en */
    Bb__ReportStatus st = BB__REPORT_STATUS__INIT;
    st.schema_version = 1;
    st.id = "st-1";
    st.report_id = "r-abc";
    st.time_ms = 1800000100000LL;
    st.status = BB__STATUS__STATUS_SUSPECT_ARRESTED;
    st.text = "Eén persoon aangehouden";
    st.source = BB__SOURCE__SOURCE_POLICE;
    st.reporter_id = AUTHOR_ID; /* the reporter hears back, but the id never leaves */
    st.category = BB__CATEGORY__CATEGORY_BURGLARY;
    const struct bb_route_result *res;
    assert_int_equal(bb_route_status(f->r, &st, NULL, &res), BB_OK);
    assert_int_equal(res->recipients, 3);
    assert_int_equal(bb_encode_status(f->enc, f->dir, &st, res, 99, &f->out), BB_OK);
    struct decoded d;
    memset(&d, 0, sizeof(d));
    /* The reporter is a recipient here: its id is in a batch, by design. Check the rest. */
    for (uint32_t i = 0; i < f->out.n; i++) {
        const struct bb_out_entry *e = &f->out.e[i];
        Bb__DeliveryBatch *b = bb__delivery_batch__unpack(NULL, e->len, f->out.buf + e->off);
        assert_non_null(b);
        assert_string_equal(b->notification_key, "s:st-1");
        assert_int_equal(b->source_time_ms, 99);
        struct stream *s = stream_for(&d, e->channel, b->locale);
        for (size_t k = 0; k < b->n_recipients; k++) {
            s->ids[s->n++] = b->recipients[k];
        }
        Bb__Notification *n = decode_notification(f, b);
        check_status_notification(f, b, n, NULL);
        bb__notification__free_unpacked(n, NULL);
        bb__delivery_batch__free_unpacked(b, NULL);
    }
    assert_streams_match(f, &d, res);
    assert_int_equal(f->out.deliveries, res->deliveries);
    fx_free(f);
}

static void test_stream_names_and_titles(void **state)
{
    static const char *const want[] = {"bb:out:push", "bb:out:email", "bb:out:inbox",
                                       "bb:out:digest", "bb:out:social"};
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        assert_string_equal(bb_out_stream(c), want[c]);
    }
    assert_string_equal(bb_out_stream(BB_CHANNELS), "bb:out:unknown");
    assert_string_equal(bb_title_category("nl", BB__CATEGORY__CATEGORY_FIRE), "Brand");
    assert_string_equal(bb_title_category("en-GB", BB__CATEGORY__CATEGORY_FIRE), "Fire");
    assert_string_equal(bb_title_category("fr", BB__CATEGORY__CATEGORY_BURGLARY), "Inbraak");
    assert_string_equal(bb_title_category("en", 99), "Report");
    assert_string_equal(bb_title_status("de", BB__STATUS__STATUS_RESOLVED), "Gelöst");
    assert_string_equal(bb_title_status("en", -1), "Update");
}

int main(void)
{
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_report),
        cmocka_unit_test(test_out_append_and_reset),
        cmocka_unit_test(test_large_fanout_batches),
        cmocka_unit_test(test_encode_status),
        cmocka_unit_test(test_stream_names_and_titles),
    };
    /* clang-format on */
    /* BB_TEST_FILTER=pattern runs only the matching tests (e.g. one at a time under ASan). */
    if (getenv("BB_TEST_FILTER")) {
        cmocka_set_test_filter(getenv("BB_TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
