/* JSON to protobuf for buurtbusctl (see json.h). Any thread, one arena
 * each.
 *
 * Every converter walks the object's keys (so an unknown key is reported,
 * not ignored: a typo in "min_urgency" must not silently mean "any") and
 * keeps the path of the field it is in for error messages. null counts as
 * absent. Strings are copied into the arena; protobuf-c messages point at
 * them. */
#include "json.h"

#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "directory.pb-c.h"
#include "geohash.h"
#include "report.pb-c.h"
#include "route.h"
#include "wire.h"

#define BLOCK_MIN 8192
#define MAX_ID_STR 64
#define MAX_NAME 64
#define MAX_TEXT (64 * 1024)

/* ---- arena ------------------------------------------------------------------------------- */

struct jblock {
    struct jblock *next;
    size_t used, cap;
    max_align_t data[];
};

struct bb_jarena {
    struct jblock *head;
};

struct bb_jarena *bb_jarena_new(void)
{
    return calloc(1, sizeof(struct bb_jarena));
}

void bb_jarena_reset(struct bb_jarena *a)
{
    struct jblock *b = a->head;
    if (!b) {
        return;
    }
    /* Keep the newest block for the next conversion, free the rest. */
    struct jblock *rest = b->next;
    b->next = NULL;
    b->used = 0;
    while (rest) {
        struct jblock *n = rest->next;
        free(rest);
        rest = n;
    }
}

void bb_jarena_free(struct bb_jarena *a)
{
    if (!a) {
        return;
    }
    for (struct jblock *b = a->head; b;) {
        struct jblock *n = b->next;
        free(b);
        b = n;
    }
    free(a);
}

static void *ja_alloc(struct bb_jarena *a, size_t n)
{
    const size_t align = sizeof(max_align_t);
    n = (n + align - 1) / align * align;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > BLOCK_MIN ? n : BLOCK_MIN;
        struct jblock *b = malloc(sizeof(*b) + cap);
        if (!b) {
            return NULL;
        }
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

/* ---- parsing ----------------------------------------------------------------------------- */

static int parse_one(const char *text, size_t len, struct json_object **out, size_t *used,
                     const char **why)
{
    struct json_tokener *tok = json_tokener_new();
    if (!tok) {
        *why = "out of memory";
        return BB_ENOMEM;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error e = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    if (!o && e == json_tokener_continue) {
        /* A bare number needs to see its end; an open object is truncated. */
        o = json_tokener_parse_ex(tok, "", 1);
        e = o ? json_tokener_success : json_tokener_error_parse_eof;
        end = len;
    }
    if (!o && e != json_tokener_error_parse_eof && end > 0) {
        /* Strict mode refuses a second value after the first; the first
         * alone is fine, the caller reads on from its end. */
        json_tokener_reset(tok);
        o = json_tokener_parse_ex(tok, text, (int)end);
        if (!o) {
            o = json_tokener_parse_ex(tok, "", 1);
        }
        if (o) {
            e = json_tokener_success;
        }
    }
    json_tokener_free(tok);
    *used = end;
    *out = o;
    if (!o) {
        *why = e == json_tokener_error_parse_eof ? "unexpected end of data"
                                                 : json_tokener_error_desc(e);
        return BB_EINVAL;
    }
    return BB_OK;
}

static size_t skip_space(const char *t, size_t len, size_t off)
{
    while (off < len && (t[off] == ' ' || t[off] == '\t' || t[off] == '\n' || t[off] == '\r')) {
        off++;
    }
    return off;
}

int bb_json_parse(const char *text, size_t len, struct json_object **out, char *err, size_t errlen)
{
    const char *why;
    size_t used, start = skip_space(text, len, 0);
    *out = NULL;
    if (start == len) {
        snprintf(err, errlen, "bad JSON: empty");
        return BB_EINVAL;
    }
    if (parse_one(text + start, len - start, out, &used, &why) != BB_OK) {
        snprintf(err, errlen, "bad JSON at column %zu: %s", start + used + 1, why);
        return BB_EINVAL;
    }
    size_t rest = skip_space(text, len, start + used);
    if (rest != len) {
        json_object_put(*out);
        *out = NULL;
        snprintf(err, errlen, "bad JSON at column %zu: more after the value", rest + 1);
        return BB_EINVAL;
    }
    return BB_OK;
}

int bb_json_parse_next(const char *text, size_t len, size_t *off, struct json_object **out,
                       char *err, size_t errlen)
{
    const char *why;
    size_t used, start = skip_space(text, len, *off);
    *out = NULL;
    if (start == len) {
        *off = len;
        return BB_OK;
    }
    if (parse_one(text + start, len - start, out, &used, &why) != BB_OK) {
        size_t at = start + used, line = 1, col = 1;
        for (size_t i = 0; i < at && i < len; i++) {
            if (text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        snprintf(err, errlen, "line %zu, column %zu: bad JSON: %s", line, col, why);
        return BB_EINVAL;
    }
    *off = start + used;
    return BB_OK;
}

size_t bb_json_line_of(const char *text, size_t off)
{
    size_t line = 1;
    for (size_t i = 0; i < off; i++) {
        line += text[i] == '\n';
    }
    return line;
}

/* ---- enum names -------------------------------------------------------------------------- */

struct enum_names {
    const char *what;
    const char *const *names; /* index = value; NULL or "" = none */
    int n;
};

static const char *const category_names[] = {
    NULL,    "burglary", "suspicious_person", "suspicious_vehicle",
    "fire",  "nuisance", "traffic",           "missing_person",
    "other", "cyber",    "public_transport"};
static const char *const urgency_names[] = {NULL, "informational", "recent", "in_progress"};
static const char *const source_names[] = {NULL,           "resident", "police",
                                           "municipality", "sensor",   "platform"};
static const char *const anonymity_names[] = {NULL, "screen_name", "neighbour"};
static const char *const channel_names[] = {NULL, "push", "email", "inbox", "digest", "social"};
static const char *const status_names[] = {
    NULL,       "received",    "investigating", "police_on_site", "suspect_arrested",
    "resolved", "false_alarm", "closed"};

#define NELEMS(arr) ((int)(sizeof(arr) / sizeof(arr[0])))
static const struct enum_names E_CATEGORY = {"a category", category_names, NELEMS(category_names)};
static const struct enum_names E_URGENCY = {"an urgency", urgency_names, NELEMS(urgency_names)};
static const struct enum_names E_SOURCE = {"a source", source_names, NELEMS(source_names)};
static const struct enum_names E_ANONYMITY = {"an anonymity level", anonymity_names,
                                              NELEMS(anonymity_names)};
static const struct enum_names E_CHANNEL = {"a channel", channel_names, NELEMS(channel_names)};
static const struct enum_names E_STATUS = {"a status", status_names, NELEMS(status_names)};

static const char *enum_name(const struct enum_names *e, int v)
{
    return v > 0 && v < e->n && e->names[v] ? e->names[v] : "?";
}

const char *bb_json_category_name(int v)
{
    return enum_name(&E_CATEGORY, v);
}

const char *bb_json_urgency_name(int v)
{
    return enum_name(&E_URGENCY, v);
}

const char *bb_json_source_name(int v)
{
    return enum_name(&E_SOURCE, v);
}

const char *bb_json_status_name(int v)
{
    return enum_name(&E_STATUS, v);
}

/* ---- conversion context ------------------------------------------------------------------ */

struct jctx {
    struct bb_jarena *a;
    char *err;
    size_t errlen;
    char path[192];
    size_t plen;
};

static int jfail(struct jctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int jfail(struct jctx *c, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->plen) {
        snprintf(c->err, c->errlen, "%s: %s", c->path, msg);
    } else {
        snprintf(c->err, c->errlen, "%s", msg);
    }
    return BB_EINVAL;
}

static size_t path_key(struct jctx *c, const char *key)
{
    size_t old = c->plen;
    int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "%s%s", c->plen ? "." : "", key);
    if (n > 0) {
        c->plen = c->plen + (size_t)n < sizeof(c->path) ? c->plen + (size_t)n : sizeof(c->path) - 1;
    }
    return old;
}

static size_t path_index(struct jctx *c, size_t i)
{
    size_t old = c->plen;
    int n = snprintf(c->path + c->plen, sizeof(c->path) - c->plen, "[%zu]", i);
    if (n > 0) {
        c->plen = c->plen + (size_t)n < sizeof(c->path) ? c->plen + (size_t)n : sizeof(c->path) - 1;
    }
    return old;
}

static void path_pop(struct jctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

static void *jalloc(struct jctx *c, size_t n)
{
    return ja_alloc(c->a, n ? n : 1);
}

static const char *type_name(const struct json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_null:
        return "null";
    case json_type_boolean:
        return "true/false";
    case json_type_double:
        return "a fractional number";
    case json_type_int:
        return "an integer";
    case json_type_object:
        return "an object";
    case json_type_array:
        return "an array";
    case json_type_string:
        return "a string";
    }
    return "something else";
}

static const char *quoted(const struct json_object *v, char *buf, size_t cap)
{
    const char *s = json_object_to_json_string_ext(
        (struct json_object *)v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t n = strlen(s);
    if (n >= cap) {
        snprintf(buf, cap, "%.*s...", (int)(cap > 4 ? cap - 4 : 0), s);
    } else {
        snprintf(buf, cap, "%s", s);
    }
    return buf;
}

/* Unsigned integers: a JSON integer, or a string of digits (ids past 2^53
 * from JavaScript clients). */
static int get_u64(struct jctx *c, const struct json_object *v, uint64_t min, uint64_t max,
                   uint64_t *out)
{
    char q[64];
    uint64_t x = 0;
    if (json_object_is_type(v, json_type_int)) {
        if (json_object_get_int64(v) < 0) {
            return jfail(c, "must not be negative, got %s", quoted(v, q, sizeof(q)));
        }
        x = json_object_get_uint64(v);
    } else if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string((struct json_object *)v);
        size_t n = strlen(s);
        if (n == 0 || n > 20) {
            return jfail(c, "expected an integer, got %s", quoted(v, q, sizeof(q)));
        }
        for (size_t i = 0; i < n; i++) {
            uint64_t d = (uint64_t)(s[i] - '0');
            if (s[i] < '0' || s[i] > '9' || x > (UINT64_MAX - d) / 10) {
                return jfail(c, "expected an integer, got %s", quoted(v, q, sizeof(q)));
            }
            x = x * 10 + d;
        }
    } else {
        return jfail(c, "expected an integer, got %s", type_name(v));
    }
    if (x < min || x > max) {
        return jfail(c, "must be %llu..%llu, got %s", (unsigned long long)min,
                     (unsigned long long)max, quoted(v, q, sizeof(q)));
    }
    *out = x;
    return BB_OK;
}

static int get_id(struct jctx *c, const struct json_object *v, uint64_t *out)
{
    return get_u64(c, v, 1, UINT64_MAX, out);
}

static int get_u32(struct jctx *c, const struct json_object *v, uint32_t max, uint32_t *out)
{
    uint64_t x;
    int rc = get_u64(c, v, 0, max, &x);
    *out = (uint32_t)x;
    return rc;
}

static int get_i64(struct jctx *c, const struct json_object *v, int64_t *out)
{
    if (!json_object_is_type(v, json_type_int)) {
        return jfail(c, "expected an integer, got %s", type_name(v));
    }
    *out = json_object_get_int64(v);
    return BB_OK;
}

static int get_double(struct jctx *c, const struct json_object *v, double min, double max,
                      double *out)
{
    char q[64];
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double)) {
        return jfail(c, "expected a number, got %s", type_name(v));
    }
    double d = json_object_get_double(v);
    if (!isfinite(d) || d < min || d > max) {
        return jfail(c, "must be %g..%g, got %s", min, max, quoted(v, q, sizeof(q)));
    }
    *out = d;
    return BB_OK;
}

static int get_bool(struct jctx *c, const struct json_object *v, protobuf_c_boolean *out)
{
    if (!json_object_is_type(v, json_type_boolean)) {
        return jfail(c, "expected true or false, got %s", type_name(v));
    }
    *out = json_object_get_boolean(v) ? 1 : 0;
    return BB_OK;
}

static int get_str(struct jctx *c, const struct json_object *v, size_t max, char **out)
{
    if (!json_object_is_type(v, json_type_string)) {
        return jfail(c, "expected a string, got %s", type_name(v));
    }
    const char *s = json_object_get_string((struct json_object *)v);
    size_t n = (size_t)json_object_get_string_len(v);
    if (strlen(s) != n) {
        return jfail(c, "contains a NUL character");
    }
    if (n > max) {
        return jfail(c, "too long: %zu bytes, at most %zu", n, max);
    }
    if (!bb_utf8_is_valid(s, n)) {
        return jfail(c, "not valid UTF-8");
    }
    char *p = jalloc(c, n + 1);
    if (!p) {
        return jfail(c, "out of memory");
    }
    memcpy(p, s, n + 1);
    *out = p;
    return BB_OK;
}

static int get_enum(struct jctx *c, const struct json_object *v, const struct enum_names *e,
                    int *out)
{
    char list[256] = "", q[64];
    size_t len = 0;
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string((struct json_object *)v);
        for (int i = 1; i < e->n; i++) {
            if (e->names[i] && strcmp(s, e->names[i]) == 0) {
                *out = i;
                return BB_OK;
            }
        }
    }
    for (int i = 1; i < e->n && len < sizeof(list); i++) {
        int n = snprintf(list + len, sizeof(list) - len, "%s%s", i > 1 ? ", " : "", e->names[i]);
        len += n > 0 ? (size_t)n : 0;
    }
    return jfail(c, "expected %s (%s), got %s", e->what, list, quoted(v, q, sizeof(q)));
}

static int want_type(struct jctx *c, const struct json_object *v, enum json_type t,
                     const char *what)
{
    if (!json_object_is_type(v, t)) {
        return jfail(c, "expected %s, got %s", what, type_name(v));
    }
    return BB_OK;
}

static int unknown(struct jctx *c, const char *key)
{
    size_t old = path_key(c, key);
    int rc = jfail(c, "unknown field");
    path_pop(c, old);
    return rc;
}

static int missing(struct jctx *c, const char *key)
{
    return jfail(c, "missing field \"%s\"", key);
}

/* Calls fn for each element of an array, with the path at "[i]". */
typedef int elem_fn(struct jctx *c, const struct json_object *v, size_t i, void *out);

static int get_array(struct jctx *c, const struct json_object *v, size_t elem_size, elem_fn *fn,
                     void **out, size_t *n)
{
    int rc = want_type(c, v, json_type_array, "an array");
    if (rc != BB_OK) {
        return rc;
    }
    size_t len = json_object_array_length(v);
    char *arr = jalloc(c, len * elem_size);
    if (!arr) {
        return jfail(c, "out of memory");
    }
    for (size_t i = 0; i < len; i++) {
        size_t old = path_index(c, i);
        rc = fn(c, json_object_array_get_idx(v, i), i, arr + i * elem_size);
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    *out = arr;
    *n = len;
    return BB_OK;
}

static int elem_id(struct jctx *c, const struct json_object *v, size_t i, void *out)
{
    return get_id(c, v, out);
}

static int elem_category(struct jctx *c, const struct json_object *v, size_t i, void *out)
{
    return get_enum(c, v, &E_CATEGORY, out);
}

static int elem_source(struct jctx *c, const struct json_object *v, size_t i, void *out)
{
    return get_enum(c, v, &E_SOURCE, out);
}

static int elem_personal_channel(struct jctx *c, const struct json_object *v, size_t i, void *out)
{
    int rc = get_enum(c, v, &E_CHANNEL, out);
    if (rc == BB_OK && *(int *)out == BB__CHANNEL__CHANNEL_SOCIAL) {
        return jfail(c, "social is for groups' public accounts, not a personal channel");
    }
    return rc;
}

static int elem_cell(struct jctx *c, const struct json_object *v, size_t i, void *out)
{
    char **s = out;
    bb_cell cell;
    int rc = get_str(c, v, BB_GEOHASH_MAX_PRECISION, s);
    if (rc == BB_OK && bb_geohash_parse(*s, strlen(*s), &cell) != BB_OK) {
        char q[64];
        return jfail(c, "expected a geohash of 1..12 characters, got %s", quoted(v, q, sizeof(q)));
    }
    return rc;
}

/* ---- directory messages ------------------------------------------------------------------ */

static int channel_set(struct jctx *c, const struct json_object *v, Bb__ChannelSet **out)
{
    Bb__ChannelSet *cs = jalloc(c, sizeof(*cs));
    if (!cs) {
        return jfail(c, "out of memory");
    }
    *cs = (Bb__ChannelSet)BB__CHANNEL_SET__INIT;
    int rc = get_array(c, v, sizeof(int), elem_personal_channel, (void **)&cs->channels,
                       &cs->n_channels);
    *out = cs;
    return rc;
}

static int hhmm(struct jctx *c, const struct json_object *v, uint32_t *minute)
{
    char q[64];
    const char *s = json_object_is_type(v, json_type_string)
                        ? json_object_get_string((struct json_object *)v)
                        : "";
    if (strlen(s) != 5 || s[2] != ':' || s[0] < '0' || s[0] > '2' || s[1] < '0' || s[1] > '9' ||
        s[3] < '0' || s[3] > '5' || s[4] < '0' || s[4] > '9') {
        return jfail(c, "expected a time HH:MM, got %s", quoted(v, q, sizeof(q)));
    }
    uint32_t h = (uint32_t)((s[0] - '0') * 10 + (s[1] - '0'));
    if (h > 23) {
        return jfail(c, "expected a time HH:MM, got %s", quoted(v, q, sizeof(q)));
    }
    *minute = h * 60 + (uint32_t)((s[3] - '0') * 10 + (s[4] - '0'));
    return BB_OK;
}

static int quiet_hours(struct jctx *c, const struct json_object *obj, Bb__QuietHours **out)
{
    int rc = want_type(c, obj, json_type_object,
                       "an object {\"from\": \"22:00\", \"to\": "
                       "\"07:00\"}");
    bool from = false, to = false;
    Bb__QuietHours *q = jalloc(c, sizeof(*q));
    if (rc != BB_OK) {
        return rc;
    }
    if (!q) {
        return jfail(c, "out of memory");
    }
    *q = (Bb__QuietHours)BB__QUIET_HOURS__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        size_t old = path_key(c, key);
        if (strcmp(key, "from") == 0) {
            rc = hhmm(c, v, &q->from_minute);
            from = true;
        } else if (strcmp(key, "to") == 0) {
            rc = hhmm(c, v, &q->to_minute);
            to = true;
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!from || !to) {
        return missing(c, from ? "to" : "from");
    }
    *out = q;
    return BB_OK;
}

static int preferences(struct jctx *c, const struct json_object *obj, Bb__Preferences **out)
{
    int rc = want_type(c, obj, json_type_object, "an object");
    Bb__Preferences *p = jalloc(c, sizeof(*p));
    if (rc != BB_OK) {
        return rc;
    }
    if (!p) {
        return jfail(c, "out of memory");
    }
    *p = (Bb__Preferences)BB__PREFERENCES__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        int e;
        if (json_object_is_type(v, json_type_null)) {
            continue;
        }
        size_t old = path_key(c, key);
        if (strcmp(key, "categories") == 0) {
            rc = get_array(c, v, sizeof(int), elem_category, (void **)&p->categories,
                           &p->n_categories);
        } else if (strcmp(key, "min_urgency") == 0) {
            rc = get_enum(c, v, &E_URGENCY, &e);
            p->min_urgency = (Bb__Urgency)e;
        } else if (strcmp(key, "in_progress") == 0) {
            rc = channel_set(c, v, &p->in_progress);
        } else if (strcmp(key, "recent") == 0) {
            rc = channel_set(c, v, &p->recent);
        } else if (strcmp(key, "informational") == 0) {
            rc = channel_set(c, v, &p->informational);
        } else if (strcmp(key, "quiet") == 0) {
            rc = quiet_hours(c, v, &p->quiet);
        } else if (strcmp(key, "max_per_hour") == 0) {
            rc = get_u32(c, v, 255, &p->max_per_hour);
        } else if (strcmp(key, "digest_hour") == 0) {
            rc = get_u32(c, v, 23, &p->digest_hour);
        } else if (strcmp(key, "digest_weekly") == 0) {
            rc = get_bool(c, v, &p->digest_weekly);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    *out = p;
    return BB_OK;
}

static int watch_area(struct jctx *c, const struct json_object *obj, Bb__WatchArea **out)
{
    int rc = want_type(c, obj, json_type_object, "an object {\"lat\", \"lon\", \"radius_m\"}");
    bool lat = false, lon = false;
    Bb__WatchArea *w = jalloc(c, sizeof(*w));
    if (rc != BB_OK) {
        return rc;
    }
    if (!w) {
        return jfail(c, "out of memory");
    }
    *w = (Bb__WatchArea)BB__WATCH_AREA__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        size_t old = path_key(c, key);
        if (strcmp(key, "lat") == 0) {
            rc = get_double(c, v, -90, 90, &w->lat);
            lat = true;
        } else if (strcmp(key, "lon") == 0) {
            rc = get_double(c, v, -180, 180, &w->lon);
            lon = true;
        } else if (strcmp(key, "radius_m") == 0) {
            rc = get_u32(c, v, 65535, &w->radius_m);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!lat || !lon) {
        return missing(c, lat ? "lon" : "lat");
    }
    *out = w;
    return BB_OK;
}

static int user(struct jctx *c, const struct json_object *obj, Bb__User **out)
{
    int rc = want_type(c, obj, json_type_object, "an object");
    Bb__User *u = jalloc(c, sizeof(*u));
    if (rc != BB_OK) {
        return rc;
    }
    if (!u) {
        return jfail(c, "out of memory");
    }
    *u = (Bb__User)BB__USER__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        if (json_object_is_type(v, json_type_null)) {
            continue;
        }
        size_t old = path_key(c, key);
        if (strcmp(key, "id") == 0) {
            rc = get_id(c, v, &u->id);
        } else if (strcmp(key, "screen_name") == 0) {
            rc = get_str(c, v, MAX_NAME, &u->screen_name);
        } else if (strcmp(key, "locale") == 0) {
            rc = get_str(c, v, 15, &u->locale);
        } else if (strcmp(key, "time_zone") == 0) {
            rc = get_str(c, v, 64, &u->time_zone);
        } else if (strcmp(key, "watch") == 0) {
            rc = watch_area(c, v, &u->watch);
        } else if (strcmp(key, "prefs") == 0) {
            rc = preferences(c, v, &u->prefs);
        } else if (strcmp(key, "muted_authors") == 0) {
            rc = get_array(c, v, sizeof(uint64_t), elem_id, (void **)&u->muted_authors,
                           &u->n_muted_authors);
        } else if (strcmp(key, "muted_groups") == 0) {
            rc = get_array(c, v, sizeof(uint64_t), elem_id, (void **)&u->muted_groups,
                           &u->n_muted_groups);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!u->id) {
        return missing(c, "id");
    }
    *out = u;
    return BB_OK;
}

static int policy(struct jctx *c, const struct json_object *obj, Bb__Policy **out)
{
    int rc = want_type(c, obj, json_type_object, "an object");
    Bb__Policy *p = jalloc(c, sizeof(*p));
    if (rc != BB_OK) {
        return rc;
    }
    if (!p) {
        return jfail(c, "out of memory");
    }
    *p = (Bb__Policy)BB__POLICY__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        int e;
        if (json_object_is_type(v, json_type_null)) {
            continue;
        }
        size_t old = path_key(c, key);
        if (strcmp(key, "categories") == 0) {
            rc = get_array(c, v, sizeof(int), elem_category, (void **)&p->categories,
                           &p->n_categories);
        } else if (strcmp(key, "min_urgency") == 0) {
            rc = get_enum(c, v, &E_URGENCY, &e);
            p->min_urgency = (Bb__Urgency)e;
        } else if (strcmp(key, "sources") == 0) {
            rc = get_array(c, v, sizeof(int), elem_source, (void **)&p->sources, &p->n_sources);
        } else if (strcmp(key, "public_posting") == 0) {
            rc = get_bool(c, v, &p->public_posting);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    *out = p;
    return BB_OK;
}

static int group(struct jctx *c, const struct json_object *obj, Bb__Group **out)
{
    int rc = want_type(c, obj, json_type_object, "an object");
    Bb__Group *g = jalloc(c, sizeof(*g));
    if (rc != BB_OK) {
        return rc;
    }
    if (!g) {
        return jfail(c, "out of memory");
    }
    *g = (Bb__Group)BB__GROUP__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        if (json_object_is_type(v, json_type_null)) {
            continue;
        }
        size_t old = path_key(c, key);
        if (strcmp(key, "id") == 0) {
            rc = get_id(c, v, &g->id);
        } else if (strcmp(key, "name") == 0) {
            rc = get_str(c, v, 127, &g->name);
        } else if (strcmp(key, "cells") == 0) {
            rc = get_array(c, v, sizeof(char *), elem_cell, (void **)&g->cells, &g->n_cells);
        } else if (strcmp(key, "policy") == 0) {
            rc = policy(c, v, &g->policy);
        } else if (strcmp(key, "location_precision") == 0) {
            rc = get_u32(c, v, BB_GEOHASH_MAX_PRECISION, &g->location_precision);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!g->id) {
        return missing(c, "id");
    }
    *out = g;
    return BB_OK;
}

/* {"user": 1, "group": 2} */
static int membership(struct jctx *c, const struct json_object *obj, Bb__Membership **out)
{
    int rc = want_type(c, obj, json_type_object, "an object {\"user\": ID, \"group\": ID}");
    Bb__Membership *m = jalloc(c, sizeof(*m));
    if (rc != BB_OK) {
        return rc;
    }
    if (!m) {
        return jfail(c, "out of memory");
    }
    *m = (Bb__Membership)BB__MEMBERSHIP__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        size_t old = path_key(c, key);
        if (strcmp(key, "user") == 0) {
            rc = get_id(c, v, &m->user_id);
        } else if (strcmp(key, "group") == 0) {
            rc = get_id(c, v, &m->group_id);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!m->user_id || !m->group_id) {
        return missing(c, m->user_id ? "group" : "user");
    }
    *out = m;
    return BB_OK;
}

/* {"user": 1, "author": 7} or {"user": 1, "group": 3} */
static int mute(struct jctx *c, const struct json_object *obj, Bb__Mute **out)
{
    int rc = want_type(c, obj, json_type_object,
                       "an object {\"user\": ID, \"author\": ID} or {\"user\": ID, \"group\": ID}");
    Bb__Mute *m = jalloc(c, sizeof(*m));
    if (rc != BB_OK) {
        return rc;
    }
    if (!m) {
        return jfail(c, "out of memory");
    }
    *m = (Bb__Mute)BB__MUTE__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        size_t old = path_key(c, key);
        if (strcmp(key, "user") == 0) {
            rc = get_id(c, v, &m->user_id);
        } else if (strcmp(key, "author") == 0) {
            rc = get_id(c, v, &m->author_id);
        } else if (strcmp(key, "group") == 0) {
            rc = get_id(c, v, &m->group_id);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!m->user_id) {
        return missing(c, "user");
    }
    if (!m->author_id == !m->group_id) {
        return jfail(c, "needs exactly one of \"author\" and \"group\"");
    }
    *out = m;
    return BB_OK;
}

static bool report_id_ok(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == ':') {
            return false;
        }
    }
    return n > 0;
}

/* {"user": 1, "report": "r-1"} */
static int follow(struct jctx *c, const struct json_object *obj, Bb__Follow **out)
{
    int rc = want_type(c, obj, json_type_object, "an object {\"user\": ID, \"report\": \"ID\"}");
    Bb__Follow *f = jalloc(c, sizeof(*f));
    if (rc != BB_OK) {
        return rc;
    }
    if (!f) {
        return jfail(c, "out of memory");
    }
    *f = (Bb__Follow)BB__FOLLOW__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        size_t old = path_key(c, key);
        if (strcmp(key, "user") == 0) {
            rc = get_id(c, v, &f->user_id);
        } else if (strcmp(key, "report") == 0) {
            rc = get_str(c, v, MAX_ID_STR, &f->report_id);
            if (rc == BB_OK && !report_id_ok(f->report_id)) {
                rc = jfail(c, "a report id is printable ASCII without spaces or ':'");
            }
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!f->user_id || f->report_id == protobuf_c_empty_string) {
        return missing(c, f->user_id ? "report" : "user");
    }
    *out = f;
    return BB_OK;
}

static int prefs_update(struct jctx *c, const struct json_object *obj, Bb__PreferencesUpdate **out)
{
    int rc = want_type(c, obj, json_type_object, "an object {\"user\": ID, \"prefs\": {...}}");
    Bb__PreferencesUpdate *p = jalloc(c, sizeof(*p));
    if (rc != BB_OK) {
        return rc;
    }
    if (!p) {
        return jfail(c, "out of memory");
    }
    *p = (Bb__PreferencesUpdate)BB__PREFERENCES_UPDATE__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        size_t old = path_key(c, key);
        if (strcmp(key, "user") == 0) {
            rc = get_id(c, v, &p->user_id);
        } else if (strcmp(key, "prefs") == 0) {
            rc = preferences(c, v, &p->prefs);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    if (!p->user_id || !p->prefs) {
        return missing(c, p->user_id ? "prefs" : "user");
    }
    *out = p;
    return BB_OK;
}

int bb_json_directory_event(struct bb_jarena *a, const struct json_object *obj,
                            Bb__DirectoryEvent **out, char *err, size_t errlen)
{
    struct jctx c = {.a = a, .err = err, .errlen = errlen};
    static const char kinds[] = "user, group, member, unmember, erase_user, delete_group, "
                                "preferences, mute, unmute, follow, unfollow";
    Bb__DirectoryEvent *ev;
    int rc;

    if (!json_object_is_type(obj, json_type_object) || json_object_object_length(obj) != 1) {
        return jfail(&c, "expected an object with exactly one of %s", kinds);
    }
    if (!(ev = jalloc(&c, sizeof(*ev)))) {
        return jfail(&c, "out of memory");
    }
    *ev = (Bb__DirectoryEvent)BB__DIRECTORY_EVENT__INIT;
    ev->schema_version = 1;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        path_key(&c, key);
        if (strcmp(key, "user") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT;
            rc = user(&c, v, &ev->user_upsert);
        } else if (strcmp(key, "group") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT;
            rc = group(&c, v, &ev->group_upsert);
        } else if (strcmp(key, "member") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD;
            rc = membership(&c, v, &ev->member_add);
        } else if (strcmp(key, "unmember") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE;
            rc = membership(&c, v, &ev->member_remove);
        } else if (strcmp(key, "erase_user") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
            rc = get_id(&c, v, &ev->user_erase);
        } else if (strcmp(key, "delete_group") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_GROUP_DELETE;
            rc = get_id(&c, v, &ev->group_delete);
        } else if (strcmp(key, "preferences") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_PREFERENCES;
            rc = prefs_update(&c, v, &ev->preferences);
        } else if (strcmp(key, "mute") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_MUTE;
            rc = mute(&c, v, &ev->mute);
        } else if (strcmp(key, "unmute") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_UNMUTE;
            rc = mute(&c, v, &ev->unmute);
        } else if (strcmp(key, "follow") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_FOLLOW;
            rc = follow(&c, v, &ev->follow);
        } else if (strcmp(key, "unfollow") == 0) {
            ev->change_case = BB__DIRECTORY_EVENT__CHANGE_UNFOLLOW;
            rc = follow(&c, v, &ev->unfollow);
        } else {
            path_pop(&c, 0);
            return jfail(&c, "unknown change \"%s\": expected one of %s", key, kinds);
        }
        if (rc != BB_OK) {
            return rc;
        }
    }
    *out = ev;
    return BB_OK;
}

/* ---- reports and status updates ---------------------------------------------------------- */

static int media_elem(struct jctx *c, const struct json_object *obj, size_t i, void *out)
{
    int rc = want_type(c, obj, json_type_object,
                       "an object {\"url\", \"mime_type\", "
                       "\"publishable\"}");
    Bb__Media *m = jalloc(c, sizeof(*m));
    if (rc != BB_OK) {
        return rc;
    }
    if (!m) {
        return jfail(c, "out of memory");
    }
    *m = (Bb__Media)BB__MEDIA__INIT;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        if (json_object_is_type(v, json_type_null)) {
            continue;
        }
        size_t old = path_key(c, key);
        if (strcmp(key, "url") == 0) {
            rc = get_str(c, v, 2048, &m->url);
        } else if (strcmp(key, "mime_type") == 0) {
            rc = get_str(c, v, 128, &m->mime_type);
        } else if (strcmp(key, "publishable") == 0) {
            rc = get_bool(c, v, &m->publishable);
        } else {
            path_pop(c, old);
            return unknown(c, key);
        }
        path_pop(c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    *(Bb__Media **)out = m;
    return BB_OK;
}

int bb_json_report(struct bb_jarena *a, const struct json_object *obj, int64_t now_ms,
                   Bb__Report **out, char *err, size_t errlen)
{
    struct jctx c = {.a = a, .err = err, .errlen = errlen};
    Bb__Report *r;
    int rc = want_type(&c, obj, json_type_object, "a report object");
    if (rc != BB_OK) {
        return rc;
    }
    if (!(r = jalloc(&c, sizeof(*r)))) {
        return jfail(&c, "out of memory");
    }
    *r = (Bb__Report)BB__REPORT__INIT;
    r->schema_version = 1;
    r->time_ms = now_ms;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        int e;
        if (json_object_is_type(v, json_type_null)) {
            continue;
        }
        size_t old = path_key(&c, key);
        if (strcmp(key, "id") == 0) {
            rc = get_str(&c, v, MAX_ID_STR, &r->id);
        } else if (strcmp(key, "time_ms") == 0) {
            rc = get_i64(&c, v, &r->time_ms);
        } else if (strcmp(key, "author_id") == 0) {
            rc = get_u64(&c, v, 0, UINT64_MAX, &r->author_id);
        } else if (strcmp(key, "author_screen_name") == 0) {
            rc = get_str(&c, v, MAX_NAME, &r->author_screen_name);
        } else if (strcmp(key, "group_id") == 0) {
            rc = get_u64(&c, v, 0, UINT64_MAX, &r->group_id);
        } else if (strcmp(key, "lat") == 0) {
            rc = get_double(&c, v, -90, 90, &r->lat);
        } else if (strcmp(key, "lon") == 0) {
            rc = get_double(&c, v, -180, 180, &r->lon);
        } else if (strcmp(key, "category") == 0) {
            rc = get_enum(&c, v, &E_CATEGORY, &e);
            r->category = (Bb__Category)e;
        } else if (strcmp(key, "urgency") == 0) {
            rc = get_enum(&c, v, &E_URGENCY, &e);
            r->urgency = (Bb__Urgency)e;
        } else if (strcmp(key, "source") == 0) {
            rc = get_enum(&c, v, &E_SOURCE, &e);
            r->source = (Bb__Source)e;
        } else if (strcmp(key, "text") == 0) {
            rc = get_str(&c, v, MAX_TEXT, &r->text);
        } else if (strcmp(key, "media") == 0) {
            rc = get_array(&c, v, sizeof(Bb__Media *), media_elem, (void **)&r->media, &r->n_media);
        } else if (strcmp(key, "anonymity") == 0) {
            rc = get_enum(&c, v, &E_ANONYMITY, &e);
            r->anonymity = (Bb__Anonymity)e;
        } else if (strcmp(key, "locale") == 0) {
            rc = get_str(&c, v, 15, &r->locale);
        } else {
            path_pop(&c, old);
            return unknown(&c, key);
        }
        path_pop(&c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    *out = r;
    return BB_OK;
}

int bb_json_status(struct bb_jarena *a, const struct json_object *obj, int64_t now_ms,
                   Bb__ReportStatus **out, char *err, size_t errlen)
{
    struct jctx c = {.a = a, .err = err, .errlen = errlen};
    Bb__ReportStatus *s;
    int rc = want_type(&c, obj, json_type_object, "a status object");
    if (rc != BB_OK) {
        return rc;
    }
    if (!(s = jalloc(&c, sizeof(*s)))) {
        return jfail(&c, "out of memory");
    }
    *s = (Bb__ReportStatus)BB__REPORT_STATUS__INIT;
    s->schema_version = 1;
    s->time_ms = now_ms;
    json_object_object_foreach((struct json_object *)obj, key, v)
    {
        int e;
        if (json_object_is_type(v, json_type_null)) {
            continue;
        }
        size_t old = path_key(&c, key);
        if (strcmp(key, "id") == 0) {
            rc = get_str(&c, v, MAX_ID_STR, &s->id);
        } else if (strcmp(key, "report_id") == 0) {
            rc = get_str(&c, v, MAX_ID_STR, &s->report_id);
        } else if (strcmp(key, "time_ms") == 0) {
            rc = get_i64(&c, v, &s->time_ms);
        } else if (strcmp(key, "status") == 0) {
            rc = get_enum(&c, v, &E_STATUS, &e);
            s->status = (Bb__Status)e;
        } else if (strcmp(key, "text") == 0) {
            rc = get_str(&c, v, MAX_TEXT, &s->text);
        } else if (strcmp(key, "source") == 0) {
            rc = get_enum(&c, v, &E_SOURCE, &e);
            s->source = (Bb__Source)e;
        } else if (strcmp(key, "reporter_id") == 0) {
            rc = get_u64(&c, v, 0, UINT64_MAX, &s->reporter_id);
        } else if (strcmp(key, "category") == 0) {
            rc = get_enum(&c, v, &E_CATEGORY, &e);
            s->category = (Bb__Category)e;
        } else if (strcmp(key, "urgency") == 0) {
            rc = get_enum(&c, v, &E_URGENCY, &e);
            s->urgency = (Bb__Urgency)e;
        } else if (strcmp(key, "locale") == 0) {
            rc = get_str(&c, v, 15, &s->locale);
        } else {
            path_pop(&c, old);
            return unknown(&c, key);
        }
        path_pop(&c, old);
        if (rc != BB_OK) {
            return rc;
        }
    }
    *out = s;
    return BB_OK;
}

/* ---- records to JSON (directory export) -------------------------------------------------- */

struct json_object *bb_json_id(uint64_t id)
{
    if (id <= (UINT64_C(1) << 53)) {
        return json_object_new_int64((int64_t)id);
    }
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, id);
    return json_object_new_string(buf);
}

static struct json_object *enum_array(const struct enum_names *e, const int *v, size_t n)
{
    struct json_object *a = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object_array_add(a, json_object_new_string(enum_name(e, v[i])));
    }
    return a;
}

static struct json_object *id_array(const uint64_t *v, size_t n)
{
    struct json_object *a = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object_array_add(a, bb_json_id(v[i]));
    }
    return a;
}

static void add_hhmm(struct json_object *o, const char *key, uint32_t minute)
{
    char buf[8];
    snprintf(buf, sizeof(buf), "%02u:%02u", (minute / 60) % 100, minute % 60);
    json_object_object_add(o, key, json_object_new_string(buf));
}

static struct json_object *from_prefs(const Bb__Preferences *p)
{
    struct json_object *o = json_object_new_object();
    if (p->n_categories) {
        json_object_object_add(
            o, "categories", enum_array(&E_CATEGORY, (const int *)p->categories, p->n_categories));
    }
    if (p->min_urgency) {
        json_object_object_add(o, "min_urgency",
                               json_object_new_string(enum_name(&E_URGENCY, p->min_urgency)));
    }
    /* Absent sets mean the defaults, an empty one no channel: keep both. */
    const Bb__ChannelSet *sets[] = {p->in_progress, p->recent, p->informational};
    const char *names[] = {"in_progress", "recent", "informational"};
    for (size_t i = 0; i < 3; i++) {
        if (sets[i]) {
            json_object_object_add(
                o, names[i],
                enum_array(&E_CHANNEL, (const int *)sets[i]->channels, sets[i]->n_channels));
        }
    }
    if (p->quiet) {
        struct json_object *q = json_object_new_object();
        add_hhmm(q, "from", p->quiet->from_minute);
        add_hhmm(q, "to", p->quiet->to_minute);
        json_object_object_add(o, "quiet", q);
    }
    if (p->max_per_hour) {
        json_object_object_add(o, "max_per_hour", json_object_new_int64(p->max_per_hour));
    }
    if (p->digest_hour) {
        json_object_object_add(o, "digest_hour", json_object_new_int64(p->digest_hour));
    }
    if (p->digest_weekly) {
        json_object_object_add(o, "digest_weekly", json_object_new_boolean(1));
    }
    return o;
}

struct json_object *bb_json_from_user(const Bb__User *u)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", bb_json_id(u->id));
    if (u->screen_name && *u->screen_name) {
        json_object_object_add(o, "screen_name", json_object_new_string(u->screen_name));
    }
    if (u->locale && *u->locale) {
        json_object_object_add(o, "locale", json_object_new_string(u->locale));
    }
    if (u->time_zone && *u->time_zone) {
        json_object_object_add(o, "time_zone", json_object_new_string(u->time_zone));
    }
    if (u->watch) {
        struct json_object *w = json_object_new_object();
        json_object_object_add(w, "lat", json_object_new_double(u->watch->lat));
        json_object_object_add(w, "lon", json_object_new_double(u->watch->lon));
        if (u->watch->radius_m) {
            json_object_object_add(w, "radius_m", json_object_new_int64(u->watch->radius_m));
        }
        json_object_object_add(o, "watch", w);
    }
    if (u->prefs) {
        json_object_object_add(o, "prefs", from_prefs(u->prefs));
    }
    if (u->n_muted_authors) {
        json_object_object_add(o, "muted_authors", id_array(u->muted_authors, u->n_muted_authors));
    }
    if (u->n_muted_groups) {
        json_object_object_add(o, "muted_groups", id_array(u->muted_groups, u->n_muted_groups));
    }
    return o;
}

struct json_object *bb_json_from_group(const Bb__Group *g)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "id", bb_json_id(g->id));
    if (g->name && *g->name) {
        json_object_object_add(o, "name", json_object_new_string(g->name));
    }
    if (g->n_cells) {
        struct json_object *a = json_object_new_array();
        for (size_t i = 0; i < g->n_cells; i++) {
            json_object_array_add(a, json_object_new_string(g->cells[i]));
        }
        json_object_object_add(o, "cells", a);
    }
    if (g->policy) {
        const Bb__Policy *p = g->policy;
        struct json_object *po = json_object_new_object();
        if (p->n_categories) {
            json_object_object_add(
                po, "categories",
                enum_array(&E_CATEGORY, (const int *)p->categories, p->n_categories));
        }
        if (p->min_urgency) {
            json_object_object_add(po, "min_urgency",
                                   json_object_new_string(enum_name(&E_URGENCY, p->min_urgency)));
        }
        if (p->n_sources) {
            json_object_object_add(po, "sources",
                                   enum_array(&E_SOURCE, (const int *)p->sources, p->n_sources));
        }
        if (p->public_posting) {
            json_object_object_add(po, "public_posting", json_object_new_boolean(1));
        }
        json_object_object_add(o, "policy", po);
    }
    if (g->location_precision) {
        json_object_object_add(o, "location_precision",
                               json_object_new_int64(g->location_precision));
    }
    return o;
}

struct json_object *bb_json_explain_line(const struct bb_explain_line *l, int with_name,
                                         const char *screen_name)
{
    struct json_object *o = json_object_new_object(), *ch = json_object_new_array(),
                       *notes = json_object_new_array();
    if (l->user_id) {
        json_object_object_add(o, "user", json_object_new_uint64(l->user_id));
        if (with_name) {
            json_object_object_add(o, "screen_name",
                                   screen_name ? json_object_new_string(screen_name) : NULL);
        }
    }
    json_object_object_add(o, "route",
                           l->route ? json_object_new_string(bb_route_kind_name(l->route)) : NULL);
    json_object_object_add(o, "verdict", json_object_new_string(bb_verdict_name(l->verdict)));
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        if (l->channels & (1u << c)) {
            json_object_array_add(ch, json_object_new_string(bb_channel_name(c)));
        }
    }
    json_object_object_add(o, "channels", ch);
    if (l->notes & BB_NOTE_QUIET) {
        json_object_array_add(notes, json_object_new_string("quiet_hours"));
    }
    if (l->notes & BB_NOTE_CAPPED) {
        json_object_array_add(notes, json_object_new_string("capped"));
    }
    json_object_object_add(o, "notes", notes);
    json_object_object_add(o, "group", l->group_id ? json_object_new_uint64(l->group_id) : NULL);
    return o;
}

void bb_json_explain_totals(struct json_object *o, const struct bb_route_result *res,
                            const struct bb_dir *dir, const char *last_id)
{
    struct json_object *d = json_object_new_object(), *ch = json_object_new_object();
    struct bb_dir_stats ds;
    bb_dir_stats(dir, &ds);
    json_object_object_add(d, "users", json_object_new_int64((int64_t)ds.users));
    json_object_object_add(d, "groups", json_object_new_int64((int64_t)ds.groups));
    json_object_object_add(d, "last_id", json_object_new_string(last_id));
    json_object_object_add(o, "directory", d);
    json_object_object_add(o, "considered", json_object_new_uint64(res->decisions));
    json_object_object_add(o, "recipients", json_object_new_int64(res->recipients));
    json_object_object_add(o, "deliveries", json_object_new_int64(res->deliveries));
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        uint32_t n = 0;
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            n += res->lists[c][l].n;
        }
        json_object_object_add(ch, bb_channel_name(c),
                               json_object_new_int64(c == 4 ? (int64_t)res->social.n : n));
    }
    json_object_object_add(o, "channels", ch);
}
