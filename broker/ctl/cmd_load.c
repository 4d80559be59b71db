/* buurtbusctl load: a JSON Lines directory file into Redis through the
 * bulk store (snapshot.h). Main thread. Each line is parsed, converted and
 * checked on its own; the store writes them chunk by chunk, in file order,
 * and reports a refused change with its line number. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "ctl.h"
#include "directory.pb-c.h"
#include "json.h"
#include "snapshot.h"

struct load {
    const char *name; /* file name for messages */
    uint64_t refused;
};

static const char *reason_hint(const char *reason)
{
    static const struct {
        const char *reason, *hint;
    } hints[] = {
        {"unknown_user", "no such user; add the user first"},
        {"unknown_group", "no such group; add the group first"},
        {"bad_user_record", "the user's stored record does not decode"},
        {"bad_cell", "a cell is not a geohash"},
        {"bad_location", "latitude/longitude out of range"},
        {"bad_mute", "needs exactly one of author and group"},
        {"bad_report_id", "report id: 1..64 printable ASCII, no spaces or ':'"},
        {"bad_channel", "channels are push, email, inbox, digest"},
    };
    for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++) {
        if (strcmp(reason, hints[i].reason) == 0) {
            return hints[i].hint;
        }
    }
    return NULL;
}

static void print_refused(const char *name, uint64_t line, const char *reason)
{
    const char *hint = reason_hint(reason);
    fprintf(stderr, "%s:%" PRIu64 ": refused: %s%s%s%s\n", name, line, reason, hint ? " (" : "",
            hint ? hint : "", hint ? ")" : "");
}

static void on_reject(void *arg, uint64_t line, const char *reason)
{
    struct load *l = arg;
    l->refused++;
    print_refused(l->name, line, reason);
}

static bool skip_line(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') {
        s++;
    }
    return *s == '\0' || *s == '#';
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int cmd_load(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        CTL_COMMON_OPTS,
        {"chunk", required_argument, NULL, 'c'},
        {"dry-run", no_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    long chunk = 512;
    bool dry = false;
    int opt, rc;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (opt == 'c') {
            if (ctl_parse_long(cmd, "--chunk", optarg, 1, 100000, &chunk) != CTL_OK) {
                return CTL_USAGE;
            }
        } else if (opt == 'n') {
            dry = true;
        } else if ((rc = ctl_common_opt(ctl, cmd, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind + 1 != argc) {
        return ctl_usage(cmd, optind == argc ? "which file? (- for standard input)"
                                             : "one file at a time");
    }
    const char *path = argv[optind];
    struct load l = {.name = strcmp(path, "-") == 0 ? "<stdin>" : path};
    struct bb_store_batch *b = NULL;
    struct bb_jarena *arena = NULL;
    struct bb_store_stats st = {0};
    FILE *f = NULL;
    char *line = NULL;
    size_t cap = 0;
    uint64_t lineno = 0, changes = 0, bad = 0;
    char err[512];
    double t0 = mono_s();

    rc = CTL_ERR;
    if (!dry && ctl_connect(ctl) != CTL_OK) {
        return CTL_ERR;
    }
    f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        return ctl_error("%s: %s", path, strerror(errno));
    }
    if (!(arena = bb_jarena_new())) {
        ctl_error("out of memory");
        goto close_file;
    }
    if (!dry && !(b = bb_store_batch_new(ctl->c, (unsigned)chunk, on_reject, &l))) {
        ctl_error("out of memory");
        goto free_arena;
    }
    while (getline(&line, &cap, f) >= 0) {
        struct json_object *obj = NULL;
        Bb__DirectoryEvent *ev;
        const char *why;
        lineno++;
        if (skip_line(line)) {
            continue;
        }
        bb_jarena_reset(arena);
        if (bb_json_parse(line, strlen(line), &obj, err, sizeof(err)) != BB_OK ||
            bb_json_directory_event(arena, obj, &ev, err, sizeof(err)) != BB_OK) {
            fprintf(stderr, "%s:%" PRIu64 ": %s\n", l.name, lineno, err);
            bad++;
            json_object_put(obj);
            continue;
        }
        json_object_put(obj);
        changes++;
        if (dry) {
            if ((why = bb_store_check(ev))) {
                print_refused(l.name, lineno, why);
                l.refused++;
            }
            continue;
        }
        int r = bb_store_batch_add(b, ev, lineno, err, sizeof(err));
        if (r == BB_EINVAL) {
            print_refused(l.name, lineno, err);
            l.refused++;
        } else if (r != BB_OK) {
            ctl_error("%s:%" PRIu64 ": %s", l.name, lineno, err);
            goto free_batch;
        }
    }
    if (ferror(f)) {
        ctl_error("%s: read error: %s", path, strerror(errno));
        goto free_batch;
    }
    if (!dry && bb_store_batch_flush(b, err, sizeof(err)) != BB_OK) {
        ctl_error("%s: %s", l.name, err);
        goto free_batch;
    }
    rc = bad || l.refused ? CTL_ERR : CTL_OK;

free_batch:
    if (b) {
        bb_store_batch_stats(b, &st);
    }
    double secs = mono_s() - t0;
    uint64_t written = dry ? 0 : st.applied;
    if (ctl->json) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "file", json_object_new_string(l.name));
        json_object_object_add(o, "lines", json_object_new_int64((int64_t)lineno));
        json_object_object_add(o, "changes", json_object_new_int64((int64_t)changes));
        json_object_object_add(o, "written", json_object_new_int64((int64_t)written));
        json_object_object_add(o, "refused", json_object_new_int64((int64_t)l.refused));
        json_object_object_add(o, "bad_lines", json_object_new_int64((int64_t)bad));
        json_object_object_add(o, "dry_run", json_object_new_boolean(dry));
        json_object_object_add(o, "seconds", json_object_new_double(secs));
        json_object_object_add(o, "changes_per_s",
                               json_object_new_double(secs > 0 ? (double)written / secs : 0));
        json_object_object_add(o, "ok", json_object_new_boolean(rc == CTL_OK));
        ctl_print_json(o);
    } else if (dry) {
        printf("%s: %" PRIu64 " changes checked, %" PRIu64 " refused, %" PRIu64 " bad lines\n",
               l.name, changes, l.refused, bad);
    } else {
        printf("%s: %" PRIu64 " changes written in %.2f s (%.0f/s), %" PRIu64 " refused, %" PRIu64
               " bad lines\n",
               l.name, written, secs, secs > 0 ? (double)written / secs : 0.0, l.refused, bad);
    }
    bb_store_batch_free(b);
free_arena:
    bb_jarena_free(arena);
close_file:
    free(line);
    if (f != stdin) {
        fclose(f);
    }
    return rc;
}
