/* Input validation (see validate.h). */
#include "validate.h"

#include <math.h>
#include <string.h>

#include "report.pb-c.h"
#include "wire.h"

#define MAX_ID 64
#define MAX_NAME 64
#define MAX_LOCALE 15
#define KNOWN_CATEGORY_MAX BB__CATEGORY__CATEGORY_PUBLIC_TRANSPORT

static bool utf8_ok(const char *s)
{
    return bb_utf8_is_valid(s, strlen(s));
}

static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_ID) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == ':') { /* ':' separates delivery id parts */
            return false;
        }
    }
    return true;
}

static const char *media_check(Bb__Media *const *media, size_t n, const struct bb_limits *lim)
{
    if (n > lim->max_media) {
        return "too_many_media";
    }
    for (size_t i = 0; i < n; i++) {
        const char *u = media[i]->url;
        size_t len = strlen(u);
        if (len == 0 || len > lim->max_url) {
            return "bad_media_url";
        }
        if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0) {
            return "bad_media_url";
        }
        for (size_t j = 0; j < len; j++) {
            if ((unsigned char)u[j] <= 0x20 || (unsigned char)u[j] >= 0x7f) {
                return "bad_media_url";
            }
        }
        if (!utf8_ok(media[i]->mime_type) || strlen(media[i]->mime_type) > 100) {
            return "bad_media_type";
        }
    }
    return NULL;
}

const char *bb_validate_report(const Bb__Report *r, const struct bb_limits *lim)
{
    if (r->schema_version > 1) {
        /* Newer writers may add fields (tolerated) but bump the version only
         * for a change in meaning, which this broker cannot know. */
        return "unsupported_schema_version";
    }
    if (!r->id[0]) {
        return "missing_field:id";
    }
    if (!id_ok(r->id)) {
        return "bad_id";
    }
    if (r->time_ms <= 0) {
        return "missing_field:time_ms";
    }
    if (r->author_id == 0) {
        return "missing_field:author_id";
    }
    if (!isfinite(r->lat) || !isfinite(r->lon) || r->lat < -90.0 || r->lat > 90.0 ||
        r->lon < -180.0 || r->lon > 180.0) {
        return "bad_location";
    }
    if (r->lat == 0.0 && r->lon == 0.0) {
        return "missing_field:location"; /* proto3 cannot tell 0,0 from unset */
    }
    if (r->category == 0) {
        return "missing_field:category";
    }
    if ((int)r->category < 0 || (int)r->category > KNOWN_CATEGORY_MAX) {
        return "unknown_category";
    }
    if (r->urgency == 0) {
        return "missing_field:urgency";
    }
    if ((int)r->urgency < 0 || r->urgency > BB__URGENCY__URGENCY_IN_PROGRESS) {
        return "unknown_urgency";
    }
    if (r->source == 0) {
        return "missing_field:source";
    }
    if ((int)r->source < 0 || r->source > BB__SOURCE__SOURCE_PLATFORM) {
        return "unknown_source";
    }
    if ((int)r->anonymity < 0 || r->anonymity > BB__ANONYMITY__ANONYMITY_NEIGHBOUR) {
        return "unknown_anonymity";
    }
    if (strlen(r->text) > lim->max_text) {
        return "text_too_long";
    }
    if (!utf8_ok(r->text)) {
        return "bad_utf8:text";
    }
    if (strlen(r->author_screen_name) > MAX_NAME) {
        return "screen_name_too_long";
    }
    if (!utf8_ok(r->author_screen_name)) {
        return "bad_utf8:author_screen_name";
    }
    if (strlen(r->locale) > MAX_LOCALE || !utf8_ok(r->locale)) {
        return "bad_locale";
    }
    return media_check(r->media, r->n_media, lim);
}

const char *bb_validate_status(const Bb__ReportStatus *s, const struct bb_limits *lim)
{
    if (s->schema_version > 1) {
        return "unsupported_schema_version";
    }
    if (!s->id[0]) {
        return "missing_field:id";
    }
    if (!id_ok(s->id)) {
        return "bad_id";
    }
    if (!s->report_id[0]) {
        return "missing_field:report_id";
    }
    if (!id_ok(s->report_id)) {
        return "bad_report_id";
    }
    if (s->time_ms <= 0) {
        return "missing_field:time_ms";
    }
    if (s->status == 0) {
        return "missing_field:status";
    }
    if ((int)s->status < 0 || s->status > BB__STATUS__STATUS_CLOSED) {
        return "unknown_status";
    }
    if ((int)s->category < 0 || (int)s->category > KNOWN_CATEGORY_MAX) {
        return "unknown_category";
    }
    if ((int)s->urgency < 0 || s->urgency > BB__URGENCY__URGENCY_IN_PROGRESS) {
        return "unknown_urgency";
    }
    if ((int)s->source < 0 || s->source > BB__SOURCE__SOURCE_PLATFORM) {
        return "unknown_source";
    }
    if (strlen(s->text) > lim->max_text) {
        return "text_too_long";
    }
    if (!utf8_ok(s->text)) {
        return "bad_utf8:text";
    }
    if (strlen(s->locale) > MAX_LOCALE || !utf8_ok(s->locale)) {
        return "bad_locale";
    }
    return NULL;
}
