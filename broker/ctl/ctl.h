/* buurtbusctl internals shared by its command files (main.c holds the
 * dispatch and the helpers; one cmd_*.c per command). Single-threaded. */
#ifndef BB_CTL_H
#define BB_CTL_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct json_object;

enum { CTL_OK = 0, CTL_ERR = 1, CTL_USAGE = 2 };

#define CTL_DEFAULT_REDIS "127.0.0.1:6379"
#define CTL_DEFAULT_TIMEOUT_MS 30000

/* The broker's defaults (broker/options.c), for what the tool imitates. */
#define CTL_MAX_TEXT 4096
#define CTL_MAX_MEDIA 8
#define CTL_MAX_URL 2048
#define CTL_DEFAULT_PRECISION 7
#define CTL_WATCH_MAX_CELLS 8
#define CTL_MAX_RADIUS_M 5000

struct ctl {
    const char *redis;         /* --redis, borrowed from argv */
    const char *redis_user;    /* --redis-user: ACL user for AUTH; NULL: the default user */
    const char *password_file; /* --password-file */
    int timeout_ms;
    bool json;
    redisContext *c; /* after ctl_connect; freed by main */
};

struct ctl_cmd {
    const char *name;
    const char *summary; /* one line for the overview */
    const char *usage;   /* the command's --help text */
    int (*run)(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
    bool alias; /* an old name kept working; not listed in the overview */
};

/* Options every command accepts, for its getopt_long table. */
/* clang-format off */
#define CTL_COMMON_OPTS                                                                            \
    {"redis", required_argument, NULL, 'R'},                                                       \
    {"redis-user", required_argument, NULL, 'U'},                                                  \
    {"password-file", required_argument, NULL, 'P'},                                               \
    {"json", no_argument, NULL, 'J'},                                                              \
    {"timeout", required_argument, NULL, 'T'},                                                     \
    {"help", no_argument, NULL, 'h'}
/* clang-format on */

#define CTL_COMMON_HELP                                                                            \
    "Options for every command:\n"                                                                 \
    "  --redis HOST:PORT|PATH  Redis to use (default " CTL_DEFAULT_REDIS ")\n"                     \
    "  --redis-user NAME       Redis ACL user to AUTH as (default: the default user)\n"            \
    "  --password-file FILE    first line is the Redis password (AUTH)\n"                          \
    "  --timeout MS            connect and command timeout (default 30000)\n"                      \
    "  --json                  machine-readable output, where the command has it\n"                \
    "  --help                  this text\n"

/* Handles one of CTL_COMMON_OPTS (and getopt's '?'). Returns -1 to go on
 * parsing, or the exit code to return now (0 after --help, 2 on misuse). */
int ctl_common_opt(struct ctl *ctl, const struct ctl_cmd *cmd, int opt, const char *arg);

/* "buurtbusctl CMD: message" on stderr plus a pointer to --help; returns 2. */
int ctl_usage(const struct ctl_cmd *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* "buurtbusctl: message" on stderr; returns 1. */
int ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Connects (once) as the global options say. Returns 0, or 1 after
 * printing why. */
int ctl_connect(struct ctl *ctl);

/* The whole of a file, or standard input for "-". NUL-terminated; caller
 * frees. Returns 0, or 1 after printing why. */
int ctl_read_all(const char *path, char **buf, size_t *len);

/* Integer option values with bounds; 0 or 2 after printing a usage error. */
int ctl_parse_long(const struct ctl_cmd *cmd, const char *opt, const char *s, long min, long max,
                   long *out);

/* Prints o on one line to stdout and releases it. */
void ctl_print_json(struct json_object *o);

/* A command's reply, or NULL after printing "WHAT: redis' message" (an
 * error reply or a lost connection). The caller frees a reply. */
redisReply *ctl_redis(struct ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The value of field name in a flat [k, v, k, v...] reply (XINFO, a stream
 * entry's fields), or NULL. */
const redisReply *ctl_field(const redisReply *flat, const char *name);
/* The string of a reply, or dflt when it is not a string. */
const char *ctl_str(const redisReply *r, const char *dflt);

int64_t ctl_now_ms(void);
/* "2024-04-05T19:34:38.901Z" */
void ctl_format_ms(int64_t ms, char *buf, size_t cap);
/* The milliseconds part of a stream id ("1712345678901-0"), or -1. */
int64_t ctl_stream_id_ms(const char *id);

/* Commands (cmd_*.c). */
int cmd_load(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_post(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_route(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_status(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_dead_list(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_dead_replay(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_dead_purge(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_dict_train(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_dict_rotate(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_dict_show(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_export(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_outputs(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_snapshot(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);
int cmd_erase(struct ctl *ctl, const struct ctl_cmd *cmd, int argc, char **argv);

#endif
