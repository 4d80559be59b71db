/* JSON for buurtbusctl: directory lines, reports and status updates in
 * (to the protobuf messages of proto/), enum names out.
 *
 * Enum names are the proto names in lower case without their prefix:
 * "burglary", "in_progress", "police", "screen_name", "push", "resolved".
 * Unknown fields, wrong types and out-of-range values are errors; the
 * message names the field by its path ("user.prefs.quiet.from: expected
 * HH:MM, got \"25:00\"").
 *
 * Threads: any, each with its own bb_jarena. */
#ifndef BB_CTL_JSON_H
#define BB_CTL_JSON_H

#include <stddef.h>
#include <stdint.h>

struct json_object;
struct Bb__DirectoryEvent;
struct Bb__Report;
struct Bb__ReportStatus;

/* Memory for converted messages: everything a conversion allocates lives
 * here until bb_jarena_reset or bb_jarena_free. */
struct bb_jarena;
struct bb_jarena *bb_jarena_new(void);
void bb_jarena_reset(struct bb_jarena *a);
void bb_jarena_free(struct bb_jarena *a); /* NULL is a no-op */

/* Parses exactly one JSON value from text (len bytes; text need not be
 * NUL-terminated); anything but white space after it is an error. The
 * caller releases *out with json_object_put. Returns 0 or BB_EINVAL. */
int bb_json_parse(const char *text, size_t len, struct json_object **out, char *err, size_t errlen);

/* Reads the next JSON value of a stream of values (JSON Lines or
 * concatenated objects) from text at *off, and moves *off past it. At the
 * end *out is NULL. Errors name the line and column. Returns 0 or
 * BB_EINVAL. */
int bb_json_parse_next(const char *text, size_t len, size_t *off, struct json_object **out,
                       char *err, size_t errlen);
/* The 1-based line number of byte off in text. */
size_t bb_json_line_of(const char *text, size_t off);

/* One directory line: an object with exactly one of user, group, member,
 * unmember, erase_user, delete_group, preferences, mute, unmute, follow,
 * unfollow (see docs/contracts.md). *out lives in a. Returns 0 or
 * BB_EINVAL with "path: message" in err. */
int bb_json_directory_event(struct bb_jarena *a, const struct json_object *obj,
                            struct Bb__DirectoryEvent **out, char *err, size_t errlen);

/* A report; time_ms defaults to now_ms. Field checks are the JSON's only;
 * bb_validate_report says what the broker will accept. */
int bb_json_report(struct bb_jarena *a, const struct json_object *obj, int64_t now_ms,
                   struct Bb__Report **out, char *err, size_t errlen);
int bb_json_status(struct bb_jarena *a, const struct json_object *obj, int64_t now_ms,
                   struct Bb__ReportStatus **out, char *err, size_t errlen);

/* The other way, for directory export: a user or group record as the
 * object a {"user": ...} / {"group": ...} line holds, so that
 * bb_json_directory_event reads back the same record. Ids past 2^53 are
 * strings of digits. The caller releases the result. */
struct Bb__User;
struct Bb__Group;
struct json_object *bb_json_from_user(const struct Bb__User *u);
struct json_object *bb_json_from_group(const struct Bb__Group *g);
/* An id as a JSON integer, or a string of digits past 2^53. */
struct json_object *bb_json_id(uint64_t id);

/* Names of enum values (static strings; "?" for a number without one). */
const char *bb_json_category_name(int v);
const char *bb_json_urgency_name(int v);
const char *bb_json_source_name(int v);
const char *bb_json_status_name(int v);

/* One line of a route explanation (route.h, struct bb_explain_line) as
 * buurtbusctl route --json and the broker's console show it: user (or
 * group), route, verdict, channels, notes, group. with_name adds
 * "screen_name" (screen_name, or null). The caller releases the result. */
struct bb_explain_line;
struct json_object *bb_json_explain_line(const struct bb_explain_line *l, int with_name,
                                         const char *screen_name);

/* The totals of a route explanation, added to o: "directory" (users,
 * groups, last_id: the bb:directory entry the index is up to),
 * "considered", "recipients", "deliveries" and "channels" (deliveries per
 * channel; social counts groups). */
struct bb_route_result;
struct bb_dir;
void bb_json_explain_totals(struct json_object *o, const struct bb_route_result *res,
                            const struct bb_dir *dir, const char *last_id);

#endif
