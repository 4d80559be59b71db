/* Structured logging (logfmt) to stderr, for journald and humans.
 *
 *   ts=2026-11-28T13:48:26.123Z level=info prog=broker msg="connected" addr=127.0.0.1:6379
 *
 * Thread-safe: each line is formatted into a local buffer and written with
 * one write(2). A message repeated faster than the rate limit is suppressed;
 * the next line that gets through says how many were dropped
 * (suppressed=N). Never log personal data: ids of members are fine, names,
 * addresses and tokens are not. Short messages, no trailing period. */
#ifndef BB_LOG_H
#define BB_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum bb_log_level { BB_LOG_DEBUG = 0, BB_LOG_INFO, BB_LOG_WARN, BB_LOG_ERROR };

/* Call once at start. program: short name shown as prog=... (borrowed, must
 * outlive logging). */
void bb_log_init(const char *program, enum bb_log_level level);
void bb_log_set_level(enum bb_log_level level);
bool bb_log_enabled(enum bb_log_level level);
/* Parses "debug", "info", "warn", "error"; returns -1 for anything else. */
int bb_log_level_parse(const char *s);

/* msg: a fixed message (string literal; its address keys the rate limit).
 * kvfmt: printf format of the key=value pairs that follow, or NULL. Values
 * with spaces must be quoted by the caller (use %s with bb_log_quote's output
 * or keep values simple). */
void bb_log(enum bb_log_level level, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Added with log.c (the comment on bb_log refers to it): writes s into buf
 * as a logfmt value for a %s in kvfmt: unchanged if it is non-empty printable
 * ASCII without space, '"', '=' or '\'; otherwise double-quoted, with \" \\
 * \n \r \t and \xNN escapes. Always NUL-terminated; a value too long for cap
 * is cut before a whole character or escape and stays properly quoted.
 * Returns buf ("" if buf is NULL or cap is 0). NULL s is written as "". */
const char *bb_log_quote(char *buf, size_t cap, const char *s);

#define bb_debug(msg, ...) bb_log(BB_LOG_DEBUG, msg, __VA_ARGS__)
#define bb_info(msg, ...) bb_log(BB_LOG_INFO, msg, __VA_ARGS__)
#define bb_warn(msg, ...) bb_log(BB_LOG_WARN, msg, __VA_ARGS__)
#define bb_error(msg, ...) bb_log(BB_LOG_ERROR, msg, __VA_ARGS__)

#endif
