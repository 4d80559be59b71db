/* Time zone offsets by probing the C library once per zone (writer thread
 * only, see tz.h), then binary search at lookup time (any thread). */
#include "tz.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bb_tz {
    char *name;
    unsigned n;       /* number of spans */
    int64_t *starts;  /* span i begins at starts[i] (starts[0] = window start) */
    int32_t *offsets; /* offset during span i */
};

static int32_t probe(int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!localtime_r(&tt, &tm)) {
        return 0;
    }
    return (int32_t)tm.tm_gmtoff;
}

static bool zone_exists(const char *name)
{
    if (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0) {
        return true;
    }
    if (name[0] == '\0' || name[0] == '/' || strstr(name, "..")) {
        return false;
    }
    const char *dir = getenv("TZDIR");
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir ? dir : "/usr/share/zoneinfo", name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        return false;
    }
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    return got == 4 && memcmp(magic, "TZif", 4) == 0;
}

struct bb_tz *bb_tz_load(const char *name, int64_t window_start, int64_t window_end)
{
    if (!zone_exists(name)) {
        return NULL;
    }
    struct bb_tz *tz = calloc(1, sizeof(*tz));
    if (!tz) {
        return NULL;
    }
    tz->name = strdup(name);
    unsigned cap = 16;
    tz->starts = malloc(cap * sizeof(*tz->starts));
    tz->offsets = malloc(cap * sizeof(*tz->offsets));
    if (!tz->name || !tz->starts || !tz->offsets) {
        goto fail;
    }

    char *saved = getenv("TZ") ? strdup(getenv("TZ")) : NULL;
    setenv("TZ", name, 1);
    tzset();

    /* Probe every 6 hours; where the offset changes, bisect to the second.
     * Real zones never change twice within 6 hours. */
    const int64_t step = 6 * 3600;
    int32_t cur = probe(window_start);
    tz->starts[0] = window_start;
    tz->offsets[0] = cur;
    tz->n = 1;
    for (int64_t t = window_start; t < window_end; t += step) {
        int64_t next = t + step;
        int32_t o = probe(next);
        if (o == cur) {
            continue;
        }
        int64_t lo = t, hi = next; /* probe(lo) == cur, probe(hi) != cur */
        while (hi - lo > 1) {
            int64_t mid = lo + (hi - lo) / 2;
            if (probe(mid) == cur) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if (tz->n == cap) {
            cap *= 2;
            int64_t *s = realloc(tz->starts, cap * sizeof(*s));
            if (s) {
                tz->starts = s;
            }
            int32_t *of = realloc(tz->offsets, cap * sizeof(*of));
            if (of) {
                tz->offsets = of;
            }
            if (!s || !of) {
                break; /* keep what we have: offsets stay right up to here */
            }
        }
        tz->starts[tz->n] = hi;
        tz->offsets[tz->n] = o;
        tz->n++;
        cur = o;
    }

    if (saved) {
        setenv("TZ", saved, 1);
        free(saved);
    } else {
        unsetenv("TZ");
    }
    tzset();
    return tz;

fail:
    bb_tz_free(tz);
    return NULL;
}

void bb_tz_free(struct bb_tz *tz)
{
    if (!tz) {
        return;
    }
    free(tz->name);
    free(tz->starts);
    free(tz->offsets);
    free(tz);
}

const char *bb_tz_name(const struct bb_tz *tz)
{
    return tz->name;
}

int32_t bb_tz_offset_s(const struct bb_tz *tz, int64_t t)
{
    unsigned lo = 0, hi = tz->n; /* last span with start <= t */
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        if (tz->starts[mid] <= t) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return tz->offsets[lo];
}
