/* Input validation: what the broker accepts from bb:reports and
 * bb:report-status, after protobuf decoding. protobuf-c accepts a message
 * truncated at a field boundary and invalid UTF-8, so every field is
 * checked here. Pure functions, any thread. */
#ifndef BB_VALIDATE_H
#define BB_VALIDATE_H

#include <stddef.h>

struct Bb__Report;
struct Bb__ReportStatus;

struct bb_limits {
    size_t max_text;  /* bytes of text */
    size_t max_media; /* media items */
    size_t max_url;   /* bytes per media URL */
};

/* NULL if the report is acceptable, else a machine-readable reason such as
 * "missing_field:id", "bad_location", "unknown_category", "text_too_long",
 * "bad_utf8:text" (a static string). */
const char *bb_validate_report(const struct Bb__Report *r, const struct bb_limits *lim);
const char *bb_validate_status(const struct Bb__ReportStatus *s, const struct bb_limits *lim);

#endif
