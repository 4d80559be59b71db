/* buurtbusctl post and post-status: reports (or status updates) as JSON
 * into bb:reports (bb:report-status), one XADD each, pipelined. Main
 * thread. Everything is converted and checked before anything is sent, so
 * a bad input posts nothing. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "ctl.h"
#include "json.h"
#include "report.pb-c.h"
#include "validate.h"

struct packed {
    uint8_t *p;
    size_t len;
    char id[72]; /* the report's (or status's) own id, for the output */
};

struct post {
    bool status;
    bool validate;
    const char *source; /* "argument" or the file name */
    struct bb_jarena *arena;
    struct packed *v;
    size_t n, cap;
    unsigned bad;
};

static int add_one(struct post *ps, const struct json_object *obj, size_t line)
{
    static const struct bb_limits lim = {CTL_MAX_TEXT, CTL_MAX_MEDIA, CTL_MAX_URL};
    char err[512];
    const ProtobufCMessage *m;
    const char *id, *why = NULL;
    int rc;

    if (ps->status) {
        Bb__ReportStatus *s;
        rc = bb_json_status(ps->arena, obj, ctl_now_ms(), &s, err, sizeof(err));
        if (rc == BB_OK && ps->validate) {
            why = bb_validate_status(s, &lim);
        }
        m = rc == BB_OK ? &s->base : NULL;
        id = rc == BB_OK ? s->id : "";
    } else {
        Bb__Report *r;
        rc = bb_json_report(ps->arena, obj, ctl_now_ms(), &r, err, sizeof(err));
        if (rc == BB_OK && ps->validate) {
            why = bb_validate_report(r, &lim);
        }
        m = rc == BB_OK ? &r->base : NULL;
        id = rc == BB_OK ? r->id : "";
    }
    if (rc != BB_OK || why) {
        fprintf(stderr, "%s:%zu: %s%s\n", ps->source, line,
                why ? "the broker would dead-letter this: " : "", why ? why : err);
        ps->bad++;
        return BB_OK;
    }
    if (ps->n == ps->cap) {
        size_t nc = ps->cap ? ps->cap * 2 : 16;
        struct packed *v = realloc(ps->v, nc * sizeof(*v));
        if (!v) {
            return BB_ENOMEM;
        }
        ps->v = v;
        ps->cap = nc;
    }
    struct packed *p = &ps->v[ps->n];
    p->len = protobuf_c_message_get_packed_size(m);
    if (!(p->p = malloc(p->len ? p->len : 1))) {
        return BB_ENOMEM;
    }
    protobuf_c_message_pack(m, p->p);
    snprintf(p->id, sizeof(p->id), "%s", id);
    ps->n++;
    return BB_OK;
}

/* A value is one object or an array of them. */
static int add_value(struct post *ps, const struct json_object *v, size_t line)
{
    if (!json_object_is_type(v, json_type_array)) {
        return add_one(ps, v, line);
    }
    for (size_t i = 0; i < json_object_array_length(v); i++) {
        int rc = add_one(ps, json_object_array_get_idx(v, i), line);
        if (rc != BB_OK) {
            return rc;
        }
    }
    return BB_OK;
}

static int parse_all(struct post *ps, const char *text, size_t len)
{
    size_t off = 0;
    char err[512];
    for (;;) {
        struct json_object *v;
        size_t start = off;
        while (start < len && text[start] && strchr(" \t\r\n", text[start])) {
            start++;
        }
        if (bb_json_parse_next(text, len, &off, &v, err, sizeof(err)) != BB_OK) {
            fprintf(stderr, "%s: %s\n", ps->source, err);
            ps->bad++;
            return BB_OK; /* no way to find the next value after a syntax error */
        }
        if (!v) {
            return BB_OK;
        }
        int rc = add_value(ps, v, bb_json_line_of(text, start));
        json_object_put(v);
        if (rc != BB_OK) {
            return rc;
        }
    }
}

static int send_all(struct ctl *ctl, struct post *ps)
{
    const char *stream = ps->status ? "bb:report-status" : "bb:reports";
    struct json_object *out = ctl->json ? json_object_new_array() : NULL;
    int rc = CTL_OK;
    for (size_t i = 0; i < ps->n; i++) {
        const char *argv[] = {"XADD", stream, "*", "p", (const char *)ps->v[i].p};
        size_t lens[] = {4, strlen(stream), 1, 1, ps->v[i].len};
        if (redisAppendCommandArgv(ctl->c, 5, argv, lens) != REDIS_OK) {
            json_object_put(out);
            return ctl_error("redis: %s", ctl->c->errstr);
        }
    }
    for (size_t i = 0; i < ps->n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(ctl->c, (void **)&r) != REDIS_OK || !r) {
            json_object_put(out);
            return ctl_error("redis: %s (%zu of %zu posted)", ctl->c->errstr, i, ps->n);
        }
        if (r->type != REDIS_REPLY_STRING) {
            rc = ctl_error("XADD %s for %s: %s", stream, ps->v[i].id,
                           r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        } else if (out) {
            struct json_object *o = json_object_new_object();
            json_object_object_add(o, ps->status ? "status" : "report",
                                   json_object_new_string(ps->v[i].id));
            json_object_object_add(o, "stream", json_object_new_string(stream));
            json_object_object_add(o, "entry", json_object_new_string(r->str));
            json_object_array_add(out, o);
        } else {
            printf("%s\n", r->str);
        }
        freeReplyObject(r);
    }
    if (out) {
        ctl_print_json(out);
    }
    return rc;
}

int cmd_post(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"file", required_argument, NULL, 'f'},
        {"no-validate", no_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    struct post ps = {.status = strcmp(cmd->name, "post-status") == 0, .validate = true};
    const char *file = NULL;
    char *text = NULL;
    size_t len;
    int opt, rc;

    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'f') {
            file = optarg;
        } else if (opt == 'n') {
            ps.validate = false;
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (file && optind < argc) {
        return ctl_usage(cmd, "give --file or JSON, not both");
    }
    if (!file && optind + 1 != argc) {
        return ctl_usage(cmd, optind == argc ? "what to post? JSON or --file FILE"
                                             : "one JSON argument (quote it)");
    }
    if (file) {
        if (ctl_read_all(file, &text, &len) != CTL_OK) {
            return CTL_ERR;
        }
        ps.source = strcmp(file, "-") == 0 ? "<stdin>" : file;
    } else {
        if (!(text = strdup(argv[optind]))) {
            return ctl_error("out of memory");
        }
        len = strlen(text);
        ps.source = "argument";
    }
    rc = CTL_ERR;
    if (!(ps.arena = bb_jarena_new())) {
        ctl_error("out of memory");
        goto free_text;
    }
    if (parse_all(&ps, text, len) != BB_OK) {
        ctl_error("out of memory");
        goto free_posts;
    }
    if (ps.bad) {
        ctl_error("%u bad %s, nothing posted", ps.bad, ps.status ? "status updates" : "reports");
        goto free_posts;
    }
    if (ps.n == 0) {
        ctl_error("%s: no %s in the input", ps.source, ps.status ? "status updates" : "reports");
        goto free_posts;
    }
    if (ctl_connect(ctl) != CTL_OK) {
        goto free_posts;
    }
    rc = send_all(ctl, &ps);

free_posts:
    for (size_t i = 0; i < ps.n; i++) {
        free(ps.v[i].p);
    }
    free(ps.v);
    bb_jarena_free(ps.arena);
free_text:
    free(text);
    return rc;
}
