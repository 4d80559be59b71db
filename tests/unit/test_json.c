/* Unit tests for broker/ctl/json.c, the JSON mapping of buurtbusctl:
 * directory lines, reports and status updates to their protobuf messages,
 * one table of valid lines checked field by field and one of invalid lines
 * with the error each must give (path and message). Single-threaded; no
 * Redis. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "bb_err.h"
#include "directory.pb-c.h"
#include "json.h"
#include "report.pb-c.h"

#define NOW_MS 1700000000000LL

static struct bb_jarena *arena;

static int setup(void **state)
{
    arena = bb_jarena_new();
    return arena ? 0 : -1;
}

static int teardown(void **state)
{
    bb_jarena_free(arena);
    return 0;
}

/* Parses and converts one directory line; fails the test on an error. */
static Bb__DirectoryEvent *event(const char *line)
{
    struct json_object *o = NULL;
    Bb__DirectoryEvent *ev = NULL;
    char err[512] = "";
    bb_jarena_reset(arena);
    if (bb_json_parse(line, strlen(line), &o, err, sizeof(err)) != BB_OK ||
        bb_json_directory_event(arena, o, &ev, err, sizeof(err)) != BB_OK) {
        json_object_put(o);
        fail_msg("%s: %s", line, err);
    }
    json_object_put(o);
    /* Every converted event packs and unpacks to itself. */
    size_t n = bb__directory_event__get_packed_size(ev);
    uint8_t buf[4096];
    assert_true(n <= sizeof(buf));
    bb__directory_event__pack(ev, buf);
    Bb__DirectoryEvent *back = bb__directory_event__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_int_equal(back->change_case, ev->change_case);
    bb__directory_event__free_unpacked(back, NULL);
    return ev;
}

/* The error a directory line gives ("" if it converts). */
static const char *event_error(const char *line)
{
    static char err[512];
    struct json_object *o = NULL;
    Bb__DirectoryEvent *ev;
    err[0] = '\0';
    bb_jarena_reset(arena);
    if (bb_json_parse(line, strlen(line), &o, err, sizeof(err)) == BB_OK) {
        bb_json_directory_event(arena, o, &ev, err, sizeof(err));
    }
    json_object_put(o);
    return err;
}

/* ---- valid lines ------------------------------------------------------------------------- */

static void test_user_full(void **state)
{
    Bb__DirectoryEvent *ev = event(
        "{\"user\":{\"id\":1,\"screen_name\":\"Jan\",\"locale\":\"nl\","
        "\"time_zone\":\"Europe/"
        "Amsterdam\",\"watch\":{\"lat\":51.69,\"lon\":5.30,\"radius_m\":500},"
        "\"prefs\":{\"categories\":[\"burglary\"],\"min_urgency\":\"recent\","
        "\"in_progress\":[\"push\",\"inbox\"],\"recent\":[\"push\",\"inbox\"],"
        "\"informational\":[\"inbox\",\"digest\"],\"quiet\":{\"from\":\"22:00\",\"to\":\"07:00\"},"
        "\"max_per_hour\":5,\"digest_hour\":8,\"digest_weekly\":true},"
        "\"muted_authors\":[7],\"muted_groups\":[3]}}");
    assert_int_equal(ev->schema_version, 1);
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_USER_UPSERT);
    const Bb__User *u = ev->user_upsert;
    assert_int_equal(u->id, 1);
    assert_string_equal(u->screen_name, "Jan");
    assert_string_equal(u->locale, "nl");
    assert_string_equal(u->time_zone, "Europe/Amsterdam");
    assert_non_null(u->watch);
    assert_true(u->watch->lat == 51.69 && u->watch->lon == 5.30);
    assert_int_equal(u->watch->radius_m, 500);
    const Bb__Preferences *p = u->prefs;
    assert_non_null(p);
    assert_int_equal(p->n_categories, 1);
    assert_int_equal(p->categories[0], BB__CATEGORY__CATEGORY_BURGLARY);
    assert_int_equal(p->min_urgency, BB__URGENCY__URGENCY_RECENT);
    assert_int_equal(p->in_progress->n_channels, 2);
    assert_int_equal(p->in_progress->channels[0], BB__CHANNEL__CHANNEL_PUSH);
    assert_int_equal(p->in_progress->channels[1], BB__CHANNEL__CHANNEL_INBOX);
    assert_int_equal(p->informational->channels[1], BB__CHANNEL__CHANNEL_DIGEST);
    assert_int_equal(p->quiet->from_minute, 22 * 60);
    assert_int_equal(p->quiet->to_minute, 7 * 60);
    assert_int_equal(p->max_per_hour, 5);
    assert_int_equal(p->digest_hour, 8);
    assert_true(p->digest_weekly);
    assert_int_equal(u->n_muted_authors, 1);
    assert_int_equal(u->muted_authors[0], 7);
    assert_int_equal(u->n_muted_groups, 1);
    assert_int_equal(u->muted_groups[0], 3);
}

static void test_group_full(void **state)
{
    Bb__DirectoryEvent *ev =
        event("{\"group\":{\"id\":2,\"name\":\"De Muntel\",\"cells\":[\"u1hbc\",\"u1hbf\"],"
              "\"policy\":{\"categories\":[\"burglary\",\"suspicious_person\"],"
              "\"min_urgency\":\"in_progress\",\"sources\":[\"resident\",\"police\"],"
              "\"public_posting\":true},\"location_precision\":7}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_GROUP_UPSERT);
    const Bb__Group *g = ev->group_upsert;
    assert_int_equal(g->id, 2);
    assert_string_equal(g->name, "De Muntel");
    assert_int_equal(g->n_cells, 2);
    assert_string_equal(g->cells[1], "u1hbf");
    assert_int_equal(g->policy->n_categories, 2);
    assert_int_equal(g->policy->categories[1], BB__CATEGORY__CATEGORY_SUSPICIOUS_PERSON);
    assert_int_equal(g->policy->min_urgency, BB__URGENCY__URGENCY_IN_PROGRESS);
    assert_int_equal(g->policy->sources[1], BB__SOURCE__SOURCE_POLICE);
    assert_true(g->policy->public_posting);
    assert_int_equal(g->location_precision, 7);
}

static void test_small_changes(void **state)
{
    Bb__DirectoryEvent *ev = event("{\"member\":{\"user\":1,\"group\":2}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_MEMBER_ADD);
    assert_int_equal(ev->member_add->user_id, 1);
    assert_int_equal(ev->member_add->group_id, 2);
    ev = event("{\"unmember\":{\"group\":2,\"user\":1}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_MEMBER_REMOVE);
    assert_int_equal(ev->member_remove->group_id, 2);
    ev = event("{\"erase_user\":1}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_USER_ERASE);
    assert_int_equal(ev->user_erase, 1);
    ev = event("{\"delete_group\":\"18446744073709551615\"}"); /* ids may be strings */
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_GROUP_DELETE);
    assert_true(ev->group_delete == UINT64_MAX);
    ev = event("{\"mute\":{\"user\":1,\"author\":7}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_MUTE);
    assert_int_equal(ev->mute->author_id, 7);
    assert_int_equal(ev->mute->group_id, 0);
    ev = event("{\"unmute\":{\"user\":1,\"group\":3}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_UNMUTE);
    assert_int_equal(ev->unmute->group_id, 3);
    ev = event("{\"follow\":{\"user\":1,\"report\":\"r-1\"}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_FOLLOW);
    assert_string_equal(ev->follow->report_id, "r-1");
    ev = event("{\"unfollow\":{\"user\":1,\"report\":\"r-1\"}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_UNFOLLOW);
    ev = event("{\"preferences\":{\"user\":1,\"prefs\":{\"recent\":[],\"min_urgency\":null}}}");
    assert_int_equal(ev->change_case, BB__DIRECTORY_EVENT__CHANGE_PREFERENCES);
    /* An empty list is "no channel", an absent one the default. */
    assert_non_null(ev->preferences->prefs->recent);
    assert_int_equal(ev->preferences->prefs->recent->n_channels, 0);
    assert_null(ev->preferences->prefs->in_progress);
    ev = event("  {\"user\":{\"id\":5,\"locale\":null}}  \r\n");
    assert_int_equal(ev->user_upsert->id, 5);
    assert_null(ev->user_upsert->watch);
}

static void test_report_and_status(void **state)
{
    const char *text =
        "{\"id\":\"r1\",\"author_id\":1,\"author_screen_name\":\"Jan\",\"group_id\":2,"
        "\"lat\":51.69,\"lon\":5.30,\"category\":\"burglary\",\"urgency\":\"in_progress\","
        "\"source\":\"resident\",\"text\":\"Inbraak "
        "bezig\",\"media\":[{\"url\":\"https://x/a.jpg\","
        "\"mime_type\":\"image/jpeg\",\"publishable\":false}],\"anonymity\":\"neighbour\","
        "\"locale\":\"nl\"}";
    struct json_object *o;
    char err[512];
    Bb__Report *r;
    bb_jarena_reset(arena);
    assert_int_equal(bb_json_parse(text, strlen(text), &o, err, sizeof(err)), BB_OK);
    assert_int_equal(bb_json_report(arena, o, NOW_MS, &r, err, sizeof(err)), BB_OK);
    json_object_put(o);
    assert_int_equal(r->schema_version, 1);
    assert_string_equal(r->id, "r1");
    assert_true(r->time_ms == NOW_MS); /* default: now */
    assert_int_equal(r->author_id, 1);
    assert_int_equal(r->group_id, 2);
    assert_int_equal(r->category, BB__CATEGORY__CATEGORY_BURGLARY);
    assert_int_equal(r->urgency, BB__URGENCY__URGENCY_IN_PROGRESS);
    assert_int_equal(r->source, BB__SOURCE__SOURCE_RESIDENT);
    assert_int_equal(r->anonymity, BB__ANONYMITY__ANONYMITY_NEIGHBOUR);
    assert_int_equal(r->n_media, 1);
    assert_string_equal(r->media[0]->mime_type, "image/jpeg");
    assert_false(r->media[0]->publishable);

    const char *st =
        "{\"id\":\"s1\",\"report_id\":\"r1\",\"time_ms\":5,\"status\":\"police_on_site\","
        "\"source\":\"police\",\"reporter_id\":1,\"category\":\"burglary\","
        "\"urgency\":\"recent\",\"text\":\"Agent ter plaatse\"}";
    Bb__ReportStatus *s;
    assert_int_equal(bb_json_parse(st, strlen(st), &o, err, sizeof(err)), BB_OK);
    assert_int_equal(bb_json_status(arena, o, NOW_MS, &s, err, sizeof(err)), BB_OK);
    json_object_put(o);
    assert_true(s->time_ms == 5);
    assert_int_equal(s->status, BB__STATUS__STATUS_POLICE_ON_SITE);
    assert_int_equal(s->reporter_id, 1);
    assert_string_equal(bb_json_status_name(s->status), "police_on_site");
    assert_string_equal(bb_json_category_name(BB__CATEGORY__CATEGORY_PUBLIC_TRANSPORT),
                        "public_transport");
    assert_string_equal(bb_json_urgency_name(99), "?");
    assert_string_equal(bb_json_source_name(BB__SOURCE__SOURCE_SENSOR), "sensor");
}

/* ---- invalid lines ----------------------------------------------------------------------- */

static const struct {
    const char *line;
    const char *error; /* must appear in the message */
} bad_lines[] = {
    {"{\"user\":{\"id\":1,\"prefs\":{\"min_urgency\":\"soon\"}}}",
     "user.prefs.min_urgency: expected an urgency (informational, recent, in_progress), got "
     "\"soon\""},
    {"{\"user\":{\"screen_name\":\"x\"}}", "user: missing field \"id\""},
    {"{\"user\":{\"id\":0}}", "user.id: must be 1..18446744073709551615, got 0"},
    {"{\"user\":{\"id\":-3}}", "user.id: must not be negative, got -3"},
    {"{\"user\":{\"id\":1.5}}", "user.id: expected an integer, got a fractional number"},
    {"{\"user\":{\"id\":\"12a\"}}", "user.id: expected an integer, got \"12a\""},
    {"{\"user\":{\"id\":1,\"watch\":{\"lat\":91,\"lon\":5}}}", "user.watch.lat: must be -90..90"},
    {"{\"user\":{\"id\":1,\"watch\":{\"lon\":5}}}", "user.watch: missing field \"lat\""},
    {"{\"user\":{\"id\":1,\"watch\":{\"lat\":1,\"lon\":5,\"radius_m\":70000}}}",
     "user.watch.radius_m: must be 0..65535, got 70000"},
    {"{\"user\":{\"id\":1,\"prefs\":{\"quiet\":{\"from\":\"25:00\",\"to\":\"07:00\"}}}}",
     "user.prefs.quiet.from: expected a time HH:MM, got \"25:00\""},
    {"{\"user\":{\"id\":1,\"prefs\":{\"quiet\":{\"from\":\"22:00\"}}}}",
     "user.prefs.quiet: missing field \"to\""},
    {"{\"user\":{\"id\":1,\"prefs\":{\"recent\":[\"push\",\"social\"]}}}",
     "user.prefs.recent[1]: social is for groups' public accounts"},
    {"{\"user\":{\"id\":1,\"prefs\":{\"recent\":\"push\"}}}",
     "user.prefs.recent: expected an array, got a string"},
    {"{\"user\":{\"id\":1,\"prefs\":{\"categories\":[\"burglary\",\"arson\"]}}}",
     "user.prefs.categories[1]: expected a category (burglary, suspicious_person"},
    {"{\"user\":{\"id\":1,\"prefs\":{\"max_per_hour\":300}}}",
     "user.prefs.max_per_hour: must be 0..255, got 300"},
    {"{\"user\":{\"id\":1,\"colour\":\"red\"}}", "user.colour: unknown field"},
    {"{\"user\":{\"id\":1,\"screen_name\":\"a\\u0000b\"}}", "user.screen_name: contains a NUL"},
    {"{\"user\":{\"id\":1,\"muted_authors\":[7,0]}}",
     "user.muted_authors[1]: must be 1..18446744073709551615, got 0"},
    {"{\"user\":\"Jan\"}", "user: expected an object, got a string"},
    {"{\"group\":{\"id\":2,\"cells\":[\"u1hbc\",\"ab!\"]}}",
     "group.cells[1]: expected a geohash of 1..12 characters, got \"ab!\""},
    {"{\"group\":{\"id\":2,\"location_precision\":13}}",
     "group.location_precision: must be 0..12, got 13"},
    {"{\"group\":{\"id\":2,\"policy\":{\"sources\":[\"neighbour\"]}}}",
     "group.policy.sources[0]: expected a source (resident, police, municipality, sensor, "
     "platform)"},
    {"{\"group\":{\"id\":2,\"policy\":{\"public_posting\":\"yes\"}}}",
     "group.policy.public_posting: expected true or false, got a string"},
    {"{\"mute\":{\"user\":1,\"author\":7,\"group\":3}}",
     "mute: needs exactly one of \"author\" and \"group\""},
    {"{\"mute\":{\"user\":1}}", "mute: needs exactly one of"},
    {"{\"follow\":{\"user\":1,\"report\":\"a b\"}}",
     "follow.report: a report id is printable ASCII without spaces or ':'"},
    {"{\"follow\":{\"user\":1}}", "follow: missing field \"report\""},
    {"{\"member\":{\"user\":1}}", "member: missing field \"group\""},
    {"{\"preferences\":{\"user\":1}}", "preferences: missing field \"prefs\""},
    {"{\"erase_user\":true}", "erase_user: expected an integer, got true/false"},
    {"{\"user\":{},\"group\":{}}", "expected an object with exactly one of user, group"},
    {"[1,2]", "expected an object with exactly one of"},
    {"{\"frobnicate\":1}", "unknown change \"frobnicate\": expected one of user, group"},
    {"{\"user\":", "bad JSON at column 9: unexpected end of data"},
    {"{\"user\":{\"id\":1}} x", "bad JSON at column 19: more after the value"},
    {"   ", "bad JSON: empty"},
    {"{\"user\":{\"id\":1,\"screen_name\":\"\xff\"}}", "invalid utf-8"},
    {"{\"user\":{\"id\":1,},}", "bad JSON"},
};

static void test_bad_lines(void **state)
{
    for (size_t i = 0; i < sizeof(bad_lines) / sizeof(bad_lines[0]); i++) {
        const char *err = event_error(bad_lines[i].line);
        if (!strstr(err, bad_lines[i].error)) {
            fail_msg("line %zu: %s\n  gave: %s\n  want: %s", i, bad_lines[i].line, err,
                     bad_lines[i].error);
        }
    }
}

static void test_bad_reports(void **state)
{
    static const struct {
        const char *json, *error;
    } cases[] = {
        {"{\"id\":\"r\",\"urgency\":\"now\"}", "urgency: expected an urgency"},
        {"{\"id\":\"r\",\"lat\":\"x\"}", "lat: expected a number, got a string"},
        {"{\"id\":\"r\",\"lon\":181}", "lon: must be -180..180, got 181"},
        {"{\"media\":[{\"url\":1}]}", "media[0].url: expected a string, got an integer"},
        {"{\"media\":[{\"url\":\"https://x\",\"size\":3}]}", "media[0].size: unknown field"},
        {"{\"anonymity\":\"anonymous\"}",
         "anonymity: expected an anonymity level (screen_name, neighbour)"},
        {"{\"time_ms\":\"soon\"}", "time_ms: expected an integer, got a string"},
        {"[]", "expected a report object, got an array"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct json_object *o;
        Bb__Report *r;
        char err[512] = "";
        bb_jarena_reset(arena);
        assert_int_equal(bb_json_parse(cases[i].json, strlen(cases[i].json), &o, err, sizeof(err)),
                         BB_OK);
        assert_int_equal(bb_json_report(arena, o, NOW_MS, &r, err, sizeof(err)), BB_EINVAL);
        json_object_put(o);
        if (!strstr(err, cases[i].error)) {
            fail_msg("case %zu: %s\n  gave: %s\n  want: %s", i, cases[i].json, err, cases[i].error);
        }
    }
    struct json_object *o;
    Bb__ReportStatus *s;
    char err[512];
    const char *st = "{\"status\":\"done\"}";
    assert_int_equal(bb_json_parse(st, strlen(st), &o, err, sizeof(err)), BB_OK);
    assert_int_equal(bb_json_status(arena, o, NOW_MS, &s, err, sizeof(err)), BB_EINVAL);
    json_object_put(o);
    assert_non_null(strstr(err, "status: expected a status (received, investigating"));
}

/* Several values in one text (post --file): JSON Lines or pretty-printed. */
static void test_stream_of_values(void **state)
{
    const char *text = "{\"a\":1}\n{\"b\":2}\n\n  {\n  \"c\": 3\n}\n[4]";
    size_t off = 0, n = 0, lines[4];
    char err[256];
    for (;;) {
        struct json_object *v;
        size_t start = off;
        while (start < strlen(text) && strchr(" \n", text[start])) {
            start++;
        }
        assert_int_equal(bb_json_parse_next(text, strlen(text), &off, &v, err, sizeof(err)), BB_OK);
        if (!v) {
            break;
        }
        lines[n++] = bb_json_line_of(text, start);
        json_object_put(v);
    }
    assert_int_equal(n, 4);
    assert_int_equal(lines[0], 1);
    assert_int_equal(lines[1], 2);
    assert_int_equal(lines[2], 4);
    assert_int_equal(lines[3], 7);

    const char *broken = "{\"a\":1}\n{\"b\":,}\n";
    struct json_object *v;
    off = 0;
    assert_int_equal(bb_json_parse_next(broken, strlen(broken), &off, &v, err, sizeof(err)), BB_OK);
    json_object_put(v);
    assert_int_equal(bb_json_parse_next(broken, strlen(broken), &off, &v, err, sizeof(err)),
                     BB_EINVAL);
    assert_non_null(strstr(err, "line 2, column 6: bad JSON"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_user_full),        cmocka_unit_test(test_group_full),
        cmocka_unit_test(test_small_changes),    cmocka_unit_test(test_report_and_status),
        cmocka_unit_test(test_bad_lines),        cmocka_unit_test(test_bad_reports),
        cmocka_unit_test(test_stream_of_values),
    };
    return cmocka_run_group_tests_name("json", tests, setup, teardown);
}
