/* The push plug-ins' shared message helpers (push_text.h).
 *
 * Threads: no state; the host's event-loop thread. */
#include "push_text.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t push_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t push_ttl_s(int urgency)
{
    return urgency == BB_URGENCY_IN_PROGRESS ? 3600
           : urgency == BB_URGENCY_RECENT    ? 6 * 3600
                                             : 24 * 3600;
}

/* The longest prefix of s of at most max bytes that ends on a UTF-8
 * character boundary. */
static size_t utf8_cut(const char *s, size_t max)
{
    size_t len = strlen(s);
    if (len <= max) {
        return len;
    }
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80) {
        max--;
    }
    return max;
}

void push_clip(const char *s, size_t max, char *buf, size_t cap)
{
    size_t n = utf8_cut(s, max);
    if (n == strlen(s)) {
        snprintf(buf, cap, "%s", s);
    } else {
        snprintf(buf, cap, "%.*s\xe2\x80\xa6", (int)n, s);
    }
}

void push_alert(const struct bb_notification *n, int show_text, size_t text_max, char *title,
                size_t title_cap, char *body, size_t body_cap)
{
    push_clip(n->title ? n->title : "", PUSH_TITLE_MAX, title, title_cap);
    if (show_text && n->text && n->text[0]) {
        push_clip(n->text, text_max, body, body_cap);
        return;
    }
    const char *g = n->group_name ? n->group_name : "";
    const char *c = n->cell ? n->cell : "";
    char where[512];
    if (g[0] && c[0]) {
        snprintf(where, sizeof(where), "%s (%s)", g, c);
    } else {
        snprintf(where, sizeof(where), "%s", g[0] ? g : c);
    }
    push_clip(where, text_max < 200 ? text_max : 200, body, body_cap);
}

void push_json_str(json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, json_object_new_string(v ? v : ""));
}

int push_render(const struct bb_host_api *host, push_build_fn *build, const void *ctx,
                const struct bb_delivery *d, char **out, size_t *outlen)
{
    for (size_t max = PUSH_TEXT_MAX; max >= 16; max /= 2) {
        json_object *o = build(ctx, d, max);
        if (!o) {
            return -1;
        }
        size_t len = 0;
        const char *s = json_object_to_json_string_length(
            o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
        if (s && len <= PUSH_MAX_PAYLOAD) {
            char *p = host->alloc(len + 1);
            if (p) {
                memcpy(p, s, len + 1);
            }
            json_object_put(o);
            if (!p) {
                return -1;
            }
            *out = p;
            *outlen = len;
            return 0;
        }
        json_object_put(o);
    }
    return -1;
}
