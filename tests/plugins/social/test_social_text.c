/* Unit tests of the public post renderer (workers/plugins/common/
 * social_text.c) shared by the mastodon, x and facebook plug-ins: the nl
 * and en templates, the day and part of day in Europe/Amsterdam, digests,
 * budgets under both counting rules, cuts at code point boundaries, and
 * that the report's text, author, title and coordinates never appear.
 *
 * Threads: the test's main thread only. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "social_text.h"

#define SECRET_TEXT "GEHEIM: de man met de rode jas woont op nummer 12"
#define SECRET_AUTHOR "Jan Geheimzinnig"
#define SECRET_TITLE "Inbraak bij Jan op nummer 12"
/* 2024-11-28 13:20 UTC: Thursday 14:20 in Amsterdam (CET). */
#define THURSDAY_AFTERNOON 1732800000000LL

static const struct bb_style_case {
    const char *name;
    struct bb_social_style st;
} styles[] = {
    {"mastodon", {500, BB_SOCIAL_CODEPOINTS, 1}},  {"x", {280, BB_SOCIAL_X_WEIGHTED, 1}},
    {"facebook", {2000, BB_SOCIAL_CODEPOINTS, 0}}, {"tiny-x", {60, BB_SOCIAL_X_WEIGHTED, 1}},
    {"tinier", {12, BB_SOCIAL_CODEPOINTS, 0}},
};

static struct bb_notification note(int category, const char *locale, const char *group)
{
    return (struct bb_notification){
        .struct_size = sizeof(struct bb_notification),
        .kind = BB_KIND_REPORT,
        .report_id = "r-123",
        .status_id = "",
        .time_ms = THURSDAY_AFTERNOON,
        .category = category,
        .category_name = "burglary",
        .urgency = BB_URGENCY_IN_PROGRESS,
        .source = 1,
        .locale = locale,
        .title = SECRET_TITLE,
        .text = SECRET_TEXT,
        .author = SECRET_AUTHOR,
        .cell = "u1hbcq7",
        .lat = 51.690123,
        .lon = 5.301234,
        .group_name = group,
    };
}

static struct bb_delivery single(const struct bb_notification *n)
{
    return (struct bb_delivery){.struct_size = sizeof(struct bb_delivery),
                                .delivery_id = "r:r-123:5:7",
                                .recipient = 7,
                                .recipient_kind = BB_RECIPIENT_GROUP,
                                .attempt = 1,
                                .n = n};
}

static int utf8_valid(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    while (*u) {
        int n = *u < 0x80             ? 0
                : (*u & 0xe0) == 0xc0 ? 1
                : (*u & 0xf0) == 0xe0 ? 2
                : (*u & 0xf8) == 0xf0 ? 3
                                      : -1;
        if (n < 0) {
            return 0;
        }
        u++;
        for (int i = 0; i < n; i++, u++) {
            if ((*u & 0xc0) != 0x80) {
                return 0;
            }
        }
    }
    return 1;
}

/* Everything a post must be, whatever it says. */
static void check_post(const char *p, const struct bb_social_style *st)
{
    assert_non_null(p);
    assert_true(utf8_valid(p));
    assert_true(bb_social_length(p, strlen(p), st->count) <= st->budget);
    const char *forbidden[] = {SECRET_TEXT,  "GEHEIM",    SECRET_AUTHOR, "Geheimzinnig",
                               SECRET_TITLE, "nummer 12", "u1hbcq7",     "51.69",
                               "5.30",       "51,69",     "\n"};
    for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++) {
        if (strstr(p, forbidden[i])) {
            print_error("forbidden \"%s\" in: %s\n", forbidden[i], p);
            fail();
        }
    }
}

static char *render(const struct bb_delivery *d, const struct bb_social_style *st)
{
    char *p = bb_social_render(d, st);
    check_post(p, st);
    return p;
}

/* ---- the cases -------------------------------------------------------------------------- */

static void single_nl_en(void **state)
{
    const struct bb_social_style st = {500, BB_SOCIAL_CODEPOINTS, 0};
    struct bb_notification n = note(1, "nl", "Centrum, 's-Hertogenbosch");
    struct bb_delivery d = single(&n);
    char *p = render(&d, &st);
    assert_string_equal(p, "\xf0\x9f\x9a\xa8 Inbraak \xe2\x80\x94 Centrum, 's-Hertogenbosch "
                           "(omgeving u1hbcq), donderdagmiddag. Nu aan de gang. #buurtpreventie");
    free(p);

    n.locale = "en-GB";
    n.urgency = BB_URGENCY_RECENT;
    n.category = 3;
    p = render(&d, &st);
    assert_string_equal(p, "\xe2\x9a\xa0\xef\xb8\x8f Suspicious vehicle \xe2\x80\x94 Centrum, "
                           "'s-Hertogenbosch (area u1hbcq), Thursday afternoon. Just happened. "
                           "#neighbourhoodwatch");
    free(p);

    /* Another language falls back to nl; no group, no cell, no time. */
    n.locale = "de";
    n.group_name = "";
    n.cell = "";
    n.time_ms = 0;
    n.urgency = BB_URGENCY_INFORMATIONAL;
    n.category = 10;
    p = render(&d, &st);
    assert_string_equal(p, "\xe2\x84\xb9\xef\xb8\x8f Openbaar vervoer. Ter informatie. "
                           "#buurtpreventie");
    free(p);

    /* A name never mentions anyone: '@' is shown as the fullwidth U+FF20. */
    n.group_name = "Buurt @admin@mastodon.social";
    p = render(&d, &st);
    assert_null(strchr(p, '@'));
    assert_non_null(strstr(p, "Buurt \xef\xbc\xa0"
                              "admin\xef\xbc\xa0"
                              "mastodon.social"));
    free(p);
    n.group_name = "";

    /* A cell that is not a geohash is left out, not shown. */
    n.cell = "51.690123,5.301234";
    p = render(&d, &st);
    assert_null(strstr(p, "omgeving"));
    free(p);
}

static void status_update(void **state)
{
    const struct bb_social_style st = {280, BB_SOCIAL_X_WEIGHTED, 0};
    struct bb_notification n = note(1, "nl", "Centrum");
    n.kind = BB_KIND_STATUS;
    n.status_id = "s-9";
    n.status = 3;
    struct bb_delivery d = single(&n);
    char *p = render(&d, &st);
    assert_string_equal(p, "\xf0\x9f\x94\x94 Update inbraak \xe2\x80\x94 Centrum (omgeving "
                           "u1hbcq), donderdagmiddag: politie ter plaatse. #buurtpreventie");
    free(p);
    n.locale = "en";
    n.status = 99;
    p = render(&d, &st);
    assert_string_equal(p, "\xf0\x9f\x94\x94 Update on burglary \xe2\x80\x94 Centrum (area "
                           "u1hbcq), Thursday afternoon: updated. #neighbourhoodwatch");
    free(p);
}

/* Day and part of day in Europe/Amsterdam, summer and winter time; the
 * small hours belong to the night of the day before. */
static void time_of_day(void **state)
{
    const struct bb_social_style st = {500, BB_SOCIAL_CODEPOINTS, 0};
    const struct {
        int64_t ms;
        const char *nl, *en;
    } cases[] = {
        /* Mon 1 Jul 2024 22:30Z = Tue 00:30 CEST: the night of Monday */
        {1719873000000LL, "maandagnacht", "Monday night"},
        /* Mon 1 Jan 2024 22:30Z = 23:30 CET */
        {1704148200000LL, "maandagavond", "Monday evening"},
        /* Sun 31 Mar 2024 04:30Z = 06:30 CEST (summer time began at 01:00Z) */
        {1711859400000LL, "zondagochtend", "Sunday morning"},
        /* Sun 31 Mar 2024 00:59Z = 01:59 CET, still winter time */
        {1711846740000LL, "zaterdagnacht", "Saturday night"},
        /* Sun 27 Oct 2024 04:30Z = 05:30 CET (winter time again since 01:00Z) */
        {1730003400000LL, "zaterdagnacht", "Saturday night"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct bb_notification n = note(1, "nl", "Centrum");
        n.time_ms = cases[i].ms;
        struct bb_delivery d = single(&n);
        char *p = render(&d, &st);
        if (!strstr(p, cases[i].nl)) {
            print_error("case %zu: want %s in %s\n", i, cases[i].nl, p);
            fail();
        }
        free(p);
        n.locale = "en";
        p = render(&d, &st);
        if (!strstr(p, cases[i].en)) {
            print_error("case %zu: want %s in %s\n", i, cases[i].en, p);
            fail();
        }
        free(p);
    }
}

static void every_category(void **state)
{
    const struct bb_social_style st = {280, BB_SOCIAL_X_WEIGHTED, 0};
    const char *locales[] = {"nl", "en"};
    for (size_t l = 0; l < 2; l++) {
        for (int c = -1; c <= 12; c++) {
            struct bb_notification n = note(c, locales[l], "Centrum");
            struct bb_delivery d = single(&n);
            char *p = render(&d, &st);
            assert_true(strstr(p, l == 0 ? "#buurtpreventie" : "#neighbourhoodwatch") != NULL);
            free(p);
        }
    }
}

static void digest_counts(void **state)
{
    const struct bb_social_style st = {500, BB_SOCIAL_CODEPOINTS, 0};
    struct bb_notification a = note(1, "nl", "Centrum"), b = note(1, "nl", "Centrum"),
                           c = note(2, "nl", "Centrum"), s = note(1, "nl", "Centrum");
    b.time_ms = a.time_ms - 3 * 86400000LL;
    s.kind = BB_KIND_STATUS;
    s.status = 5;
    const struct bb_notification *items[] = {&a, &c, &b, &s};
    struct bb_notification head = {.struct_size = sizeof(head),
                                   .kind = BB_KIND_DIGEST,
                                   .report_id = "",
                                   .status_id = "",
                                   .category_name = "",
                                   .locale = "nl",
                                   .title = "",
                                   .text = "",
                                   .author = "",
                                   .cell = "",
                                   .group_name = ""};
    struct bb_delivery d = single(&head);
    d.items = items;
    d.nitems = 4;
    char *p = render(&d, &st);
    assert_string_equal(p, "\xf0\x9f\x93\x8a Afgelopen week in Centrum: 3 meldingen (+1 updates) "
                           "\xe2\x80\x94 2\xc3\x97 inbraak, 1\xc3\x97 verdachte persoon. "
                           "#buurtpreventie");
    free(p);

    /* en, within a day, without the update; the header names the group. */
    head.locale = "en";
    head.group_name = "Old Town";
    b.time_ms = a.time_ms - 3600000LL;
    d.nitems = 3;
    p = render(&d, &st);
    assert_string_equal(p, "\xf0\x9f\x93\x8a Past 24 hours in Old Town: 3 reports \xe2\x80\x94 "
                           "2\xc3\x97 burglary, 1\xc3\x97 suspicious person. #neighbourhoodwatch");
    free(p);

    /* Nothing collected. */
    d.nitems = 0;
    head.locale = "nl";
    p = render(&d, &st);
    assert_string_equal(p, "\xf0\x9f\x93\x8a Afgelopen 24 uur in Old Town: geen meldingen. "
                           "#buurtpreventie");
    free(p);
}

/* Long group names and many categories stay within every budget. */
static void budgets(void **state)
{
    static char longname[4096], wide[4096];
    longname[0] = wide[0] = '\0';
    for (int i = 0; i < 100; i++) {
        strcat(longname, "Lange Buurt ");
        strcat(wide, "\xe6\x9d\xb1\xe4\xba\xac Stra\xc3\x9f"
                     "e \xf0\x9f\x8f\xa0 ");
    }
    const char *groups[] = {longname, wide, "Centrum"};
    static struct bb_notification many[60];
    const struct bb_notification *items[60];
    for (size_t s = 0; s < sizeof(styles) / sizeof(styles[0]); s++) {
        const struct bb_social_style *st = &styles[s].st;
        for (size_t g = 0; g < 3; g++) {
            for (int lang = 0; lang < 2; lang++) {
                struct bb_notification n = note(7, lang ? "en" : "nl", groups[g]);
                struct bb_media m[] = {
                    {"https://media.example.org/a/very/long/path/photo.jpg", "image/jpeg", 1}};
                n.media = m;
                n.nmedia = 1;
                struct bb_delivery d = single(&n);
                free(render(&d, st));
                for (size_t i = 0; i < 60; i++) {
                    many[i] = note((int)(i % 11), lang ? "en" : "nl", groups[g]);
                    items[i] = &many[i];
                }
                struct bb_notification head = note(0, lang ? "en" : "nl", "");
                head.kind = BB_KIND_DIGEST;
                d.n = &head;
                d.items = items;
                d.nitems = 60;
                char *p = render(&d, st);
                if (st->budget >= 200 &&
                    !strstr(p, lang ? "#neighbourhoodwatch" : "#buurtpreventie")) {
                    print_error("%s: hashtag lost: %s\n", styles[s].name, p);
                    fail();
                }
                free(p);
            }
        }
    }
    /* With a short name every category fits on Mastodon; X drops some. */
    for (size_t i = 0; i < 60; i++) {
        many[i] = note((int)(i % 11), "nl", "Centrum");
        items[i] = &many[i];
    }
    struct bb_notification head = note(0, "nl", "");
    head.kind = BB_KIND_DIGEST;
    struct bb_delivery d = single(&head);
    d.items = items;
    d.nitems = 60;
    char *p = render(&d, &styles[0].st);
    assert_non_null(strstr(p, "60 meldingen"));
    assert_non_null(strstr(p, "openbaar vervoer"));
    assert_null(strstr(p, "andere"));
    free(p);
    const struct bb_social_style small = {120, BB_SOCIAL_X_WEIGHTED, 0};
    p = render(&d, &small);
    assert_non_null(strstr(p, "60 meldingen"));
    assert_non_null(strstr(p, "andere"));
    free(p);
}

static void media_links(void **state)
{
    struct bb_notification n = note(1, "nl", "Centrum");
    struct bb_media m[] = {
        {"https://media.example.org/public.jpg", "image/jpeg", 1},
        {"https://media.example.org/private.jpg", "image/jpeg", 0},
        {"javascript:alert(1)", "text/plain", 1},
    };
    n.media = m;
    n.nmedia = 3;
    struct bb_delivery d = single(&n);
    const struct bb_social_style on = {280, BB_SOCIAL_X_WEIGHTED, 1},
                                 off = {280, BB_SOCIAL_X_WEIGHTED, 0};
    char *p = render(&d, &on);
    assert_non_null(strstr(p, " https://media.example.org/public.jpg"));
    assert_null(strstr(p, "private"));
    assert_null(strstr(p, "javascript"));
    free(p);
    p = render(&d, &off);
    assert_null(strstr(p, "https://"));
    free(p);
}

static void counting(void **state)
{
    const struct {
        const char *s;
        size_t cp, x;
    } cases[] = {
        {"abc", 3, 3},
        {"\xe6\x9d\xb1", 1, 2},     /* CJK */
        {"\xf0\x9f\x9a\xa8", 1, 2}, /* emoji */
        {"\xe2\x80\x94", 1, 1},     /* em dash: general punctuation */
        {"\xe2\x80\xa6", 1, 2},     /* ellipsis is outside X's light ranges */
        {"\xc3\xa9\xc3\x97", 2, 2}, /* Latin-1 */
        {"https://example.org/a/very/long/path?x=1", 23, 23},
        {"zie https://a.nl nu", 30, 30},
        {"xhttps://example.org", 20, 20}, /* not a URL on its own */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = strlen(cases[i].s);
        assert_int_equal(bb_social_length(cases[i].s, len, BB_SOCIAL_CODEPOINTS), cases[i].cp);
        assert_int_equal(bb_social_length(cases[i].s, len, BB_SOCIAL_X_WEIGHTED), cases[i].x);
    }
    assert_string_equal(bb_social_lang("en"), "en");
    assert_string_equal(bb_social_lang("EN_us"), "en");
    assert_string_equal(bb_social_lang("eng"), "nl");
    assert_string_equal(bb_social_lang(""), "nl");
}

static void encoders(void **state)
{
    struct bb_social_buf b = {0};
    bb_social_buf_json(&b, "a\"b\\c\nd\x01\xe2\x80\x94");
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\nd\\u0001\xe2\x80\x94\"");
    bb_social_buf_free(&b);
    bb_social_buf_form(&b, "a b&c=d/\xc3\xa9~");
    assert_string_equal(b.p, "a+b%26c%3Dd%2F%C3%A9~");
    bb_social_buf_free(&b);
}

static void retry_after(void **state)
{
    struct bb_http_header h[] = {{"X-RateLimit-Reset", "2026-11-28T17:00:30.000Z"},
                                 {"x-rate-limit-reset", "1800000100"}};
    struct bb_http_response r = {.struct_size = sizeof(r),
                                 .status = 429,
                                 .error = "",
                                 .body = "",
                                 .retry_after_s = 7,
                                 .headers = h,
                                 .nheaders = 2};
    int64_t now = 1795885200; /* 2026-11-28T17:00:00Z */
    assert_int_equal(bb_social_retry_after(&r, "x-ratelimit-reset", now), 30);
    assert_int_equal(bb_social_retry_after(&r, "X-Rate-Limit-Reset", 1800000000), 100);
    /* In the past (skew): still at least a second. */
    assert_int_equal(bb_social_retry_after(&r, "X-RateLimit-Reset", now + 3600), 1);
    assert_int_equal(bb_social_retry_after(&r, "none", now), 7);
    r.nheaders = 0;
    assert_int_equal(bb_social_retry_after(&r, "X-RateLimit-Reset", now), 7);
    r.retry_after_s = -1;
    assert_int_equal(bb_social_retry_after(&r, "X-RateLimit-Reset", now), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(single_nl_en),  cmocka_unit_test(status_update),
        cmocka_unit_test(time_of_day),   cmocka_unit_test(every_category),
        cmocka_unit_test(digest_counts), cmocka_unit_test(budgets),
        cmocka_unit_test(media_links),   cmocka_unit_test(counting),
        cmocka_unit_test(encoders),      cmocka_unit_test(retry_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
