/* bb_dir_compact: renumbering users along the geohash curve changes where
 * they sit, never who gets what. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "directory.h"
#include "directory.pb-c.h"
#include "report.pb-c.h"
#include "route.h"

#define NUSERS 3000
#define NGROUPS 40
#define NREPORTS 300

static uint64_t rng = 12345;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double unif(double lo, double hi)
{
    return lo + (hi - lo) * (double)(rnd() % 1000000) / 1e6;
}

static void build(struct bb_dir *dir)
{
    char why[64];
    for (int g = 1; g <= NGROUPS; g++) {
        Bb__Group grp = BB__GROUP__INIT;
        char cell[16], *cells[1] = {cell};
        bb_geohash_format(bb_geohash_encode(unif(51.6, 51.8), unif(5.2, 5.4), 6), cell);
        grp.id = (uint64_t)g;
        grp.name = "g";
        grp.cells = cells;
        grp.n_cells = 1;
        assert_int_equal(bb_dir_upsert_group(dir, &grp, why, sizeof(why)), BB_OK);
    }
    for (int k = 0; k < NUSERS; k++) {
        Bb__User u = BB__USER__INIT;
        Bb__WatchArea w = BB__WATCH_AREA__INIT;
        uint64_t muted[1] = {1 + rnd() % NUSERS}, mg[1] = {1 + rnd() % NGROUPS};
        u.id = 1 + (uint64_t)k * 7; /* ids sparse and not in map order */
        if (k % 4) {
            w.lat = unif(51.6, 51.8);
            w.lon = unif(5.2, 5.4);
            w.radius_m = 300 + (uint32_t)(rnd() % 1500);
            u.watch = &w;
        }
        if (k % 17 == 0) {
            u.muted_authors = muted;
            u.n_muted_authors = 1;
            u.muted_groups = mg;
            u.n_muted_groups = 1;
        }
        assert_int_equal(bb_dir_upsert_user(dir, &u, why, sizeof(why)), BB_OK);
        for (int j = 0; j < 1 + k % 3; j++) {
            assert_int_equal(bb_dir_add_member(dir, u.id, 1 + rnd() % NGROUPS, why, sizeof(why)),
                             BB_OK);
        }
        if (k % 50 == 0) {
            assert_int_equal(bb_dir_add_follow(dir, u.id, "followed", why, sizeof(why)), BB_OK);
        }
    }
    /* Some churn, so the slot space has holes. */
    for (int k = 0; k < NUSERS; k += 9) {
        Bb__DirectoryEvent ev = BB__DIRECTORY_EVENT__INIT;
        ev.change_case = BB__DIRECTORY_EVENT__CHANGE_USER_ERASE;
        ev.user_erase = 1 + (uint64_t)k * 7;
        assert_int_equal(bb_dir_apply(dir, &ev, why, sizeof(why)), BB_OK);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every (report, channel, user), as one sorted list of hashes. */
static uint64_t *route_all(struct bb_dir *dir, size_t *n)
{
    struct bb_router *r = bb_router_new(dir);
    size_t cap = 1 << 16, k = 0;
    uint64_t *out = malloc(cap * sizeof(*out));
    uint64_t seed = rng;
    for (int i = 0; i < NREPORTS; i++) {
        Bb__Report rep = BB__REPORT__INIT;
        rep.id = "x";
        rep.time_ms = 1790000000000LL;
        rep.author_id = 1 + (rnd() % NUSERS) * 7;
        rep.group_id = rnd() % 2 ? 1 + rnd() % NGROUPS : 0;
        rep.lat = unif(51.6, 51.8);
        rep.lon = unif(5.2, 5.4);
        rep.category = BB__CATEGORY__CATEGORY_BURGLARY;
        rep.urgency = BB__URGENCY__URGENCY_IN_PROGRESS;
        rep.source = BB__SOURCE__SOURCE_RESIDENT;
        const struct bb_route_result *res;
        assert_int_equal(bb_route_report(r, &rep, NULL, &res), BB_OK);
        for (unsigned c = 0; c < BB_CHANNELS; c++) {
            for (unsigned l = 0; l < BB_LOCALES_MAX; l++) {
                for (uint32_t j = 0; j < res->lists[c][l].n; j++) {
                    if (k == cap) {
                        cap *= 2;
                        out = realloc(out, cap * sizeof(*out));
                    }
                    out[k++] = ((uint64_t)i << 40) ^ ((uint64_t)c << 36) ^ res->lists[c][l].ids[j];
                }
            }
        }
    }
    Bb__ReportStatus st = BB__REPORT_STATUS__INIT;
    st.id = "s";
    st.report_id = "followed";
    st.time_ms = 1790000000000LL;
    const struct bb_route_result *res;
    assert_int_equal(bb_route_status(r, &st, NULL, &res), BB_OK);
    assert_true(res->recipients > 0);
    out[k++] = 0xffff000000000000ULL + res->recipients;
    rng = seed;
    bb_router_free(r);
    qsort(out, k, sizeof(*out), cmp_u64);
    *n = k;
    return out;
}

static void compact_keeps_routing(void **state)
{
    struct bb_dir_params p = {7, 8, 5000};
    struct bb_dir *a = bb_dir_new(&p), *b = bb_dir_new(&p);
    uint64_t saved = rng;
    build(a);
    rng = saved;
    build(b);
    struct bb_dir_stats sa, sb;
    bb_dir_stats(b, &sb);
    assert_int_equal(bb_dir_compact(b), BB_OK);
    bb_dir_stats(b, &sa);
    assert_int_equal(sa.users, sb.users);
    assert_int_equal(sa.memberships, sb.memberships);
    assert_true(sa.bytes_users <= sb.bytes_users);

    /* Lookups by id still find everyone. */
    for (int k = 0; k < NUSERS; k++) {
        uint64_t id = 1 + (uint64_t)k * 7;
        uint32_t slot;
        const struct bb_user *u = bb_dir_user_find(b, id, &slot);
        if (k % 9 == 0) {
            assert_null(u);
        } else {
            assert_non_null(u);
            assert_int_equal(u->id, id);
            assert_ptr_equal(bb_dir_user_at(b, slot), u);
        }
    }
    uint64_t seed = rng;
    size_t na, nb;
    uint64_t *ra = route_all(a, &na);
    rng = seed;
    uint64_t *rb = route_all(b, &nb);
    assert_true(na > 1000);
    assert_int_equal(na, nb);
    assert_memory_equal(ra, rb, na * sizeof(uint64_t));

    /* Once a reader exists, compaction is refused. */
    struct bb_dir_reader *rd = bb_dir_reader_new(b);
    assert_int_equal(bb_dir_compact(b), BB_EINVAL);
    bb_dir_reader_free(rd);
    free(ra);
    free(rb);
    bb_dir_free(a);
    bb_dir_free(b);
}

/* Neighbours end up in neighbouring slots: along the new order, consecutive
 * users with watch areas are close far more often than in id order. */
static void compact_orders_by_place(void **state)
{
    struct bb_dir_params p = {7, 8, 5000};
    struct bb_dir *d = bb_dir_new(&p);
    build(d);
    assert_int_equal(bb_dir_compact(d), BB_OK);
    unsigned close = 0, pairs = 0;
    const struct bb_user *prev = NULL;
    for (uint32_t s = 0;; s++) {
        const struct bb_user *u = bb_dir_user_at(d, s);
        if (!u) {
            break;
        }
        if (u->radius_m && prev && prev->radius_m) {
            pairs++;
            close += bb_distance_m(u->lat, u->lon, prev->lat, prev->lon) < 2000;
        }
        prev = u;
    }
    assert_true(pairs > 1000);
    assert_true(close * 10 > pairs * 8); /* random placement gives well under half */
    bb_dir_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(compact_keeps_routing),
        cmocka_unit_test(compact_orders_by_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
