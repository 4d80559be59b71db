/* Fuzz target: a bb:directory entry, as the broker's consumer and
 * buurtbusctl handle it — DirectoryEvent decoding, bb_store_check (what the
 * writer refuses), bb_dir_apply on a live index — then a report and a status
 * update routed through the changed index, so that an index left
 * inconsistent by an event shows up at once. The index starts from the
 * small directory of fuzz_common.c and is rebuilt every RESET_EVERY inputs
 * to bound memory.
 *
 * With BB_FUZZ_STRICT=1 in the environment, each reason for which the
 * writer's check refuses an event that the index accepts is printed once
 * (the index is meant to be the more lenient of the two: it applies what
 * is already in the stream).
 *
 * Threads: libFuzzer's one thread (the index's writer and its one reader). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bb_err.h"
#include "directory.h"
#include "fuzz_common.h"
#include "route.h"
#include "snapshot.h"

#define RESET_EVERY 500

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct bb_dir *dir;
static struct bb_router *router;
static unsigned inputs;
static bool strict;

static void reset(void)
{
    bb_router_free(router);
    bb_dir_free(dir);
    dir = fuzz_dir_new();
    router = bb_router_new(dir);
    if (!router) {
        fuzz_fail("bb_router_new");
    }
}

/* Prints reason the first time it is seen (reasons are static strings). */
static void note_divergence(const char *reason)
{
    static const char *seen[64];
    static size_t nseen;
    for (size_t i = 0; i < nseen; i++) {
        if (seen[i] == reason) {
            return;
        }
    }
    if (nseen < sizeof(seen) / sizeof(seen[0])) {
        seen[nseen++] = reason;
    }
    fprintf(stderr, "divergence: bb_store_check refuses (%s) an event bb_dir_apply accepts\n",
            reason);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *s = getenv("BB_FUZZ_STRICT");
    strict = s && *s == '1';
    reset();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (++inputs % RESET_EVERY == 0) {
        reset();
    }
    Bb__DirectoryEvent *ev = bb__directory_event__unpack(NULL, size, data);
    if (!ev) {
        return 0;
    }
    const char *refused = bb_store_check(ev);
    char why[128] = "";
    int rc = bb_dir_apply(dir, ev, why, sizeof(why));
    if (rc != BB_OK && rc != BB_EINVAL && rc != BB_ENOMEM) {
        fuzz_fail("bb_dir_apply: %d %s", rc, why);
    }
    if (rc == BB_EINVAL && !why[0]) {
        fuzz_fail("bb_dir_apply refused an event without a reason");
    }
    if (strict && refused && rc == BB_OK) {
        note_divergence(refused);
    }
    bb__directory_event__free_unpacked(ev, NULL);
    bb_dir_reclaim(dir);

    /* Route through what the event left. */
    Bb__Report r;
    Bb__Media m[2], *mp[2];
    Bb__ReportStatus st;
    const struct bb_route_result *res;
    fuzz_report_sample((unsigned)size % FUZZ_REPORTS, &r, m, mp);
    rc = bb_route_report(router, &r, NULL, &res);
    if (rc != BB_OK && rc != BB_ENOTFOUND) {
        fuzz_fail("bb_route_report after an event: %d", rc);
    }
    fuzz_status_sample((unsigned)size % FUZZ_STATUSES, &st);
    rc = bb_route_status(router, &st, NULL, &res);
    if (rc != BB_OK) {
        fuzz_fail("bb_route_status after an event: %d", rc);
    }
    struct bb_dir_stats ds;
    bb_dir_stats(dir, &ds);
    return 0;
}
