/* Time zones for quiet hours: a zone's UTC offsets over a window of time,
 * precomputed so router threads can answer "what time is it there" without
 * touching libc's global time zone state.
 *
 * bb_tz_load sets the TZ environment variable while it probes the system's
 * zone database, so only one thread may call it (the directory writer), and
 * no thread may use localtime() meanwhile (buurtbus logs in UTC). A loaded
 * zone is immutable: any thread may call bb_tz_offset_s on it. */
#ifndef BB_TZ_H
#define BB_TZ_H

#include <stdint.h>

struct bb_tz;

/* Loads name (an IANA zone such as "Europe/Amsterdam", or "UTC") with its
 * transitions from window_start to window_end (Unix seconds). Returns NULL
 * for a zone the system does not know. */
struct bb_tz *bb_tz_load(const char *name, int64_t window_start, int64_t window_end);
void bb_tz_free(struct bb_tz *tz); /* NULL is a no-op */
const char *bb_tz_name(const struct bb_tz *tz);
/* UTC offset in seconds at t; outside the window, the offset at its nearest edge. */
int32_t bb_tz_offset_s(const struct bb_tz *tz, int64_t t);

#endif
