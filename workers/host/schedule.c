/* When a collection is sent: at a user's digest hour in their own time
 * zone (daily, or weekly on Monday), or every fixed interval. Also the
 * zone offsets plug-ins get (host->utc_offset_s) to show local times.
 *
 * Zones are loaded once per name (common/tz.c) over a window of weeks and
 * reloaded when time runs past it.
 *
 * Threads: the event-loop thread only (bb_tz_load sets TZ while it probes). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "tz.h"

#define DAY 86400
#define DEFAULT_TZ "Europe/Amsterdam"
#define ZONES_MAX 64

struct zone {
    char name[64];
    struct bb_tz *tz;
    int64_t from, until; /* loaded for this span (Unix s); reloaded outside it */
};

static struct zone zones[ZONES_MAX];
static size_t nzones;

static const struct bb_tz *zone_get(const char *name, int64_t now_s)
{
    if (!name || !name[0] || strlen(name) >= sizeof(zones[0].name)) {
        name = DEFAULT_TZ;
    }
    struct zone *z = NULL;
    for (size_t i = 0; i < nzones; i++) {
        if (strcmp(zones[i].name, name) == 0) {
            z = &zones[i];
        }
    }
    if (z && now_s >= z->from && now_s < z->until) {
        return z->tz;
    }
    struct bb_tz *tz = bb_tz_load(name, now_s - 2 * DAY, now_s + 60 * DAY);
    if (!tz) {
        return strcmp(name, DEFAULT_TZ) == 0 ? NULL : zone_get(DEFAULT_TZ, now_s);
    }
    if (!z) {
        if (nzones == ZONES_MAX) {
            /* Many zones in use: forget them all, they load again on demand. */
            bb_schedule_cleanup();
        }
        z = &zones[nzones++];
        strcpy(z->name, name);
    } else {
        bb_tz_free(z->tz);
    }
    z->tz = tz;
    z->from = now_s - DAY;
    z->until = now_s + 30 * DAY;
    return tz;
}

void bb_schedule_cleanup(void)
{
    for (size_t i = 0; i < nzones; i++) {
        bb_tz_free(zones[i].tz);
    }
    nzones = 0;
}

int32_t bb_utc_offset_s(const char *tzname, int64_t unix_s)
{
    const struct bb_tz *tz = zone_get(tzname, unix_s);
    return tz ? bb_tz_offset_s(tz, unix_s) : 0;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

int64_t bb_next_local_hour_ms(const char *tzname, unsigned hour, bool weekly, int64_t now_ms)
{
    int64_t now_s = floor_div(now_ms, 1000);
    const struct bb_tz *tz = zone_get(tzname, now_s);
    int64_t off = tz ? bb_tz_offset_s(tz, now_s) : 0;
    int64_t day0 = floor_div(now_s + off, DAY);
    if (hour > 23) {
        hour = 23;
    }
    for (int64_t d = day0; d < day0 + 9; d++) {
        /* 1970-01-01 was a Thursday: (d + 3) % 7 == 0 on Mondays. */
        if (weekly && (d + 3) % 7 != 0) {
            continue;
        }
        int64_t local = d * DAY + (int64_t)hour * 3600;
        int64_t utc = local - off;
        if (tz) {
            utc = local - bb_tz_offset_s(tz, utc);
            utc = local - bb_tz_offset_s(tz, utc);
        }
        if (utc * 1000 > now_ms) {
            return utc * 1000;
        }
    }
    return now_ms + DAY * 1000; /* not reached */
}

int64_t bb_next_interval_ms(int64_t every_ms, int64_t now_ms)
{
    return (floor_div(now_ms, every_ms) + 1) * every_ms;
}
