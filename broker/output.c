/* Encoding routed reports into DeliveryBatch entries (see output.h). */
#include "output.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "delivery.pb-c.h"
#include "wire.h"

#define SOCIAL_MAX_PRECISION 6 /* public posts never show more than ~1 km */

struct bb_encoder {
    struct bb_zenc *z;
    struct bb_zdict *dict;
    unsigned batch_size;
    uint8_t *raw; /* packed Notification */
    size_t rawcap;
    uint8_t *zbuf; /* compressed Notification, one per locale */
    size_t zcap;
};

static const char *const streams[BB_CHANNELS] = {"bb:out:push", "bb:out:email", "bb:out:inbox",
                                                 "bb:out:digest", "bb:out:social"};

const char *bb_out_stream(unsigned ch)
{
    return ch < BB_CHANNELS ? streams[ch] : "bb:out:unknown";
}

/* Titles by locale; a locale without a table falls back to Dutch. Indexed
 * by Category / Status number. */
struct title_table {
    const char *locale;
    const char *category[11];
    const char *status[8];
};

static const struct title_table titles[] = {
    {"nl",
     {"Melding", "Inbraak", "Verdachte persoon", "Verdacht voertuig", "Brand", "Overlast",
      "Verkeer", "Vermissing", "Overig", "Cybercrime", "Openbaar vervoer"},
     {"Update", "Ontvangen", "In onderzoek", "Politie ter plaatse", "Verdachte aangehouden",
      "Opgelost", "Loos alarm", "Gesloten"}},
    {"en",
     {"Report", "Burglary", "Suspicious person", "Suspicious vehicle", "Fire", "Nuisance",
      "Traffic", "Missing person", "Other", "Cybercrime", "Public transport"},
     {"Update", "Received", "Under investigation", "Police on site", "Suspect arrested", "Resolved",
      "False alarm", "Closed"}},
    {"de",
     {"Meldung", "Einbruch", "Verdächtige Person", "Verdächtiges Fahrzeug", "Brand", "Belästigung",
      "Verkehr", "Vermisste Person", "Sonstiges", "Cyberkriminalität", "Öffentlicher Verkehr"},
     {"Update", "Eingegangen", "In Ermittlung", "Polizei vor Ort", "Verdächtiger festgenommen",
      "Gelöst", "Fehlalarm", "Geschlossen"}},
};

static const struct title_table *table_for(const char *locale)
{
    for (size_t i = 0; i < sizeof(titles) / sizeof(titles[0]); i++) {
        if (locale && strncmp(locale, titles[i].locale, 2) == 0) {
            return &titles[i];
        }
    }
    return &titles[0];
}

const char *bb_title_category(const char *locale, int category)
{
    return table_for(locale)->category[category >= 0 && category <= 10 ? category : 0];
}

const char *bb_title_status(const char *locale, int status)
{
    return table_for(locale)->status[status >= 0 && status <= 7 ? status : 0];
}

void bb_out_reset(struct bb_out *o)
{
    o->len = 0;
    o->n = 0;
    o->deliveries = 0;
    o->raw_bytes = o->zstd_bytes = 0;
}

void bb_out_free(struct bb_out *o)
{
    free(o->buf);
    free(o->e);
    memset(o, 0, sizeof(*o));
}

static int out_reserve(struct bb_out *o, size_t more)
{
    if (o->len + more <= o->cap) {
        return BB_OK;
    }
    size_t nc = o->cap ? o->cap : 4096;
    while (nc < o->len + more) {
        nc *= 2;
    }
    uint8_t *b = realloc(o->buf, nc);
    if (!b) {
        return BB_ENOMEM;
    }
    o->buf = b;
    o->cap = nc;
    return BB_OK;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap) {
        return BB_OK;
    }
    size_t nc = *cap ? *cap : 1024;
    while (nc < need) {
        nc *= 2;
    }
    uint8_t *b = realloc(*buf, nc);
    if (!b) {
        return BB_ENOMEM;
    }
    *buf = b;
    *cap = nc;
    return BB_OK;
}

struct bb_encoder *bb_encoder_new(int level, unsigned batch_size)
{
    struct bb_encoder *e = calloc(1, sizeof(*e));
    if (!e) {
        return NULL;
    }
    e->z = bb_zenc_new(level);
    if (!e->z) {
        free(e);
        return NULL;
    }
    e->batch_size = batch_size < 1 ? 1 : batch_size > 10000 ? 10000 : batch_size;
    return e;
}

void bb_encoder_free(struct bb_encoder *e)
{
    if (!e) {
        return;
    }
    bb_zenc_free(e->z);
    bb_zdict_unref(e->dict);
    free(e->raw);
    free(e->zbuf);
    free(e);
}

void bb_encoder_set_dict(struct bb_encoder *e, struct bb_zdict *dict)
{
    struct bb_zdict *old = e->dict;
    e->dict = dict ? bb_zdict_ref(dict) : NULL;
    bb_zdict_unref(old);
}

/* Packs and compresses n into e->zbuf; sets *zlen. */
static int compress_notification(struct bb_encoder *e, const Bb__Notification *n, size_t *zlen,
                                 struct bb_out *out)
{
    size_t raw = bb__notification__get_packed_size(n);
    if (grow(&e->raw, &e->rawcap, raw) != BB_OK ||
        grow(&e->zbuf, &e->zcap, bb_zbound(raw)) != BB_OK) {
        return BB_ENOMEM;
    }
    bb__notification__pack(n, e->raw);
    int rc = bb_zenc_compress(e->z, e->dict, e->raw, raw, e->zbuf, e->zcap, zlen);
    out->raw_bytes += raw;
    out->zstd_bytes += *zlen;
    return rc;
}

/* Appends ceil(n / batch_size) DeliveryBatch entries for one recipient list. */
static int emit_batches(struct bb_encoder *e, struct bb_out *out, unsigned ch,
                        Bb__DeliveryBatch *tmpl, const uint64_t *ids, uint32_t n)
{
    uint32_t count = (n + e->batch_size - 1) / e->batch_size;
    tmpl->batch_count = count;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t off = i * e->batch_size;
        tmpl->batch_index = i;
        tmpl->recipients = (uint64_t *)(ids + off);
        tmpl->n_recipients = n - off < e->batch_size ? n - off : e->batch_size;
        size_t len = bb__delivery_batch__get_packed_size(tmpl);
        if (out_reserve(out, len) != BB_OK) {
            return BB_ENOMEM;
        }
        if (out->n == out->ecap) {
            uint32_t nc = out->ecap ? out->ecap * 2 : 16;
            struct bb_out_entry *ne = realloc(out->e, nc * sizeof(*ne));
            if (!ne) {
                return BB_ENOMEM;
            }
            out->e = ne;
            out->ecap = nc;
        }
        bb__delivery_batch__pack(tmpl, out->buf + out->len);
        out->e[out->n++] = (struct bb_out_entry){(uint8_t)ch, (uint32_t)out->len, (uint32_t)len,
                                                 (uint32_t)tmpl->n_recipients};
        out->len += len;
        out->deliveries += (uint32_t)tmpl->n_recipients;
    }
    return BB_OK;
}

/* Writes every user channel's batches: one compressed Notification per
 * locale, shared by all channels and batches of that locale. */
static int emit_users(struct bb_encoder *e, const struct bb_dir *dir, Bb__Notification *n,
                      const struct bb_route_result *res, Bb__DeliveryBatch *tmpl, bool status,
                      int title_code, struct bb_out *out)
{
    uint32_t locales = 0;
    for (unsigned c = 0; c < BB_CHANNELS - 1; c++) {
        locales |= res->used[c];
    }
    for (; locales; locales &= locales - 1) {
        unsigned l = (unsigned)__builtin_ctz(locales);
        const char *loc = bb_dir_locale_name(dir, l);
        n->locale = (char *)loc;
        n->title = (char *)(status ? bb_title_status(loc, title_code)
                                   : bb_title_category(loc, title_code));
        size_t zlen;
        int rc = compress_notification(e, n, &zlen, out);
        if (rc != BB_OK) {
            return rc;
        }
        tmpl->locale = (char *)loc;
        tmpl->notification_zstd.data = e->zbuf;
        tmpl->notification_zstd.len = zlen;
        for (unsigned c = 0; c < BB_CHANNELS - 1; c++) {
            if (!(res->used[c] & (1u << l))) {
                continue;
            }
            tmpl->channel = (Bb__Channel)(c + 1);
            rc = emit_batches(e, out, c, tmpl, res->lists[c][l].ids, res->lists[c][l].n);
            if (rc != BB_OK) {
                return rc;
            }
        }
    }
    return BB_OK;
}

static void set_location(Bb__Notification *n, double lat, double lon, unsigned precision,
                         char *cellbuf)
{
    bb_cell c = bb_geohash_encode(lat, lon, precision);
    bb_geohash_format(c, cellbuf);
    n->cell = cellbuf;
    bb_cell_center(c, &n->lat, &n->lon);
}

void bb_notification_from_report(Bb__Notification *n, const Bb__Report *rep, const char *group_name,
                                 unsigned precision, char cell[16])
{
    bb__notification__init(n);
    n->schema_version = 1;
    n->kind = BB__NOTIFICATION_KIND__NOTIFICATION_KIND_REPORT;
    n->report_id = rep->id;
    n->time_ms = rep->time_ms;
    n->category = rep->category;
    n->urgency = rep->urgency;
    n->source = rep->source;
    n->text = rep->text;
    n->media = rep->media;
    n->n_media = rep->n_media;
    n->anonymous = rep->anonymity != BB__ANONYMITY__ANONYMITY_SCREEN_NAME;
    n->author = n->anonymous ? "" : rep->author_screen_name;
    n->group_name = (char *)(group_name ? group_name : "");
    n->locale = "nl";
    n->title = (char *)bb_title_category("nl", rep->category);
    set_location(n, rep->lat, rep->lon, precision, cell);
}

int bb_encode_report(struct bb_encoder *e, const struct bb_dir *dir, const Bb__Report *rep,
                     const struct bb_route_result *res, int64_t source_time_ms, struct bb_out *out)
{
    char key[80], cell[16];
    snprintf(key, sizeof(key), "r:%s", rep->id);
    Bb__Notification n;
    bb_notification_from_report(&n, rep, res->group_name, res->precision, cell);

    Bb__DeliveryBatch b = BB__DELIVERY_BATCH__INIT;
    b.schema_version = 1;
    b.notification_key = key;
    b.recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
    b.source_time_ms = source_time_ms;
    b.urgency = rep->urgency;
    int rc = emit_users(e, dir, &n, res, &b, false, rep->category, out);
    if (rc != BB_OK || !res->social.n) {
        return rc;
    }

    /* Public accounts: no author, no text, no media unless publishable, a
     * coarse cell. The social worker aggregates before it posts. */
    Bb__Media *pub[16];
    size_t npub = 0;
    for (size_t i = 0; i < rep->n_media && npub < 16; i++) {
        if (rep->media[i]->publishable) {
            pub[npub++] = rep->media[i];
        }
    }
    n.text = "";
    n.author = "";
    n.anonymous = true;
    n.media = pub;
    n.n_media = npub;
    n.locale = "nl";
    n.title = (char *)bb_title_category("nl", rep->category);
    unsigned p = res->precision < SOCIAL_MAX_PRECISION ? res->precision : SOCIAL_MAX_PRECISION;
    set_location(&n, rep->lat, rep->lon, p, cell);
    size_t zlen;
    if ((rc = compress_notification(e, &n, &zlen, out)) != BB_OK) {
        return rc;
    }
    b.channel = BB__CHANNEL__CHANNEL_SOCIAL;
    b.locale = "nl";
    b.recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_GROUP;
    b.notification_zstd.data = e->zbuf;
    b.notification_zstd.len = zlen;
    return emit_batches(e, out, BB_CHANNELS - 1, &b, res->social.ids, res->social.n);
}

int bb_encode_status(struct bb_encoder *e, const struct bb_dir *dir, const Bb__ReportStatus *st,
                     const struct bb_route_result *res, int64_t source_time_ms, struct bb_out *out)
{
    char key[80];
    snprintf(key, sizeof(key), "s:%s", st->id);
    Bb__Notification n = BB__NOTIFICATION__INIT;
    n.schema_version = 1;
    n.kind = BB__NOTIFICATION_KIND__NOTIFICATION_KIND_STATUS;
    n.report_id = st->report_id;
    n.status_id = st->id;
    n.time_ms = st->time_ms;
    n.category = st->category;
    n.urgency = st->urgency ? st->urgency : BB__URGENCY__URGENCY_INFORMATIONAL;
    n.source = st->source;
    n.text = st->text;
    n.anonymous = true;
    n.status = st->status;

    Bb__DeliveryBatch b = BB__DELIVERY_BATCH__INIT;
    b.schema_version = 1;
    b.notification_key = key;
    b.recipient_kind = BB__RECIPIENT_KIND__RECIPIENT_KIND_USER;
    b.source_time_ms = source_time_ms;
    b.urgency = n.urgency;
    return emit_users(e, dir, &n, res, &b, true, st->status, out);
}
