/* buurtbusctl: the operator's tool for a buurtbus deployment. status of
 * streams, groups, jobs and dead letters; dead letters listed, replayed,
 * purged; compression dictionaries trained, rotated, shown; the directory
 * loaded, exported, erased from (GDPR), snapshotted; reports posted and
 * explained (route); what the broker wrote (outputs).
 *
 * Single-threaded; one synchronous hiredis connection. This file holds the
 * command table (groups "dead", "dict", "directory" take a sub-command; the
 * old names load, snapshot, erase-user and dead are aliases), the options
 * every command shares and small helpers; each command lives in a cmd_*.c.
 * Exit codes: 0 ok, 1 error, 2 usage. */
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

#define USAGE_LOAD(NAME)                                                                           \
    "Usage: buurtbusctl " NAME " [--chunk N] [--dry-run] FILE|-\n"                                 \
    "\n"                                                                                           \
    "Reads one directory change per line (JSON Lines; blank lines and lines\n"                     \
    "starting with # are skipped) and writes each into the directory keys and\n"                   \
    "bb:directory, many per MULTI/EXEC. Lines that do not parse or that the\n"                     \
    "directory refuses (an unknown user, ...) are reported with their line\n"                      \
    "number; the others are loaded. Exits 1 if any line was refused.\n"                            \
    "\n"                                                                                           \
    "  --chunk N    changes per MULTI/EXEC (default 512)\n"                                        \
    "  --dry-run    check the file only; no Redis needed\n"                                        \
    "\n"                                                                                           \
    "Lines: {\"user\":{...}} {\"group\":{...}} {\"member\":{\"user\":1,\"group\":2}}\n"            \
    "{\"unmember\":{...}} {\"erase_user\":1} {\"delete_group\":2}\n"                               \
    "{\"preferences\":{\"user\":1,\"prefs\":{...}}} {\"mute\":{\"user\":1,\"author\":7}}\n"        \
    "{\"unmute\":{...}} {\"follow\":{\"user\":1,\"report\":\"r-1\"}} {\"unfollow\":{...}}\n"       \
    "(fields in docs/contracts.md)\n"

#define USAGE_DEAD_LIST(NAME)                                                                      \
    "Usage: buurtbusctl " NAME " [--count N] [--reason R] [--stream S] [--json]\n"                 \
    "\n"                                                                                           \
    "Lists bb:dead entries newest first: time, entry id, reason, source stream\n"                  \
    "and entry, size of the original payload, who gave up (broker or worker,\n"                    \
    "channel instance, delivery), detail, and whether 'dead replay' can put it\n"                  \
    "back.\n"                                                                                      \
    "\n"                                                                                           \
    "  --count N    entries to show (default 20)\n"                                                \
    "  --reason R   only dead letters with this reason\n"                                          \
    "  --stream S   only dead letters from this stream\n"

#define USAGE_SNAPSHOT(NAME)                                                                       \
    "Usage: buurtbusctl " NAME "\n"                                                                \
    "\n"                                                                                           \
    "Loads the directory as a starting broker does and prints the counts,\n"                       \
    "the records it skipped and the bb:directory id it starts after.\n"

#define USAGE_ERASE(NAME)                                                                          \
    "Usage: buurtbusctl " NAME " [--settle DURATION] [--json] ID...\n"                             \
    "\n"                                                                                           \
    "Erases each person: the user_erase directory change (as a loaded\n"                           \
    "{\"erase_user\":ID} line: keys, memberships, follows, the bb:directory\n"                     \
    "event brokers drop them on), then what workers keep of them, found in\n"                      \
    "Redis: bb:inbox:ID, collections bb:collect:*:uID and their jobs, parked\n"                    \
    "retries in bb:later:*, bb:sent:* records, receipts in bb:receipts, and\n"                     \
    "dead letters in bb:dead of their deliveries. After the settle time the\n"                     \
    "sweep runs again for what deliveries in flight wrote meanwhile. Prints\n"                     \
    "what was removed, per person. Dead letters of whole batches stay (see\n"                      \
    "docs/contracts.md, Erasure).\n"                                                               \
    "\n"                                                                                           \
    "  --settle DURATION  wait before the second sweep (default 30s; 0: none)\n"

#define USAGE_DICT_TRAIN                                                                           \
    "Usage: buurtbusctl dict train [--samples N] [--size BYTES] [--level L]\n"                     \
    "\n"                                                                                           \
    "Takes up to N recent reports from bb:reports, turns each into the\n"                          \
    "notification readers get, trains a dictionary, stores it at bb:zdict:{id}\n"                  \
    "and makes it current (bb:zdict:current); brokers pick it up within their\n"                   \
    "dict_check interval. Prints its id, size and the compression ratio on the\n"                  \
    "samples without and with it.\n"                                                               \
    "\n"                                                                                           \
    "  --samples N    reports to sample (default 2000)\n"                                          \
    "  --size BYTES   largest dictionary (default 16kb; 1kb..1mb)\n"                               \
    "  --level L      zstd level used for the ratio (default 3)\n"

static const struct ctl_cmd commands[] = {
    {"status", "streams, consumer groups, jobs, dead letters, directory size",
     "Usage: buurtbusctl status [--dead-sample N] [--json]\n"
     "\n"
     "One look at a deployment. Per stream (bb:reports, bb:report-status,\n"
     "bb:directory, bb:out:*, bb:receipts, bb:dead): length and per consumer\n"
     "group its lag (entries not read yet), pending entries (read, not acked),\n"
     "last delivered id, and per consumer its pending entries and idle time.\n"
     "Jobs per channel instance (bb:later:<inst>): due now and later. Dead\n"
     "letters: total, and by reason among the newest N. Directory: users,\n"
     "groups, followed reports. The current compression dictionary.\n"
     "\n"
     "  --dead-sample N   newest dead letters counted by reason (default 10000)\n",
     cmd_status, false},
    {"dead list", "dead letters, newest first",
     USAGE_DEAD_LIST("dead list") "\n(also: buurtbusctl dead [--count N] ...)\n", cmd_dead_list,
     false},
    {"dead replay", "put dead letters back where they came from",
     "Usage: buurtbusctl dead replay [--force] [--sent-ttl D] [--dry-run] ID...\n"
     "       buurtbusctl dead replay --reason R | --all [--force] [--sent-ttl D] [--dry-run]\n"
     "\n"
     "Puts each dead letter's original bytes back where they came from and\n"
     "deletes the dead letter, in one MULTI/EXEC:\n"
     "  broker (bb:reports, bb:report-status, bb:directory): XADD the entry again;\n"
     "    the brokers route it (or dead-letter it again if it is still bad).\n"
     "  worker, a DeliveryBatch: XADD the batch to its bb:out stream again. For\n"
     "    one failed delivery (field delivery) its bb:sent:<instance>:<delivery>\n"
     "    record is deleted first, so that delivery is tried again; the others\n"
     "    of the batch are skipped by their records (receipts already_sent).\n"
     "    Refused when the source entry is older than the records' TTL (then\n"
     "    every recipient would get it again), unless --force.\n"
     "  worker, a retry job (a PendingDelivery with its notification): parked\n"
     "    again in bb:later:<instance>, due now, attempts from 0, its bb:sent\n"
     "    record deleted.\n"
     "Refused, with the reason: dead letters without a payload\n"
     "(entries_trimmed_unread, entry_trimmed, entry_deleted, missing_payload),\n"
     "unreadable jobs (bad_job), collection items (bad_item) and digests (their\n"
     "items are not in the dead letter).\n"
     "\n"
     "  --reason R     every dead letter with this reason (replayable ones)\n"
     "  --all          every replayable dead letter (with --reason: of it)\n"
     "  --sent-ttl D   the workers' sent_ttl (default 7d)\n"
     "  --force        replay batches older than --sent-ttl anyway\n"
     "  --dry-run      say what would be done; change nothing\n",
     cmd_dead_replay, false},
    {"dead purge", "delete dead letters",
     "Usage: buurtbusctl dead purge [--reason R] [--older-than D] [--all] [--dry-run]\n"
     "\n"
     "Deletes dead letters: those with reason R, those older than D (1h, 7d),\n"
     "both, or with --all every one. Prints how many. A selector or --all is\n"
     "required.\n",
     cmd_dead_purge, false},
    {"dict train", "train a zstd dictionary from recent reports, make it current", USAGE_DICT_TRAIN,
     cmd_dict_train, false},
    {"dict rotate", "train a new dictionary, make it current, prune unused old ones",
     "Usage: buurtbusctl dict rotate [--prune] [--samples N] [--size BYTES] [--level L]\n"
     "\n"
     "As dict train: a new dictionary from recent reports, made current. Old\n"
     "dictionaries stay, since batches in bb:out:* may name them. With --prune\n"
     "it then deletes every old bb:zdict:<id> except the previous current one\n"
     "(brokers switch only within their dict_check) and those a batch still\n"
     "names in its zstd frame: every entry left in bb:out:* (unread, pending,\n"
     "or read but not trimmed yet) and every batch in bb:dead (it may be\n"
     "replayed). Prints what it deleted and what it kept in use.\n"
     "\n"
     "  --prune        delete old dictionaries nothing uses any more\n"
     "  --samples, --size, --level   as dict train\n",
     cmd_dict_rotate, false},
    {"dict show", "the current dictionary and the others stored",
     "Usage: buurtbusctl dict show\n"
     "\n"
     "The current dictionary (bb:zdict:current) and every bb:zdict:<id> stored,\n"
     "with its size and whether it loads.\n",
     cmd_dict_show, false},
    {"directory load", "load a JSON Lines directory file into Redis",
     USAGE_LOAD("directory load") "\n(old name: buurtbusctl load)\n", cmd_load, false},
    {"directory export", "write the whole directory as JSON Lines 'load' reads",
     "Usage: buurtbusctl directory export [--file FILE]\n"
     "\n"
     "Writes the directory in Redis as directory lines: groups (with their\n"
     "policy), users (with preferences and mutes), memberships, follows, ids\n"
     "in ascending order. 'directory load' reads the output back. Contact\n"
     "fields of bb:user:{id} are not exported.\n"
     "\n"
     "  --file FILE    write to FILE (default standard output)\n",
     cmd_export, false},
    {"directory erase-user", "erase people everywhere buurtbus keeps them (GDPR)",
     USAGE_ERASE("directory erase-user") "\n(old name: buurtbusctl erase-user)\n", cmd_erase,
     false},
    {"directory snapshot", "load the directory from Redis and print what it holds",
     USAGE_SNAPSHOT("directory snapshot") "\n(old name: buurtbusctl snapshot)\n", cmd_snapshot,
     false},
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
     cmd_post, false},
    {"post-status", "post report status updates to bb:report-status",
     "Usage: buurtbusctl post-status [--no-validate] [--file FILE|-] [JSON]\n"
     "\n"
     "As post, for status updates (feedback on a report):\n"
     "{\"id\":\"s1\",\"report_id\":\"r1\",\"status\":\"police_on_site\",\"text\":\"...\",\n"
     " \"source\":\"police\",\"reporter_id\":1,\"category\":\"burglary\",\"urgency\":\"recent\"}\n",
     cmd_post, false},
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
     cmd_route, false},
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
     cmd_outputs, false},
    /* Old names, still used by scripts and docs. */
    {"load", "= directory load", USAGE_LOAD("load") "\n(= buurtbusctl directory load)\n", cmd_load,
     true},
    {"snapshot", "= directory snapshot",
     USAGE_SNAPSHOT("snapshot") "\n(= buurtbusctl directory snapshot)\n", cmd_snapshot, true},
    {"erase-user", "= directory erase-user",
     USAGE_ERASE("erase-user") "\n(= buurtbusctl directory erase-user)\n", cmd_erase, true},
    {"dead", "= dead list", USAGE_DEAD_LIST("dead") "\n(= buurtbusctl dead list)\n", cmd_dead_list,
     true},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* Command groups: "dead", "dict", "directory" take a sub-command. */
static const char *const groups[] = {"dead", "dict", "directory"};
#define NGROUPS (sizeof(groups) / sizeof(groups[0]))

static const struct ctl_cmd *find_command(const char *name, const char *sub)
{
    char full[64];
    if (sub) {
        snprintf(full, sizeof(full), "%s %s", name, sub);
        name = full;
    }
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(name, commands[i].name) == 0) {
            return &commands[i];
        }
    }
    return NULL;
}

static bool is_group(const char *name)
{
    for (size_t i = 0; i < NGROUPS; i++) {
        if (strcmp(name, groups[i]) == 0) {
            return true;
        }
    }
    return false;
}

/* The sub-commands of a group, with their summaries. */
static void group_overview(FILE *f, const char *group)
{
    size_t n = strlen(group);
    fprintf(f, "Usage: buurtbusctl [options] %s SUBCOMMAND [ARGS]\n\nSub-commands:\n", group);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (!commands[i].alias && strncmp(commands[i].name, group, n) == 0 &&
            commands[i].name[n] == ' ') {
            fprintf(f, "  %-22s %s\n", commands[i].name, commands[i].summary);
        }
    }
    fprintf(f, "\nbuurtbusctl %s SUBCOMMAND --help tells more.\n", group);
}

static void overview(FILE *f)
{
    fprintf(f, "Usage: buurtbusctl [options] COMMAND [ARGS]\n\nCommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (!commands[i].alias) {
            fprintf(f, "  %-22s %s\n", commands[i].name, commands[i].summary);
        }
    }
    fprintf(f, "\nOld names that still work: load, snapshot, erase-user (= directory ...),\n"
               "dead [--count N] (= dead list).\n");
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

redisReply *ctl_redis(struct ctl *ctl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(ctl->c, fmt, ap);
    va_end(ap);
    if (!r) {
        ctl_error("redis: %s", ctl->c->errstr[0] ? ctl->c->errstr : "connection lost");
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        const char *sp = strchr(fmt, ' ');
        ctl_error("%.*s: %s", sp ? (int)(sp - fmt) : (int)strlen(fmt), fmt, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

const redisReply *ctl_field(const redisReply *flat, const char *name)
{
    if (!flat || flat->type != REDIS_REPLY_ARRAY) {
        return NULL;
    }
    for (size_t i = 0; i + 1 < flat->elements; i += 2) {
        const redisReply *k = flat->element[i];
        if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) &&
            strcmp(k->str, name) == 0) {
            return flat->element[i + 1];
        }
    }
    return NULL;
}

const char *ctl_str(const redisReply *r, const char *dflt)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) ? r->str : dflt;
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
    const char *sub = optind + 1 < argc ? argv[optind + 1] : NULL;
    if (strcmp(name, "help") == 0) {
        const struct ctl_cmd *h = NULL;
        if (sub) {
            h = optind + 2 < argc ? find_command(sub, argv[optind + 2]) : NULL;
            h = h || is_group(sub) ? h : find_command(sub, NULL);
            if (!h && is_group(sub)) {
                group_overview(stdout, sub);
                return CTL_OK;
            }
        }
        if (h) {
            printf("%s\n%s", h->usage, CTL_COMMON_HELP);
        } else {
            overview(stdout);
        }
        return CTL_OK;
    }
    const struct ctl_cmd *cmd = NULL;
    int first = optind;
    if (is_group(name)) {
        if (sub && (cmd = find_command(name, sub))) {
            first = optind + 1; /* the sub-command is its argv[0] */
        } else if (sub && (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0)) {
            group_overview(stdout, name);
            return CTL_OK;
        } else if (!sub || sub[0] == '-') {
            cmd = find_command(name, NULL); /* "dead [--count N]" */
            if (!cmd) {
                group_overview(stderr, name);
                return CTL_USAGE;
            }
        } else {
            fprintf(stderr, "buurtbusctl %s: unknown sub-command '%s'\n\n", name, sub);
            group_overview(stderr, name);
            return CTL_USAGE;
        }
    } else {
        cmd = find_command(name, NULL);
    }
    if (!cmd) {
        return ctl_usage(NULL, "unknown command '%s'", name);
    }
    optind = 0; /* GNU getopt: start afresh on the command's arguments (argv[0] = its name) */
    rc = cmd->run(&ctl, cmd, argc - first, argv + first);
    if (ctl.c) {
        redisFree(ctl.c);
    }
    return rc;
}
