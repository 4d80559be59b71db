/* buurtbusctl directory export: the directory in Redis as the JSON Lines
 * 'directory load' reads. Main thread.
 *
 * Reads the keys of docs/contracts.md ("The directory") as the snapshot
 * loader does, without the index: SSCAN bb:groups and bb:users, HGET the
 * records in pipelined chunks, SMEMBERS bb:group:{id}:members, SSCAN
 * bb:follows and SMEMBERS bb:follow:{report}. Ids and report ids are
 * sorted, so two exports of the same directory are identical. Lines come
 * groups first (a user's muted groups must exist), then users, members,
 * follows. Records that do not decode are skipped with a warning and make
 * the exit code 1. Contact fields are not exported. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "ctl.h"
#include "directory.pb-c.h"
#include "json.h"

#define CHUNK 500

struct strs {
    char **v;
    size_t n, cap;
};

static int strs_add(struct strs *s, const char *x)
{
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        char **nv = realloc(s->v, nc * sizeof(*nv));
        if (!nv) {
            return BB_ENOMEM;
        }
        s->v = nv;
        s->cap = nc;
    }
    if (!(s->v[s->n] = strdup(x))) {
        return BB_ENOMEM;
    }
    s->n++;
    return BB_OK;
}

static void strs_free(struct strs *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i]);
    }
    free(s->v);
    memset(s, 0, sizeof(*s));
}

/* Decimal ids compare by length, then text. */
static int cmp_id(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);
    return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x, y);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every member of set key (SSCAN), sorted with cmp. */
static int members(struct ctl *ctl, const char *key, int (*cmp)(const void *, const void *),
                   struct strs *out)
{
    char cursor[32] = "0";
    do {
        redisReply *r = ctl_redis(ctl, "SSCAN %s %s COUNT 1000", key, cursor);
        if (!r) {
            return CTL_ERR;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return ctl_error("SSCAN %s: unexpected reply", key);
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            if (strs_add(out, r->element[1]->element[i]->str) != BB_OK) {
                freeReplyObject(r);
                return ctl_error("out of memory");
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    if (out->n > 1) {
        qsort(out->v, out->n, sizeof(*out->v), cmp);
    }
    return CTL_OK;
}

static bool parse_id(const char *s, uint64_t *id)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v == 0 || s[0] == '0' || s[0] == '-') {
        return false;
    }
    *id = v;
    return true;
}

static void line(FILE *f, const char *key, struct json_object *v)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, key, v);
    fprintf(
        f, "%s\n",
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

struct counts {
    long users, groups, members, follows, skipped;
};

/* The records of ids (users or groups), CHUNK HGETs per round trip. */
static int records(struct ctl *ctl, FILE *f, const struct strs *ids, bool users, struct counts *n)
{
    const char *prefix = users ? "bb:user:" : "bb:group:", *field = users ? "u" : "g";
    for (size_t at = 0; at < ids->n; at += CHUNK) {
        size_t k = ids->n - at < CHUNK ? ids->n - at : CHUNK;
        for (size_t i = 0; i < k; i++) {
            redisAppendCommand(ctl->c, "HGET %s%s %s", prefix, ids->v[at + i], field);
        }
        for (size_t i = 0; i < k; i++) {
            redisReply *r = NULL;
            if (redisGetReply(ctl->c, (void **)&r) != REDIS_OK || !r) {
                return ctl_error("redis: %s", ctl->c->errstr);
            }
            const char *id = ids->v[at + i];
            uint64_t want = 0;
            parse_id(id, &want);
            if (r->type == REDIS_REPLY_ERROR) {
                int rc = ctl_error("HGET %s%s %s: %s", prefix, id, field, r->str);
                freeReplyObject(r);
                return rc;
            }
            struct json_object *o = NULL;
            if (r->type == REDIS_REPLY_STRING && users) {
                Bb__User *u = bb__user__unpack(NULL, r->len, (const uint8_t *)r->str);
                if (u && u->id == want) {
                    o = bb_json_from_user(u);
                }
                bb__user__free_unpacked(u, NULL);
            } else if (r->type == REDIS_REPLY_STRING) {
                Bb__Group *g = bb__group__unpack(NULL, r->len, (const uint8_t *)r->str);
                if (g && g->id == want) {
                    o = bb_json_from_group(g);
                }
                bb__group__free_unpacked(g, NULL);
            }
            freeReplyObject(r);
            if (!o) {
                fprintf(stderr,
                        "buurtbusctl: skipped %s%s: record missing, undecodable or "
                        "naming another id\n",
                        prefix, id);
                n->skipped++;
                continue;
            }
            line(f, users ? "user" : "group", o);
            *(users ? &n->users : &n->groups) += 1;
        }
    }
    return CTL_OK;
}

static int memberships(struct ctl *ctl, FILE *f, const struct strs *groups, struct counts *n)
{
    for (size_t i = 0; i < groups->n; i++) {
        char key[64];
        struct strs m = {0};
        uint64_t gid, uid;
        snprintf(key, sizeof(key), "bb:group:%s:members", groups->v[i]);
        if (!parse_id(groups->v[i], &gid)) {
            continue;
        }
        if (members(ctl, key, cmp_id, &m) != CTL_OK) {
            strs_free(&m);
            return CTL_ERR;
        }
        for (size_t k = 0; k < m.n; k++) {
            if (!parse_id(m.v[k], &uid)) {
                fprintf(stderr, "buurtbusctl: skipped '%s' in %s: not a user id\n", m.v[k], key);
                n->skipped++;
                continue;
            }
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "user", bb_json_id(uid));
            json_object_object_add(o, "group", bb_json_id(gid));
            line(f, "member", o);
            n->members++;
        }
        strs_free(&m);
    }
    return CTL_OK;
}

static int follows(struct ctl *ctl, FILE *f, struct counts *n)
{
    struct strs reports = {0};
    int rc = members(ctl, "bb:follows", cmp_str, &reports);
    for (size_t i = 0; i < reports.n && rc == CTL_OK; i++) {
        char key[128];
        struct strs m = {0};
        uint64_t uid;
        snprintf(key, sizeof(key), "bb:follow:%s", reports.v[i]);
        rc = members(ctl, key, cmp_id, &m);
        for (size_t k = 0; k < m.n && rc == CTL_OK; k++) {
            if (!parse_id(m.v[k], &uid)) {
                n->skipped++;
                continue;
            }
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, "user", bb_json_id(uid));
            json_object_object_add(o, "report", json_object_new_string(reports.v[i]));
            line(f, "follow", o);
            n->follows++;
        }
        strs_free(&m);
    }
    strs_free(&reports);
    return rc;
}

int cmd_export(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"file", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'f') {
            path = optarg;
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind < argc) {
        return ctl_usage(cmd, "unexpected argument '%s'", argv[optind]);
    }
    if (ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }
    bool to_file = path && strcmp(path, "-") != 0;
    FILE *f = to_file ? fopen(path, "w") : stdout;
    if (!f) {
        return ctl_error("%s: %s", path, strerror(errno));
    }
    struct strs groups = {0}, users = {0};
    struct counts n = {0};
    rc = members(ctl, "bb:groups", cmp_id, &groups);
    if (rc == CTL_OK) {
        rc = members(ctl, "bb:users", cmp_id, &users);
    }
    if (rc == CTL_OK) {
        rc = records(ctl, f, &groups, false, &n);
    }
    if (rc == CTL_OK) {
        rc = records(ctl, f, &users, true, &n);
    }
    if (rc == CTL_OK) {
        rc = memberships(ctl, f, &groups, &n);
    }
    if (rc == CTL_OK) {
        rc = follows(ctl, f, &n);
    }
    strs_free(&groups);
    strs_free(&users);
    if (fflush(f) != 0 || ferror(f)) {
        rc = ctl_error("%s: write error", to_file ? path : "standard output");
    }
    if (to_file && fclose(f) != 0 && rc == CTL_OK) {
        rc = ctl_error("%s: %s", path, strerror(errno));
    }
    if (rc != CTL_OK) {
        return rc;
    }
    /* The summary goes where it does not mix with the lines. */
    FILE *sum = to_file ? stdout : stderr;
    if (ctl->json && to_file) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "file", json_object_new_string(path));
        json_object_object_add(o, "groups", json_object_new_int64(n.groups));
        json_object_object_add(o, "users", json_object_new_int64(n.users));
        json_object_object_add(o, "memberships", json_object_new_int64(n.members));
        json_object_object_add(o, "follows", json_object_new_int64(n.follows));
        json_object_object_add(o, "skipped", json_object_new_int64(n.skipped));
        ctl_print_json(o);
    } else {
        fprintf(sum, "exported %ld groups, %ld users, %ld memberships, %ld follows (%ld skipped)\n",
                n.groups, n.users, n.members, n.follows, n.skipped);
    }
    return n.skipped ? CTL_ERR : CTL_OK;
}
