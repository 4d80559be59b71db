/* Table-driven configuration files, the same for every buurtbus program.
 *
 * Format (like redis.conf): one option per line, "name value" or
 * "name = value"; '#' starts a comment; values may be double-quoted (with
 * \" and \\ escapes). Units:
 *   durations  500ms 5s 2m 1h 1d     (a bare number is in the option's unit:
 *                                     milliseconds for BB_OPT_DURATION_MS)
 *   sizes      1k=1000 1kb=1024 1m 1mb 1g 1gb (case-insensitive)
 *   booleans   yes/no, true/false, on/off, 1/0
 * Errors name the file, the line and what was expected:
 *   "broker.conf:12: redis_timeout: expected a duration like 500ms or 5s, got 'soon'"
 *
 * The option table is static data owned by the program; the target is the
 * program's config struct, filled through each option's offset. */
#ifndef BB_CONFIG_H
#define BB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum bb_opt_type {
    BB_OPT_INT,         /* int64_t, plain integer */
    BB_OPT_BOOL,        /* bool */
    BB_OPT_STRING,      /* char *, heap copy owned by the target; "" allowed */
    BB_OPT_DURATION_MS, /* int64_t milliseconds */
    BB_OPT_BYTES,       /* int64_t bytes */
    BB_OPT_SECRET_FILE, /* char *: the value names a file; the target gets the file's
                           first line (trailing newline stripped). Never printed. */
};

struct bb_opt {
    const char *name;
    enum bb_opt_type type;
    size_t offset;    /* offsetof(struct your_config, field) */
    const char *def;  /* default, written as in a file; NULL = 0 / NULL string */
    int64_t min, max; /* inclusive bounds for numeric types (after units); min == max == 0: none */
    const char *help; /* one line, used by bb_config_dump and the sample configs */
};

/* Sets every option to its default. Returns 0 or BB_ECONFIG (message in err). */
int bb_config_defaults(const struct bb_opt *opts, size_t n, void *target, char *err, size_t errlen);
/* Reads a file over the current values. Unknown options, bad values,
 * out-of-range numbers and unreadable files are errors. */
int bb_config_load_file(const struct bb_opt *opts, size_t n, void *target, const char *path,
                        char *err, size_t errlen);
/* The same from an open stream; path names it in messages, and relative
 * secret-file names are taken from path's directory. */
int bb_config_load_stream(const struct bb_opt *opts, size_t n, void *target, FILE *f,
                          const char *path, char *err, size_t errlen);
/* Sets one option from text (for command-line overrides such as --set name=value). */
int bb_config_set(const struct bb_opt *opts, size_t n, void *target, const char *name,
                  const char *value, char *err, size_t errlen);
/* Prints the effective configuration as a valid config file (secrets shown as "<hidden>"). */
void bb_config_dump(const struct bb_opt *opts, size_t n, const void *target, FILE *out);
/* Calls fn(option, arg) for every option whose value differs between the
 * targets a and b (for a reload: what changed); returns how many. */
size_t bb_config_diff(const struct bb_opt *opts, size_t n, const void *a, const void *b,
                      void (*fn)(const struct bb_opt *o, void *arg), void *arg);
/* Frees the strings the parser allocated in target. */
void bb_config_free(const struct bb_opt *opts, size_t n, void *target);

/* The command line every buurtbus daemon takes: -c/--config FILE,
 * --set NAME=VALUE (repeatable, applied after the file), --check-config,
 * --dump-config, --version, -h/--help. Strings are borrowed from argv. */
struct bb_cmdline {
    const char *config;
    const char **sets;
    size_t nsets;
    bool check_only, dump, version, help;
};

/* Returns 0, or BB_EINVAL for an unknown option or a stray argument (getopt
 * has printed why). Free with bb_cmdline_free. */
int bb_cmdline_parse(int argc, char **argv, struct bb_cmdline *cl);
void bb_cmdline_free(struct bb_cmdline *cl);
/* Applies NAME=VALUE strings to a table's target with bb_config_set. */
int bb_config_apply_sets(const struct bb_opt *opts, size_t n, void *target, const char *const *sets,
                         size_t nsets, char *err, size_t errlen);

/* Parsing helpers, also used for command-line flags. Return 0 or BB_EINVAL. */
int bb_parse_duration_ms(const char *s, int64_t *out);
int bb_parse_bytes(const char *s, int64_t *out);
int bb_parse_bool(const char *s, int *out);

#endif
