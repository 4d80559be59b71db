/* buurtbusctl route: who a report would reach, and why, without sending
 * anything. Main thread: loads the directory into a fresh in-memory index
 * (this process is its only writer and reader), routes the report with an
 * explanation and prints it. Screen names come from the users' records in
 * Redis: this is an operator's tool, the broker's index holds no names. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "ctl.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "json.h"
#include "report.pb-c.h"
#include "route.h"
#include "snapshot.h"
#include "validate.h"

struct name {
    uint64_t id;
    char *screen_name; /* NULL: no record */
};

static int cmp_name(const void *a, const void *b)
{
    uint64_t x = ((const struct name *)a)->id, y = ((const struct name *)b)->id;
    return x < y ? -1 : x > y;
}

/* Screen names of the users in the explanation, one pipelined HGET each. */
static int fetch_names(redisContext *c, const struct bb_explain *ex, uint64_t only,
                       struct name **out, size_t *nout)
{
    struct name *v = calloc(ex->n + 1, sizeof(*v));
    size_t n = 0;
    if (!v) {
        return ctl_error("out of memory");
    }
    for (uint32_t i = 0; i < ex->n; i++) {
        uint64_t id = ex->lines[i].user_id;
        if (id && (!only || id == only)) {
            v[n++].id = id;
        }
    }
    qsort(v, n, sizeof(*v), cmp_name);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k == 0 || v[k - 1].id != v[i].id) {
            v[k++] = v[i];
        }
    }
    n = k;
    for (size_t i = 0; i < n; i++) {
        redisAppendCommand(c, "HGET bb:user:%" PRIu64 " u", v[i].id);
    }
    int rc = CTL_OK;
    for (size_t i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
            rc = ctl_error("redis: %s", c->errstr);
            break;
        }
        if (r->type == REDIS_REPLY_STRING) {
            Bb__User *u = bb__user__unpack(NULL, r->len, (const uint8_t *)r->str);
            if (u) {
                v[i].screen_name = strdup(u->screen_name ? u->screen_name : "");
                bb__user__free_unpacked(u, NULL);
            }
        }
        freeReplyObject(r);
    }
    *out = v;
    *nout = n;
    return rc;
}

static const char *name_of(const struct name *v, size_t n, uint64_t id)
{
    struct name key = {.id = id};
    const struct name *p = bsearch(&key, v, n, sizeof(*v), cmp_name);
    return p && p->screen_name ? p->screen_name : NULL;
}

static void channels_str(uint8_t bits, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        if (bits & (1u << c)) {
            int w = snprintf(buf + len, cap - len, "%s%s", len ? "," : "", bb_channel_name(c));
            len += w > 0 && (size_t)w < cap - len ? (size_t)w : 0;
        }
    }
    if (!len) {
        snprintf(buf, cap, "-");
    }
}

static const char *route_str(int route)
{
    return route ? bb_route_kind_name(route) : "-";
}

static void print_human(const Bb__Report *rep, const struct bb_route_result *res,
                        const struct bb_explain *ex, const struct name *names, size_t nnames,
                        uint64_t only, const struct bb_dir *dir, const char *last_id)
{
    uint32_t per[BB_CHANNELS] = {0};
    struct bb_dir_stats ds;
    bb_dir_stats(dir, &ds);
    for (unsigned c = 0; c < BB_CHANNELS; c++) {
        for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
            per[c] += res->lists[c][l].n;
        }
    }
    printf("report %s: %s, %s, from %s", rep->id, bb_json_category_name(rep->category),
           bb_json_urgency_name(rep->urgency), bb_json_source_name(rep->source));
    if (rep->group_id) {
        printf(", group %" PRIu64 " \"%s\"", rep->group_id, res->group_name);
    }
    printf(", at %.5f %.5f\n", rep->lat, rep->lon);
    printf("directory: %zu users, %zu groups (bb:directory up to %s)\n", ds.users, ds.groups,
           last_id);
    printf("considered %" PRIu64 ", notified %u people, %u deliveries\n", res->decisions,
           res->recipients, res->deliveries);
    printf("channels: push %u, email %u, inbox %u, digest %u, social %u group%s\n", per[0], per[1],
           per[2], per[3], res->social.n, res->social.n == 1 ? "" : "s");
    if (ex->oom) {
        printf("(explanation incomplete: out of memory)\n");
    }
    printf("\n%-10s %-20s %-7s %-16s %-20s %-20s %s\n", "USER", "SCREEN NAME", "ROUTE", "VERDICT",
           "CHANNELS", "NOTES", "VIA GROUP");
    unsigned shown = 0;
    for (uint32_t i = 0; i < ex->n; i++) {
        const struct bb_explain_line *l = &ex->lines[i];
        char user[24], via[24], ch[64], name[80], notes[48] = "";
        if (only && l->user_id != only) {
            continue;
        }
        shown++;
        if (l->user_id) {
            const char *nm = name_of(names, nnames, l->user_id);
            snprintf(user, sizeof(user), "%" PRIu64, l->user_id);
            snprintf(name, sizeof(name), "%s", nm ? nm : "(no record)");
        } else {
            snprintf(user, sizeof(user), "-");
            snprintf(name, sizeof(name), "(the whole group)");
        }
        snprintf(via, sizeof(via), l->group_id ? "%" PRIu64 : "-", l->group_id);
        channels_str(l->verdict == BB_V_NOTIFIED ? l->channels : 0, ch, sizeof(ch));
        snprintf(notes, sizeof(notes), "%s%s%s", l->notes & BB_NOTE_QUIET ? "quiet_hours" : "",
                 (l->notes & BB_NOTE_QUIET) && (l->notes & BB_NOTE_CAPPED) ? "," : "",
                 l->notes & BB_NOTE_CAPPED ? "capped" : "");
        if (l->notes) {
            strncat(notes, "->digest", sizeof(notes) - strlen(notes) - 1);
        } else {
            snprintf(notes, sizeof(notes), "-");
        }
        printf("%-10s %-20s %-7s %-16s %-20s %-20s %s\n", user, name, route_str(l->route),
               bb_verdict_name(l->verdict), ch, notes, via);
    }
    if (only && !shown) {
        uint32_t slot;
        if (!bb_dir_user_find(dir, only, &slot)) {
            printf("user %" PRIu64 " is not in the directory\n", only);
        } else {
            printf("user %" PRIu64 " was not considered: not a member of the report's group or of "
                   "a group whose area holds the point, and no personal watch area covering it\n",
                   only);
        }
    }
}

static struct json_object *result_json(const Bb__Report *rep, const struct bb_route_result *res,
                                       const struct bb_explain *ex, const struct name *names,
                                       size_t nnames, uint64_t only, const struct bb_dir *dir,
                                       const char *last_id)
{
    struct json_object *o = json_object_new_object(), *people = json_object_new_array(),
                       *groups = json_object_new_array(), *social = json_object_new_array();
    json_object_object_add(o, "report", json_object_new_string(rep->id));
    bb_json_explain_totals(o, res, dir, last_id);
    for (uint32_t i = 0; i < res->social.n; i++) {
        json_object_array_add(social, json_object_new_uint64(res->social.ids[i]));
    }
    json_object_object_add(o, "social_groups", social);
    for (uint32_t i = 0; i < ex->n; i++) {
        const struct bb_explain_line *l = &ex->lines[i];
        if (only && l->user_id != only) {
            continue;
        }
        json_object_array_add(l->user_id ? people : groups,
                              bb_json_explain_line(l, 1, name_of(names, nnames, l->user_id)));
    }
    json_object_object_add(o, "people", people);
    json_object_object_add(o, "groups", groups);
    json_object_object_add(o, "complete", json_object_new_boolean(!ex->oom));
    if (only) {
        uint32_t slot;
        json_object_object_add(o, "user_in_directory",
                               json_object_new_boolean(bb_dir_user_find(dir, only, &slot) != NULL));
    }
    return o;
}

/* The report at a bb:reports entry. */
static int report_from_entry(redisContext *c, const char *entry, Bb__Report **out)
{
    redisReply *r = redisCommand(c, "XRANGE bb:reports %s %s", entry, entry);
    int rc = CTL_ERR;
    if (!r) {
        return ctl_error("redis: %s", c->errstr);
    }
    if (r->type == REDIS_REPLY_ERROR) {
        ctl_error("XRANGE bb:reports %s: %s", entry, r->str);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        ctl_error("no entry %s in bb:reports", entry);
    } else {
        const redisReply *e = r->element[0], *f = NULL;
        if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
            e->element[1]->type == REDIS_REPLY_ARRAY) {
            f = e->element[1];
        }
        bool found = false;
        for (size_t i = 0; f && i + 1 < f->elements && !found; i += 2) {
            if (f->element[i]->type == REDIS_REPLY_STRING && strcmp(f->element[i]->str, "p") == 0 &&
                f->element[i + 1]->type == REDIS_REPLY_STRING) {
                *out = bb__report__unpack(NULL, f->element[i + 1]->len,
                                          (const uint8_t *)f->element[i + 1]->str);
                rc = *out ? CTL_OK : ctl_error("entry %s: the report does not decode", entry);
                found = true;
            }
        }
        if (!found) {
            ctl_error("entry %s has no field p", entry);
        }
    }
    freeReplyObject(r);
    return rc;
}

static int report_from_json(const char *text, size_t len, const char *source,
                            struct bb_jarena *arena, Bb__Report **out)
{
    struct json_object *v = NULL;
    char err[512];
    if (bb_json_parse(text, len, &v, err, sizeof(err)) != BB_OK ||
        bb_json_report(arena, v, ctl_now_ms(), out, err, sizeof(err)) != BB_OK) {
        json_object_put(v);
        return ctl_error("%s: %s", source, err);
    }
    json_object_put(v);
    return CTL_OK;
}

int cmd_route(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"user", required_argument, NULL, 'u'},
        {"entry", required_argument, NULL, 'e'},
        {"file", required_argument, NULL, 'f'},
        {"precision", required_argument, NULL, 'p'},
        {"watch-cells", required_argument, NULL, 'w'},
        {"max-radius", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    static const struct bb_limits lim = {CTL_MAX_TEXT, CTL_MAX_MEDIA, CTL_MAX_URL};
    struct bb_dir_params params = {CTL_DEFAULT_PRECISION, CTL_WATCH_MAX_CELLS, CTL_MAX_RADIUS_M};
    const char *file = NULL, *entry = NULL;
    long v, only = 0;
    int opt, rc;

    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'u':
            if (ctl_parse_long(cmd, "--user", optarg, 1, INT64_MAX, &only) != CTL_OK) {
                return CTL_USAGE;
            }
            break;
        case 'e':
            entry = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 'p':
        case 'w':
        case 'm':
            if (ctl_parse_long(cmd,
                               opt == 'p'   ? "--precision"
                               : opt == 'w' ? "--watch-cells"
                                            : "--max-radius",
                               optarg, opt == 'w' ? 4 : 1,
                               opt == 'p'   ? 12
                               : opt == 'w' ? 32
                                            : 65535,
                               &v) != CTL_OK) {
                return CTL_USAGE;
            }
            *(opt == 'p'   ? &params.default_precision
              : opt == 'w' ? &params.watch_max_cells
                           : &params.max_radius_m) = (unsigned)v;
            break;
        default:
            if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
                return rc;
            }
        }
    }
    if ((file != NULL) + (entry != NULL) + (optind < argc) != 1 || optind + 1 < argc) {
        return ctl_usage(cmd, "give the report as JSON, --file FILE or --entry ID (one of them)");
    }

    struct bb_jarena *arena = bb_jarena_new();
    Bb__Report *rep = NULL, *owned = NULL;
    struct bb_dir *dir = NULL;
    struct bb_router *router = NULL;
    struct bb_explain ex = {0};
    struct name *names = NULL;
    size_t nnames = 0;
    char *text = NULL, last_id[BB_STREAM_ID_MAX], err[512];
    const struct bb_route_result *res;
    const char *why;
    size_t len;

    rc = CTL_ERR;
    if (!arena) {
        return ctl_error("out of memory");
    }
    if (file) {
        if (ctl_read_all(file, &text, &len) != CTL_OK ||
            report_from_json(text, len, strcmp(file, "-") ? file : "<stdin>", arena, &rep) !=
                CTL_OK) {
            goto free_input;
        }
    } else if (!entry && report_from_json(argv[optind], strlen(argv[optind]), "argument", arena,
                                          &rep) != CTL_OK) {
        goto free_input;
    }
    if (ctl_connect(ctl) != CTL_OK) {
        goto free_input;
    }
    if (entry) {
        if (report_from_entry(ctl->c, entry, &owned) != CTL_OK) {
            goto free_input;
        }
        rep = owned;
    }
    if ((why = bb_validate_report(rep, &lim))) {
        ctl_error("the broker would dead-letter this report: %s", why);
        goto free_input;
    }
    if (!(dir = bb_dir_new(&params))) {
        ctl_error("out of memory");
        goto free_input;
    }
    struct bb_snapshot_stats st;
    if (bb_snapshot_load(ctl->c, dir, last_id, sizeof(last_id), &st, err, sizeof(err)) != BB_OK) {
        ctl_error("loading the directory: %s", err);
        goto free_dir;
    }
    if (!(router = bb_router_new(dir))) {
        ctl_error("out of memory");
        goto free_dir;
    }
    int r = bb_route_report(router, rep, &ex, &res);
    if (r == BB_ENOTFOUND) {
        ctl_error("group %" PRIu64 " is not in the directory: the broker dead-letters this report",
                  rep->group_id);
        goto free_router;
    }
    if (r != BB_OK) {
        ctl_error("routing: %s", bb_strerror(r));
        goto free_router;
    }
    if (fetch_names(ctl->c, &ex, (uint64_t)only, &names, &nnames) != CTL_OK) {
        goto free_names;
    }
    if (ctl->json) {
        ctl_print_json(result_json(rep, res, &ex, names, nnames, (uint64_t)only, dir, last_id));
    } else {
        print_human(rep, res, &ex, names, nnames, (uint64_t)only, dir, last_id);
    }
    rc = CTL_OK;

free_names:
    for (size_t i = 0; i < nnames; i++) {
        free(names[i].screen_name);
    }
    free(names);
free_router:
    bb_explain_free(&ex);
    bb_router_free(router);
free_dir:
    bb_dir_free(dir);
free_input:
    if (owned) {
        bb__report__free_unpacked(owned, NULL);
    }
    free(text);
    bb_jarena_free(arena);
    return rc;
}
