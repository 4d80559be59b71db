/* The deliveries buurtbus-plugin-check hands to format() and send(): valid
 * ones (each urgency and kind, digest, group recipient, locales, media) and
 * hostile ones (empty strings, 64 KiB of text, emoji/RTL/combining marks,
 * quotes and control characters, no contact, recipient 0). Everything is
 * built once and stays valid until bb_cases_free (a send's delivery must
 * outlive its done()).
 *
 * Threads: the tool's main thread. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* Personal strings: the host fails a plug-in that logs them. */
#define EMAIL "check-recipient@example.invalid"
#define TOKEN "checktoken-7f3a9c0d"
#define TEXT "Checktext-c41d: er loopt iemand door de tuinen aan de Lindelaan."

#define NCASES 20
#define NSENDS 1024

static struct bb_case cases[NCASES];
static size_t ncases;
static bool built;
static char *long_text, *long_title;

static const struct bb_media two_media[] = {
    {"https://media.example.invalid/a.jpg", "image/jpeg", 1},
    {"https://media.example.invalid/b.mp4", "video/mp4", 0},
};
static const struct bb_media empty_media[] = {{"", "", 0}};

static struct bb_contact contact = {
    .struct_size = sizeof(struct bb_contact),
    .email = EMAIL,
    .push_token = TOKEN,
    .push_platform = "fcm",
    .locale = "nl",
    .screen_name = "Buurvrouw",
    .unsubscribe_url = "https://example.invalid/unsubscribe?u=check",
    .endpoint = "",
};
static struct bb_contact contact_en = {
    .struct_size = sizeof(struct bb_contact),
    .email = EMAIL,
    .push_token = TOKEN,
    .push_platform = "apns",
    .locale = "en",
    .screen_name = "Neighbour",
    .unsubscribe_url = "",
    .endpoint = "",
};
static struct bb_contact contact_group = {
    .struct_size = sizeof(struct bb_contact),
    .email = "",
    .push_token = "",
    .push_platform = "",
    .locale = "nl",
    .screen_name = "Buurtpreventie Lindelaan",
    .unsubscribe_url = "",
    .endpoint = "https://hooks.example.invalid/group/17",
};
static const struct bb_contact contact_empty = {
    .struct_size = sizeof(struct bb_contact),
    .email = "",
    .push_token = "",
    .push_platform = "",
    .locale = "",
    .screen_name = "",
    .unsubscribe_url = "",
    .endpoint = "",
};

static const struct bb_notification base_n = {
    .struct_size = sizeof(struct bb_notification),
    .kind = BB_KIND_REPORT,
    .report_id = "01JDQ2V7R3CHECK0000000001",
    .status_id = "",
    .time_ms = 1795000000000,
    .category = 1,
    .category_name = "burglary",
    .urgency = BB_URGENCY_RECENT,
    .source = 1,
    .locale = "nl",
    .title = "Inbraak in de buurt",
    .text = TEXT,
    .author = "Buurvrouw",
    .anonymous = 0,
    .cell = "u173zq",
    .lat = 52.3702,
    .lon = 4.8952,
    .group_name = "Lindelaan",
    .status = 0,
    .media = NULL,
    .nmedia = 0,
};

static struct bb_notification notes[NCASES];
static struct bb_notification digest_items[3];
static const struct bb_notification *digest_ptrs[3];

static struct bb_case *add(const char *name, bool hostile, uint32_t caps)
{
    struct bb_case *c = &cases[ncases];
    notes[ncases] = base_n;
    c->name = name;
    c->hostile = hostile;
    c->need_caps = caps;
    c->d = (struct bb_delivery){
        .struct_size = sizeof(struct bb_delivery),
        .delivery_id = "chk:format:0001",
        .recipient = 4711,
        .recipient_kind = BB_RECIPIENT_USER,
        .attempt = 1,
        .n = &notes[ncases],
        .contact = &contact,
    };
    ncases++;
    return c;
}

static struct bb_notification *note(struct bb_case *c)
{
    return (struct bb_notification *)c->d.n;
}

static char *repeat(const char *unit, size_t total)
{
    size_t ul = strlen(unit);
    char *s = malloc(total + 1);
    if (!s) {
        abort();
    }
    size_t n = 0;
    while (n + ul <= total) {
        memcpy(s + n, unit, ul);
        n += ul;
    }
    s[n] = '\0';
    return s;
}

static void build(void)
{
    struct bb_case *c;
    struct bb_notification *n;

    c = add("report_informational", false, 0);
    note(c)->urgency = BB_URGENCY_INFORMATIONAL;
    c = add("report_recent", false, 0);
    c = add("report_in_progress", false, 0);
    note(c)->urgency = BB_URGENCY_IN_PROGRESS;
    note(c)->category = 4;
    note(c)->category_name = "suspicious_person";
    c = add("status", false, 0);
    n = note(c);
    n->kind = BB_KIND_STATUS;
    n->status_id = "01JDQ2V7R3CHECKSTATUS0001";
    n->status = 2;
    n->title = "Update: politie ter plaatse";
    c = add("report_anonymous", false, 0);
    note(c)->anonymous = 1;
    note(c)->author = "";
    c = add("report_media", false, 0);
    note(c)->media = two_media;
    note(c)->nmedia = 2;
    c = add("locale_en", false, 0);
    n = note(c);
    n->locale = "en";
    n->title = "Burglary nearby";
    n->text = "Someone is walking through the back gardens.";
    c->d.contact = &contact_en;
    c = add("locale_unknown", false, 0);
    note(c)->locale = "tlh";
    c = add("digest", false, BB_CAP_DIGEST);
    n = note(c);
    n->kind = BB_KIND_DIGEST;
    n->title = "Samenvatting van vandaag";
    for (size_t i = 0; i < 3; i++) {
        digest_items[i] = base_n;
        digest_items[i].urgency = (int)i + 1;
        digest_ptrs[i] = &digest_items[i];
    }
    digest_items[1].kind = BB_KIND_STATUS;
    digest_items[1].status_id = "01JDQ2V7R3CHECKSTATUS0002";
    digest_items[2].media = two_media;
    digest_items[2].nmedia = 2;
    c->d.items = digest_ptrs;
    c->d.nitems = 3;
    c = add("group_recipient", false, BB_CAP_PUBLIC); /* cases[9]: bb_send_delivery */
    c->d.recipient = 17;
    c->d.recipient_kind = BB_RECIPIENT_GROUP;
    c->d.contact = &contact_group;

    c = add("hostile_empty_strings", true, 0);
    n = note(c);
    n->report_id = n->status_id = n->category_name = n->locale = n->title = n->text = "";
    n->author = n->cell = n->group_name = "";
    n->lat = n->lon = 0;
    c->d.delivery_id = "";
    c->d.contact = &contact_empty;
    long_text = repeat("Lange tekst met een é en een 🏠. ", 64 * 1024);
    long_title = repeat("Titel ", 4096);
    c = add("hostile_long_text", true, 0);
    note(c)->text = long_text;
    note(c)->title = long_title;
    c = add("hostile_unicode", true, 0);
    n = note(c);
    n->title = "\xf0\x9f\x9a\xa8 \xd7\x90\xd7\x96\xd7\xa2\xd7\xa7\xd7\x94 \xe2\x80\xae\xd8\xb3\xd8"
               "\xb1\xd9\x82\xd8\xa9\xe2\x80\xac";
    n->text = "e\xcc\x81\xcc\x81\xcc\x81 Z\xcd\x91\xcd\x8a\xcd\x92 "
              "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 "
              "\xef\xbb\xbf\xe2\x80\x8b\xe2\x80\xa8\xe2\x80\xa9 \xf4\x8f\xbf\xbf end";
    n->author = "\xf0\x9f\x98\x80\xe2\x80\x8f";
    n->group_name = "\xd8\xa7\xd9\x84\xd8\xad\xd9\x8a";
    c = add("hostile_quotes_controls", true, 0);
    n = note(c);
    n->title = "\"quoted\" 'single' <b>&amp;</b> \\back\\slash";
    n->text = "line one\nline two\r\n\ttab \x01\x02\x1b[31mred\x1b[0m \x7f end\r.\r\n.\n";
    n->author = "a\"b\\c\nd";
    n->category_name = "x\"y";
    n->cell = "\t";
    c = add("hostile_no_contact", true, 0);
    c->d.contact = &contact_empty;
    c = add("hostile_zero_recipient", true, 0);
    c->d.recipient = 0;
    c->d.attempt = 4000000000u;
    c = add("hostile_nan_location", true, 0);
    note(c)->lat = NAN;
    note(c)->lon = INFINITY;
    note(c)->time_ms = -1;
    note(c)->urgency = 0;
    note(c)->category = -5;
    c = add("hostile_media_empty", true, 0);
    note(c)->media = empty_media;
    note(c)->nmedia = 1;
    c = add("hostile_digest_no_items", true, BB_CAP_DIGEST);
    note(c)->kind = BB_KIND_DIGEST;
    c->d.items = NULL;
    c->d.nitems = 0;

    bb_check_host_mark_private(EMAIL);
    bb_check_host_mark_private(TOKEN);
    bb_check_host_mark_private("Checktext-c41d");
    built = true;
}

const struct bb_case *bb_cases(size_t *n)
{
    if (!built) {
        build();
    }
    *n = ncases;
    return cases;
}

static struct bb_delivery sends[NSENDS];
static char send_ids[NSENDS][32];

const struct bb_delivery *bb_send_delivery(unsigned i, uint32_t caps)
{
    if (!built) {
        build();
    }
    i %= NSENDS;
    snprintf(send_ids[i], sizeof(send_ids[i]), "chk:send:%04u", i);
    /* report_recent, a plain valid delivery; a public channel gets groups only. */
    sends[i] = caps & BB_CAP_PUBLIC ? cases[9].d : cases[1].d;
    sends[i].delivery_id = send_ids[i];
    sends[i].recipient = 1000 + i;
    return &sends[i];
}

static char *overrides[16];
static size_t noverrides;

int bb_cases_set_contact(const char *name, const char *value)
{
    static const char *const fields[] = {"email",   "push_token",  "push_platform",
                                         "locale",  "screen_name", "unsubscribe_url",
                                         "endpoint"};
    size_t f = 0;
    while (f < sizeof(fields) / sizeof(fields[0]) && strcmp(fields[f], name) != 0) {
        f++;
    }
    if (f == sizeof(fields) / sizeof(fields[0]) || noverrides == 16) {
        return -1;
    }
    char *v;
    if (value[0] == '@') {
        FILE *fp = fopen(value + 1, "r");
        if (!fp) {
            return -1;
        }
        v = calloc(1, 65536);
        size_t n = v ? fread(v, 1, 65535, fp) : 0;
        fclose(fp);
        if (!v) {
            return -1;
        }
        while (n && (v[n - 1] == '\n' || v[n - 1] == '\r')) {
            v[--n] = '\0';
        }
    } else if (!(v = strdup(value))) {
        return -1;
    }
    overrides[noverrides++] = v;
    struct bb_contact *all[] = {&contact, &contact_en, &contact_group};
    for (size_t i = 0; i < 3; i++) {
        const char **field[] = {&all[i]->email,   &all[i]->push_token,  &all[i]->push_platform,
                                &all[i]->locale,  &all[i]->screen_name, &all[i]->unsubscribe_url,
                                &all[i]->endpoint};
        *field[f] = v;
    }
    if (f == 0 || f == 1) {
        bb_check_host_mark_private(v);
    }
    return 0;
}

void bb_cases_free(void)
{
    for (size_t i = 0; i < noverrides; i++) {
        free(overrides[i]);
    }
    noverrides = 0;
    free(long_text);
    free(long_title);
    long_text = long_title = NULL;
}

bool bb_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char b = p[i];
        size_t n;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xe0) == 0xc0) {
            n = 1;
            cp = b & 0x1f;
        } else if ((b & 0xf0) == 0xe0) {
            n = 2;
            cp = b & 0x0f;
        } else if ((b & 0xf8) == 0xf0) {
            n = 3;
            cp = b & 0x07;
        } else {
            return false;
        }
        if (i + n >= len) { /* truncated sequence */
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        static const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return false;
        }
        i += n + 1;
    }
    return true;
}
