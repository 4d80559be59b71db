/* buurtbusctl: the operator's tool for a buurtbus deployment. Loads the
 * directory into Redis, posts reports, explains who a report reaches and
 * why, lists dead letters, trains compression dictionaries.
 *
 * Single-threaded; one synchronous hiredis connection. This file holds the
 * command table, the options every command shares and small helpers; each
 * command lives in its own cmd_*.c. Exit codes: 0 ok, 1 error, 2 usage. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bb_err.h"
#include "ctl.h"
#include "log.h"
#include "snapshot.h"

static const struct ctl_cmd commands[] = {
    {"load", "load a JSON Lines directory file into Redis",
     "Usage: buurtbusctl load [--chunk N] [--dry-run] FILE|-\n"
     "\n"
     "Reads one directory change per line (JSON Lines; blank lines and lines\n"
     "starting with # are skipped) and writes each into the directory keys and\n"
     "bb:directory, many per MULTI/EXEC. Lines that do not parse or that the\n"
     "directory refuses (an unknown user, ...) are reported with their line\n"
     "number; the others are loaded. Exits 1 if any line was refused.\n"
     "\n"
     "  --chunk N    changes per MULTI/EXEC (default 512)\n"
     "  --dry-run    check the file only; no Redis needed\n"
     "\n"
     "Lines: {\"user\":{...}} {\"group\":{...}} {\"member\":{\"user\":1,\"group\":2}}\n"
     "{\"unmember\":{...}} {\"erase_user\":1} {\"delete_group\":2}\n"
     "{\"preferences\":{\"user\":1,\"prefs\":{...}}} {\"mute\":{\"user\":1,\"author\":7}}\n"
     "{\"unmute\":{...}} {\"follow\":{\"user\":1,\"report\":\"r-1\"}} {\"unfollow\":{...}}\n"
     "(fields in docs/contracts.md)\n",
     cmd_load},
    {"post", "post reports to bb:reports",
     "Usage: buurtbusctl post [--no-validate] [--file FILE|-] [JSON]\n"
     "\n"
     "Posts each report (a JSON object, an array of them, or several objects\n"
     "one after another) with XADD bb:reports * p <Report>, and prints the entry\n"
     "ids. time_ms defaults to now. Reports are checked as the broker checks\n"
     "them first; if any fails, nothing is posted.\n"
     "\n"
     "  --file FILE    read the reports from FILE (- for standard input)\n"
     "  --no-validate  post reports the broker will dead-letter (for tests)\n",
     cmd_post},
    {"post-status", "post report status updates to bb:report-status",
     "Usage: buurtbusctl post-status [--no-validate] [--file FILE|-] [JSON]\n"
     "\n"
     "As post, for status updates (feedback on a report):\n"
     "{\"id\":\"s1\",\"report_id\":\"r1\",\"status\":\"police_on_site\",\"text\":\"...\",\n"
     " \"source\":\"police\",\"reporter_id\":1,\"category\":\"burglary\",\"urgency\":\"recent\"}\n",
     cmd_post},
    {"route", "explain who a report would reach, and why (sends nothing)",
     "Usage: buurtbusctl route [--user ID] [--file FILE|- | --entry ID | JSON]\n"
     "\n"
     "Loads the directory from Redis, checks the report as the broker would and\n"
     "routes it, sending nothing. Prints the deliveries per channel and one line\n"
     "per person considered: id, screen name, route (group, area, watch),\n"
     "verdict, channels, notes and the group it came through.\n"
     "\n"
     "  --user ID          only this person: why did they (not) get it?\n"
     "  --entry ID         route the report at this bb:reports entry\n"
     "  --file FILE        read the report from FILE (- for standard input)\n"
     "  --precision N      broker's default_precision (default 7)\n"
     "  --watch-cells N    broker's watch_max_cells (default 8)\n"
     "  --max-radius M     broker's max_radius in metres (default 5000)\n"
     "\n"
     "The hourly cap counts only this run: the broker's live counters are not\n"
     "visible here.\n",
     cmd_route},
    {"dead", "list dead letters, newest first",
     "Usage: buurtbusctl dead [--count N]\n"
     "\n"
     "Lists bb:dead entries newest first: time, reason, source stream and entry,\n"
     "size of the original payload, broker, detail.\n"
     "\n"
     "  --count N    entries to show (default 20)\n",
     cmd_dead},
    {"dict", "train or show the zstd dictionary",
     "Usage: buurtbusctl dict train [--samples N] [--size BYTES] [--level L]\n"
     "       buurtbusctl dict show\n"
     "\n"
     "train: takes up to N recent reports from bb:reports, turns each into the\n"
     "notification readers get, trains a dictionary, stores it at bb:zdict:{id}\n"
     "and makes it current (bb:zdict:current); brokers pick it up within their\n"
     "dict_check interval. Prints its id, size and the compression ratio on the\n"
     "samples without and with it.\n"
     "\n"
     "  --samples N    reports to sample (default 2000)\n"
     "  --size BYTES   largest dictionary (default 16kb; 1kb..1mb)\n"
     "  --level L      zstd level used for the ratio (default 3)\n"
     "\n"
     "show: the current dictionary and the others stored.\n",
     cmd_dict},
    {"outputs", "what the broker wrote to bb:out:*, per report",
     "Usage: buurtbusctl outputs [--since ID] [--examples N]\n"
     "\n"
     "Decodes every bb:out:{push,email,inbox,digest,social} entry (from entry ID\n"
     "on, default the start) as a worker would, and prints one line per report\n"
     "or status update: its title, the deliveries per channel and a few\n"
     "recipients by screen name.\n"
     "\n"
     "  --since ID     start at this stream id (all streams)\n"
     "  --examples N   example recipients per report (default 3, at most 8)\n",
     cmd_outputs},
    {"snapshot", "load the directory from Redis and print what it holds",
     "Usage: buurtbusctl snapshot\n"
     "\n"
     "Loads the directory as a starting broker does and prints the counts,\n"
     "the records it skipped and the bb:directory id it starts after.\n",
     cmd_snapshot},
    {"erase-user", "erase people everywhere buurtbus keeps them (GDPR)",
     "Usage: buurtbusctl erase-user [--settle DURATION] [--json] ID...\n"
     "\n"
     "Erases each person: the user_erase directory change (as a loaded\n"
     "{\"erase_user\":ID} line: keys, memberships, follows, the bb:directory\n"
     "event brokers drop them on), then what workers keep of them, found in\n"
     "Redis: bb:inbox:ID, collections bb:collect:*:uID and their jobs, parked\n"
     "retries in bb:later:*, bb:sent:* records, receipts in bb:receipts, and\n"
     "dead letters in bb:dead of their deliveries. After the settle time the\n"
     "sweep runs again for what deliveries in flight wrote meanwhile. Prints\n"
     "what was removed, per person. Dead letters of whole batches stay (see\n"
     "docs/contracts.md, Erasure).\n"
     "\n"
     "  --settle DURATION  wait before the second sweep (default 30s; 0: none)\n",
     cmd_erase},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void overview(FILE *f)
{
    fprintf(f, "Usage: buurtbusctl [options] COMMAND [ARGS]\n\nCommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    }
    fprintf(f, "\n%s\nbuurtbusctl COMMAND --help tells more.\n", CTL_COMMON_HELP);
}

int ctl_usage(const struct ctl_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "buurtbusctl%s%s: ", cmd ? " " : "", cmd ? cmd->name : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'buurtbusctl %s%s--help'.\n", cmd ? cmd->name : "", cmd ? " " : "");
    return CTL_USAGE;
}

int ctl_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "buurtbusctl: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CTL_ERR;
}

int ctl_parse_long(const struct ctl_cmd *cmd, const char *opt, const char *s, long min, long max,
                   long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        return ctl_usage(cmd, "%s: expected a number %ld..%ld, got '%s'", opt, min, max, s);
    }
    *out = v;
    return CTL_OK;
}

int ctl_common_opt(struct ctl *ctl, const struct ctl_cmd *cmd, int opt, const char *arg)
{
    long v = 0;
    switch (opt) {
    case 'R':
        ctl->redis = arg;
        return -1;
    case 'U':
        ctl->redis_user = arg;
        return -1;
    case 'P':
        ctl->password_file = arg;
        return -1;
    case 'J':
        ctl->json = true;
        return -1;
    case 'T':
        if (ctl_parse_long(cmd, "--timeout", arg, 1, 3600000, &v) != CTL_OK) {
            return CTL_USAGE;
        }
        ctl->timeout_ms = (int)v;
        return -1;
    case 'h':
        if (cmd) {
            printf("%s\n%s", cmd->usage, CTL_COMMON_HELP);
        } else {
            overview(stdout);
        }
        return CTL_OK;
    default: /* '?': getopt said what was wrong */
        fprintf(stderr, "Try 'buurtbusctl %s%s--help'.\n", cmd ? cmd->name : "", cmd ? " " : "");
        return CTL_USAGE;
    }
}

static int read_password(const char *path, char **out)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    if (!f) {
        return ctl_error("--password-file %s: %s", path, strerror(errno));
    }
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    if (n < 0) {
        free(line);
        return ctl_error("--password-file %s: empty file", path);
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
        line[--n] = '\0';
    }
    *out = line;
    return CTL_OK;
}

int ctl_connect(struct ctl *ctl)
{
    char err[256];
    char *password = NULL;
    if (ctl->c) {
        return CTL_OK;
    }
    if (ctl->redis_user && !ctl->password_file) {
        return ctl_error("--redis-user %s needs --password-file", ctl->redis_user);
    }
    if (ctl->password_file && read_password(ctl->password_file, &password) != CTL_OK) {
        return CTL_ERR;
    }
    ctl->c =
        bb_redis_connect(ctl->redis, ctl->redis_user, password, ctl->timeout_ms, err, sizeof(err));
    if (password) {
        memset(password, 0, strlen(password));
        free(password);
    }
    if (!ctl->c) {
        return ctl_error("%s", err);
    }
    return CTL_OK;
}

int ctl_read_all(const char *path, char **buf, size_t *len)
{
    bool std = strcmp(path, "-") == 0;
    FILE *f = std ? stdin : fopen(path, "rb");
    size_t cap = 65536, n = 0;
    char *b = NULL;
    if (!f) {
        return ctl_error("%s: %s", path, strerror(errno));
    }
    for (;;) {
        if (!b || cap - n < 4096) {
            cap *= 2;
            char *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                if (!std) {
                    fclose(f);
                }
                return ctl_error("%s: out of memory", path);
            }
            b = nb;
        }
        size_t got = fread(b + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) {
            break;
        }
    }
    bool bad = ferror(f);
    if (!std) {
        fclose(f);
    }
    if (bad) {
        free(b);
        return ctl_error("%s: read error", path);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return CTL_OK;
}

void ctl_print_json(struct json_object *o)
{
    puts(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

int64_t ctl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ctl_format_ms(int64_t ms, char *buf, size_t cap)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (ms < 0 || !gmtime_r(&s, &tm)) {
        snprintf(buf, cap, "?");
        return;
    }
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, cap - n, ".%03dZ", (int)(ms % 1000));
}

int64_t ctl_stream_id_ms(const char *id)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(id, &end, 10);
    if (errno || end == id || (*end != '-' && *end != '\0') || v > INT64_MAX) {
        return -1;
    }
    return (int64_t)v;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {CTL_COMMON_OPTS, {NULL, 0, NULL, 0}};
    struct ctl ctl = {.redis = CTL_DEFAULT_REDIS, .timeout_ms = CTL_DEFAULT_TIMEOUT_MS};
    int opt, rc;

    bb_log_init("buurtbusctl", BB_LOG_WARN);
    /* "+": global options end at the command; the command parses the rest. */
    while ((opt = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        if ((rc = ctl_common_opt(&ctl, NULL, opt, optarg)) >= 0) {
            return rc;
        }
    }
    if (optind >= argc) {
        overview(stderr);
        return CTL_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        if (optind + 1 < argc) {
            for (size_t i = 0; i < NCOMMANDS; i++) {
                if (strcmp(argv[optind + 1], commands[i].name) == 0) {
                    printf("%s\n%s", commands[i].usage, CTL_COMMON_HELP);
                    return CTL_OK;
                }
            }
        }
        overview(stdout);
        return CTL_OK;
    }
    const struct ctl_cmd *cmd = NULL;
    for (size_t i = 0; i < NCOMMANDS && !cmd; i++) {
        if (strcmp(name, commands[i].name) == 0) {
            cmd = &commands[i];
        }
    }
    if (!cmd) {
        return ctl_usage(NULL, "unknown command '%s'", name);
    }
    int first = optind;
    optind = 0; /* GNU getopt: start afresh on the command's arguments (argv[0] = its name) */
    rc = cmd->run(&ctl, cmd, argc - first, argv + first);
    if (ctl.c) {
        redisFree(ctl.c);
    }
    return rc;
}
