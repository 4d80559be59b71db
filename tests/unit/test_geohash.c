/* Unit tests for broker/geohash.c: known geohash values, cell arithmetic, neighbours, circle
 * covers (property tests with random centres) and distances. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bb_err.h"
#include "geohash.h"

#define PI 3.14159265358979323846
#define RAD (PI / 180.0)
#define EARTH_R 6371008.8

/* Deterministic xorshift so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

static double rng_uniform(double lo, double hi)
{
    return lo + (hi - lo) * ((double)(rng_next() >> 11) / 9007199254740992.0);
}

static bb_cell cell_of(const char *s)
{
    bb_cell c = 0;

    assert_int_equal(bb_geohash_parse(s, strlen(s), &c), 0);
    return c;
}

static void assert_cell_str(bb_cell c, const char *expect)
{
    char buf[13];

    bb_geohash_format(c, buf);
    assert_string_equal(buf, expect);
}

/* ---- encode ---- */

static const struct {
    double lat, lon;
    const char *hash;
} known[] = {
    {57.64911, 10.40744, "u4pruydqqvj"}, /* Wikipedia's example */
    {42.6, -5.6, "ezs42"},               /* Wikipedia: ezs42 decodes to about 42.6, -5.6 */
    {37.7749, -122.4194, "9q8yy"},       /* San Francisco */
    {0.0, 0.0, "s00000000000"},
    {0.0, 0.0, "s"},
    {-90.0, -180.0, "000000000000"},
    {-90.0, -180.0, "0"},
    {90.0, 180.0, "zzzzzzzzzzzz"},
    {90.0, 180.0, "z"},
    {90.0, -180.0, "bpbpbpbpbpbp"},
    {-90.0, 180.0, "pbpbpbpbpbpb"},
};

static void test_encode_known(void **state)
{
    size_t i;

    for (i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        unsigned p = (unsigned)strlen(known[i].hash);
        bb_cell c = bb_geohash_encode(known[i].lat, known[i].lon, p);

        assert_int_equal(bb_cell_precision(c), p);
        assert_cell_str(c, known[i].hash);
        assert_true(c == cell_of(known[i].hash));
    }
}

/* Each precision is a prefix of precision 12. */
static void test_encode_prefixes(void **state)
{
    int n;

    for (n = 0; n < 2000; n++) {
        double lat = rng_uniform(-90, 90), lon = rng_uniform(-180, 180);
        bb_cell full = bb_geohash_encode(lat, lon, 12);
        char s12[13], s[13];
        unsigned p;

        bb_geohash_format(full, s12);
        for (p = 1; p <= 12; p++) {
            bb_cell c = bb_geohash_encode(lat, lon, p);

            assert_int_equal(bb_geohash_format(c, s), p);
            assert_memory_equal(s, s12, p);
            assert_true(bb_cell_parent(full, p) == c);
        }
    }
}

/* The classic bisection encoder, as a cross-check of the bit-interleaving one. */
static void bisect_encode(double lat, double lon, unsigned p, char *out)
{
    static const char alpha[] = "0123456789bcdefghjkmnpqrstuvwxyz";
    double la[2] = {-90, 90}, lo[2] = {-180, 180};
    unsigned i, v = 0;

    for (i = 0; i < 5 * p; i++) {
        double *r = (i % 2 == 0) ? lo : la;
        double x = (i % 2 == 0) ? lon : lat;
        double mid = (r[0] + r[1]) / 2;

        v <<= 1;
        if (x >= mid) {
            v |= 1;
            r[0] = mid;
        } else {
            r[1] = mid;
        }
        if (i % 5 == 4) {
            out[i / 5] = alpha[v];
            v = 0;
        }
    }
    out[p] = '\0';
}

static void test_encode_matches_bisection(void **state)
{
    int n;

    for (n = 0; n < 5000; n++) {
        double lat = rng_uniform(-90, 90), lon = rng_uniform(-180, 180);
        char a[13], b[13];

        bisect_encode(lat, lon, 12, a);
        bb_geohash_format(bb_geohash_encode(lat, lon, 12), b);
        assert_string_equal(a, b);
    }
}

/* ---- bounds, centre ---- */

static void test_bounds(void **state)
{
    int n;

    for (n = 0; n < 2000; n++) {
        double lat = rng_uniform(-90, 90), lon = rng_uniform(-180, 180);
        unsigned p;

        for (p = 1; p <= 12; p++) {
            bb_cell c = bb_geohash_encode(lat, lon, p);
            unsigned nlon = (5 * p + 1) / 2, nlat = 5 * p / 2;
            struct bb_box b;
            double clat, clon;

            bb_cell_bounds(c, &b);
            assert_true(b.lat_min <= lat && lat <= b.lat_max);
            assert_true(b.lon_min <= lon && lon <= b.lon_max);
            assert_true(fabs((b.lat_max - b.lat_min) - 180.0 / (1u << nlat)) < 1e-12);
            assert_true(fabs((b.lon_max - b.lon_min) - 360.0 / (1u << nlon)) < 1e-12);
            bb_cell_center(c, &clat, &clon);
            assert_true(bb_geohash_encode(clat, clon, p) == c);
        }
    }
}

static void test_bounds_literal(void **state)
{
    struct bb_box b;

    bb_cell_bounds(cell_of("s"), &b);
    assert_true(b.lat_min == 0.0 && b.lat_max == 45.0 && b.lon_min == 0.0 && b.lon_max == 45.0);
    bb_cell_bounds(cell_of("z"), &b);
    assert_true(b.lat_min == 45.0 && b.lat_max == 90.0 && b.lon_min == 135.0 && b.lon_max == 180.0);
    /* Wikipedia: ezs42 is 42.583..42.627 x -5.625..-5.581 */
    bb_cell_bounds(cell_of("ezs42"), &b);
    assert_true(fabs(b.lat_min - 42.5830078125) < 1e-12 && fabs(b.lat_max - 42.626953125) < 1e-12);
    assert_true(fabs(b.lon_min - -5.625) < 1e-12 && fabs(b.lon_max - -5.5810546875) < 1e-12);
}

/* ---- parse, format ---- */

static void test_parse_format_roundtrip(void **state)
{
    int n;

    for (n = 0; n < 2000; n++) {
        unsigned p = 1 + (unsigned)(rng_next() % 12);
        bb_cell c = bb_geohash_encode(rng_uniform(-90, 90), rng_uniform(-180, 180), p), d = 0;
        char s[13];

        assert_int_equal(bb_geohash_format(c, s), p);
        assert_int_equal(strlen(s), p);
        assert_int_equal(bb_geohash_parse(s, p, &d), 0);
        assert_true(c == d);
    }
}

static void test_parse_case_and_rejects(void **state)
{
    static const char *bad[] = {"",     "u4pruydqqvjaa", "a",    "i",   "l",        "o", "u4pA",
                                "u4pI", "u-4",           "u4 p", "u4_", "\xc3\xa9", "A", "L",
                                "O",    "u4p\x7f"};
    bb_cell c = 0, d = 0, keep = 12345;
    size_t i;

    assert_int_equal(bb_geohash_parse("U4PRUYDQQVJ", 11, &c), 0);
    assert_int_equal(bb_geohash_parse("u4pruydqqvj", 11, &d), 0);
    assert_true(c == d);
    assert_int_equal(bb_geohash_parse("0123456789bc", 12, &c), 0);
    assert_int_equal(bb_geohash_parse("defghjkmnpqr", 12, &c), 0);
    assert_int_equal(bb_geohash_parse("stuvwxyzSTUV", 12, &c), 0);
    /* len, not the NUL, decides */
    assert_int_equal(bb_geohash_parse("u4pruydqqvjzzzz", 3, &c), 0);
    assert_true(c == cell_of("u4p"));
    assert_int_equal(bb_geohash_parse("u4\0p", 4, &c), BB_EINVAL);

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bb_cell out = keep;

        assert_int_equal(bb_geohash_parse(bad[i], strlen(bad[i]), &out), BB_EINVAL);
        assert_true(out == keep);
    }
    assert_int_equal(bb_geohash_parse("u4pruydqqvjz", 13, &c), BB_EINVAL);
}

/* ---- parent, contains ---- */

static void test_parent_contains(void **state)
{
    bb_cell c = cell_of("u4pruydqqvj");

    assert_true(bb_cell_parent(c, 4) == cell_of("u4pr"));
    assert_true(bb_cell_parent(c, 1) == cell_of("u"));
    assert_true(bb_cell_parent(c, 11) == c);
    assert_true(bb_cell_contains(cell_of("u4pr"), c));
    assert_true(bb_cell_contains(c, c));
    assert_true(bb_cell_contains(cell_of("u"), cell_of("u4")));
    assert_false(bb_cell_contains(cell_of("u4ps"), c));
    assert_false(bb_cell_contains(c, cell_of("u4pr")));
    assert_false(bb_cell_contains(cell_of("v"), c));
    /* "0" and "00" have the same bits but different precisions */
    assert_true(cell_of("0") != cell_of("00"));
    assert_true(bb_cell_contains(cell_of("0"), cell_of("00")));
    assert_false(bb_cell_contains(cell_of("00"), cell_of("0")));
}

/* ---- neighbours ---- */

static void assert_neighbours(const char *cell, const char *const expect[8])
{
    bb_cell out[8];
    unsigned n = bb_cell_neighbours(cell_of(cell), out), i, k = 0;

    for (i = 0; i < 8; i++) {
        if (expect[i] != NULL) {
            assert_true(k < n);
            assert_cell_str(out[k++], expect[i]);
        }
    }
    assert_int_equal(n, k);
}

static void test_neighbours_known(void **state)
{
    /* N, NE, E, SE, S, SW, W, NW */
    static const char *gbsuv[8] = {"gbsvj", "gbsvn", "gbsuy", "gbsuw",
                                   "gbsut", "gbsus", "gbsuu", "gbsvh"};
    static const char *dqcjq[8] = {"dqcjw", "dqcjx", "dqcjr", "dqcjp",
                                   "dqcjn", "dqcjj", "dqcjm", "dqcjt"};
    static const char *u1hb[8] = {"u1hc", "u1j1", "u1j0", "u0vp", "u0uz", "u0ux", "u1h8", "u1h9"};
    /* top right corner of the world: no N row, east wraps to -180 */
    static const char *zzzz[8] = {NULL, NULL, "bpbp", "bpbn", "zzzy", "zzzw", "zzzx", NULL};
    /* bottom left: no S row, west wraps to +180 */
    static const char *c0000[8] = {"0001", "0003", "0002", NULL, NULL, NULL, "pbpb", "pbpc"};
    /* (0, 0): all four quadrants meet */
    static const char *s000[8] = {"s001", "s003", "s002", "kpbr", "kpbp", "7zzz", "ebpb", "ebpc"};
    static const char *b[8] = {NULL, NULL, "c", "9", "8", "x", "z", NULL};

    assert_neighbours("gbsuv", gbsuv);
    assert_neighbours("dqcjq", dqcjq);
    assert_neighbours("u1hb", u1hb);
    assert_neighbours("zzzz", zzzz);
    assert_neighbours("0000", c0000);
    assert_neighbours("s000", s000);
    assert_neighbours("b", b);
}

static double lon_diff(double a, double b)
{
    double d = fmod(a - b, 360.0);

    if (d > 180.0) {
        d -= 360.0;
    } else if (d <= -180.0) {
        d += 360.0;
    }
    return d;
}

/* Every neighbour has the same size and touches the cell on the side its direction says. */
static void test_neighbours_touch(void **state)
{
    static const int dir[8][2] = {{1, 0},  {1, 1},   {0, 1},  {-1, 1},
                                  {-1, 0}, {-1, -1}, {0, -1}, {1, -1}};
    int n;

    for (n = 0; n < 3000; n++) {
        unsigned p = 1 + (unsigned)(rng_next() % 12);
        /* bias some samples to the poles and the antimeridian */
        double lat = (n % 5 == 0) ? (n % 10 == 0 ? 89.9999999 : -89.9999999) : rng_uniform(-90, 90);
        double lon = (n % 7 == 0) ? 179.9999999 : rng_uniform(-180, 180);
        bb_cell c = bb_geohash_encode(lat, lon, p), out[8];
        struct bb_box cb;
        unsigned cnt = bb_cell_neighbours(c, out), i, k = 0;

        bb_cell_bounds(c, &cb);
        for (i = 0; i < 8; i++) {
            double want_lat = (cb.lat_min + cb.lat_max) / 2 + dir[i][0] * (cb.lat_max - cb.lat_min);
            struct bb_box nb;

            if (want_lat > 90.0 || want_lat < -90.0) {
                continue;
            }
            assert_true(k < cnt);
            assert_int_equal(bb_cell_precision(out[k]), p);
            bb_cell_bounds(out[k], &nb);
            k++;
            assert_true(fabs((nb.lat_max - nb.lat_min) - (cb.lat_max - cb.lat_min)) < 1e-12);
            assert_true(fabs((nb.lon_max - nb.lon_min) - (cb.lon_max - cb.lon_min)) < 1e-12);
            if (dir[i][0] > 0) {
                assert_true(nb.lat_min == cb.lat_max);
            } else if (dir[i][0] < 0) {
                assert_true(nb.lat_max == cb.lat_min);
            } else {
                assert_true(nb.lat_min == cb.lat_min);
            }
            if (dir[i][1] > 0) {
                assert_true(fabs(lon_diff(nb.lon_min, cb.lon_max)) < 1e-9);
            } else if (dir[i][1] < 0) {
                assert_true(fabs(lon_diff(nb.lon_max, cb.lon_min)) < 1e-9);
            } else {
                assert_true(nb.lon_min == cb.lon_min);
            }
        }
        assert_int_equal(cnt, k);
    }
}

/* ---- circle cover ---- */

static void destination(double lat, double lon, double bearing, double dist, double *olat,
                        double *olon)
{
    double p1 = lat * RAD, l1 = lon * RAD, d = dist / EARTH_R;
    double p2 = asin(sin(p1) * cos(d) + cos(p1) * sin(d) * cos(bearing));
    double l2 = l1 + atan2(sin(bearing) * sin(d) * cos(p1), cos(d) - sin(p1) * sin(p2));

    *olat = p2 / RAD;
    *olon = lon_diff(l2 / RAD, 0.0);
    if (*olon == -180.0 && rng_next() % 2) {
        *olon = 180.0;
    }
}

static bool in_set(bb_cell c, const bb_cell *set, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        if (set[i] == c) {
            return true;
        }
    }
    return false;
}

/* Checks the cover of one circle: count, one precision, distinct cells, every sampled point
 * within the radius lies in a returned cell, and no returned cell is clearly outside. */
static unsigned check_cover(double lat, double lon, double r, unsigned max_cells, int samples)
{
    bb_cell out[64];
    unsigned n, p, i, j;
    int s;

    assert_true(max_cells <= 64);
    n = bb_geohash_cover_circle(lat, lon, r, max_cells, out);
    assert_true(n >= 1);
    assert_true(n <= max_cells);
    p = bb_cell_precision(out[0]);
    assert_true(p >= 1 && p <= 12);
    for (i = 0; i < n; i++) {
        assert_int_equal(bb_cell_precision(out[i]), p);
        for (j = i + 1; j < n; j++) {
            assert_true(out[i] != out[j]);
        }
    }
    assert_true(in_set(bb_geohash_encode(lat, lon, p), out, n));

    for (s = 0; s < samples; s++) {
        /* half uniform over the disc, half right on the rim */
        double d = (s % 2) ? r * sqrt(rng_uniform(0, 1)) : r * (1 - 1e-12);
        double plat, plon;

        destination(lat, lon, rng_uniform(0, 2 * PI), d, &plat, &plon);
        if (bb_distance_m(lat, lon, plat, plon) > r) {
            continue;
        }
        if (!in_set(bb_geohash_encode(plat, plon, p), out, n)) {
            char buf[13];

            bb_geohash_format(bb_geohash_encode(plat, plon, p), buf);
            fail_msg("centre %.9f,%.9f r %.3f max %u: point %.9f,%.9f (%s) not covered", lat, lon,
                     r, max_cells, plat, plon, buf);
        }
    }

    /* Tightness: the nearest sampled point of each cell is within the radius, give or take
     * the sampling step. */
    for (i = 0; i < n; i++) {
        struct bb_box b;
        double best = INFINITY, step;
        int a, c;

        bb_cell_bounds(out[i], &b);
        for (a = 0; a <= 32; a++) {
            for (c = 0; c <= 32; c++) {
                double d = bb_distance_m(lat, lon, b.lat_min + (b.lat_max - b.lat_min) * a / 32,
                                         b.lon_min + (b.lon_max - b.lon_min) * c / 32);

                best = d < best ? d : best;
            }
        }
        step = bb_distance_m(b.lat_min, b.lon_min, b.lat_max, b.lon_max) / 32;
        if (!(best <= r + step + 1e-6)) {
            fail_msg("cell %u of %.9f,%.9f r %.3f: nearest sample %.3f m", i, lat, lon, r, best);
        }
    }
    return p;
}

static void test_cover_property_nl(void **state)
{
    static const unsigned caps[] = {4, 8, 9, 16, 32};
    int n;

    for (n = 0; n < 3000; n++) {
        double lat = rng_uniform(50.75, 53.55), lon = rng_uniform(3.35, 7.25);
        double r = (n % 10 == 0) ? rng_uniform(0, 5) : rng_uniform(0, 5000);

        check_cover(lat, lon, r, caps[n % 5], 200);
    }
}

static void test_cover_property_world(void **state)
{
    static const unsigned caps[] = {4, 8, 16, 32};
    int n;

    for (n = 0; n < 3000; n++) {
        double lat = rng_uniform(-90, 90), lon = rng_uniform(-180, 180);
        double r = rng_uniform(0, 5000);

        /* the pole needs 8 cells, even at precision 1 */
        if (fabs(lat) + r / EARTH_R / RAD >= 90.0) {
            continue;
        }
        check_cover(lat, lon, r, caps[n % 4], 200);
    }
}

static void test_cover_large_radii(void **state)
{
    int n;

    for (n = 0; n < 300; n++) {
        double lat = rng_uniform(-90, 90), lon = rng_uniform(-180, 180);
        double r = rng_uniform(5000, 6000e3);

        check_cover(lat, lon, r, 32, 500);
    }
}

/* Cell corners and edges, the antimeridian and the poles. */
static void test_cover_edges(void **state)
{
    static const struct {
        double lat, lon, r;
        unsigned max;
    } cases[] = {
        {0, 0, 1, 4},
        {0, 0, 100, 8},
        {45, 0, 10, 4},
        {0, 180, 500, 8},
        {0, -180, 500, 8},
        {0, 179.9999, 500, 8},
        {-33.2, -179.999, 2000, 8},
        {65.5, 179.99999, 50, 16},
        {89.9, 0, 5000, 32},
        {-89.99, 30, 3000, 32},
        {90, 0, 1000, 8},
        {-90, 0, 1, 8},
        {89.99, 10, 1112, 8},
        {52.0, 5.0, 0.01, 4},
        {52.0, 5.0, 1e-6, 4},
        {-45, -90, 3, 9},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        check_cover(cases[i].lat, cases[i].lon, cases[i].r, cases[i].max, 2000);
    }
    /* a circle around the pole holds every column: precision 1 with 8 cells */
    {
        bb_cell out[8];

        assert_int_equal(bb_geohash_cover_circle(90, 0, 1000, 8, out), 8);
        assert_int_equal(bb_cell_precision(out[0]), 1);
    }
}

static void test_cover_radius_zero(void **state)
{
    bb_cell out[8];
    int n;

    for (n = 0; n < 500; n++) {
        double lat = rng_uniform(-90, 90), lon = rng_uniform(-180, 180);

        assert_int_equal(bb_geohash_cover_circle(lat, lon, 0, 8, out), 1);
        assert_true(out[0] == bb_geohash_encode(lat, lon, 12));
    }
    /* even on a corner shared by four cells, and with max_cells 1 */
    assert_int_equal(bb_geohash_cover_circle(0, 0, 0, 1, out), 1);
    assert_true(out[0] == bb_geohash_encode(0, 0, 12));
    assert_int_equal(bb_geohash_cover_circle(0, 0, -5, 1, out), 1);
    assert_int_equal(bb_geohash_cover_circle(0, 0, 10, 0, out), 0);
}

static void test_cover_precision_choice(void **state)
{
    bb_cell out[64];
    unsigned n, p, prev = 0, cap;

    /* 1 m: a 2 m disc meets at most 4 cells of 4.8 x 4.8 m (precision 9) */
    n = bb_geohash_cover_circle(52.1, 5.1, 1, 8, out);
    assert_true(n <= 8);
    assert_true(bb_cell_precision(out[0]) >= 9);
    /* 500 m with 8 cells: precision 5 or 6 */
    n = bb_geohash_cover_circle(52.0907, 5.1214, 500, 8, out);
    p = bb_cell_precision(out[0]);
    assert_true(n <= 8 && (p == 5 || p == 6));
    /* more room never means coarser */
    for (cap = 4; cap <= 64; cap++) {
        n = bb_geohash_cover_circle(52.0907, 5.1214, 2500, cap, out);
        p = bb_cell_precision(out[0]);
        assert_true(n <= cap);
        assert_true(p >= prev);
        prev = p;
    }
}

static void test_cover_huge(void **state)
{
    bb_cell out[32];
    unsigned n, i;

    /* 20,000 km is nearly the whole sphere: all 32 precision-1 cells */
    n = bb_geohash_cover_circle(52.0, 5.0, 20000e3, 32, out);
    assert_int_equal(n, 32);
    for (i = 0; i < n; i++) {
        assert_int_equal(bb_cell_precision(out[i]), 1);
    }
    n = bb_geohash_cover_circle(52.0, 5.0, 1e12, 32, out);
    assert_int_equal(n, 32);
    n = bb_geohash_cover_circle(52.0, 5.0, INFINITY, 32, out);
    assert_int_equal(n, 32);

    /* Impossible: capped at max_cells precision-1 cells, the centre's own first. */
    n = bb_geohash_cover_circle(52.0, 5.0, 20000e3, 4, out);
    assert_int_equal(n, 4);
    assert_cell_str(out[0], "u");
    for (i = 0; i < n; i++) {
        assert_int_equal(bb_cell_precision(out[i]), 1);
    }
    n = bb_geohash_cover_circle(90.0, 0.0, 10, 4, out);
    assert_int_equal(n, 4);
}

/* Fewer than 4 cells: whatever comes back fits, and is complete when it is not capped. */
static void test_cover_small_max(void **state)
{
    bb_cell out[3];
    unsigned cap;
    int n;

    for (cap = 1; cap <= 3; cap++) {
        for (n = 0; n < 300; n++) {
            double lat = rng_uniform(50.75, 53.55), lon = rng_uniform(3.35, 7.25);
            double r = rng_uniform(0, 2000);
            unsigned k = bb_geohash_cover_circle(lat, lon, r, cap, out);

            assert_true(k >= 1 && k <= cap);
            if (bb_cell_precision(out[0]) > 1) {
                check_cover(lat, lon, r, cap, 100);
            }
        }
    }
    /* a centre on a corner meets four cells at every precision: capped at precision 1 */
    assert_int_equal(bb_geohash_cover_circle(0, 0, 1, 3, out), 3);
    assert_int_equal(bb_cell_precision(out[0]), 1);
    /* a small circle inside one cell is a single cell */
    assert_int_equal(bb_geohash_cover_circle(52.1, 5.1, 0.001, 1, out), 1);
    assert_true(bb_cell_precision(out[0]) >= 9);
}

/* ---- distances ---- */

static void test_distance_known(void **state)
{
    /* Amsterdam - Utrecht: 34.16 km great-circle (haversine, R 6371008.8) */
    double d = bb_distance_m(52.3676, 4.9041, 52.0907, 5.1214);

    assert_true(fabs(d - 34162.1) < 0.01 * 34162.1);
    assert_true(fabs(d - 34162.1) < 1.0);
    /* one degree along the equator and a meridian: R * pi / 180 */
    assert_true(fabs(bb_distance_m(0, 0, 0, 1) - 111195.08) < 0.01);
    assert_true(fabs(bb_distance_m(10, 20, 11, 20) - 111195.08) < 0.01);
    /* pole to pole and antipodes: half the circumference */
    assert_true(fabs(bb_distance_m(90, 0, -90, 0) - PI * EARTH_R) < 1e-3);
    assert_true(fabs(bb_distance_m(0, 0, 0, 180) - PI * EARTH_R) < 1e-3);
    assert_true(fabs(bb_distance_m(30, 100, -30, -80) - PI * EARTH_R) < 1e-3);
    assert_true(bb_distance_m(52.1, 5.1, 52.1, 5.1) == 0.0);
    /* across the antimeridian */
    assert_true(fabs(bb_distance_m(0, 179.5, 0, -179.5) - 111195.08) < 0.01);
}

static void test_distance_fast(void **state)
{
    int n;

    for (n = 0; n < 20000; n++) {
        float lat1 = (float)rng_uniform(50.75, 53.55), lon1 = (float)rng_uniform(3.35, 7.25);
        float lat2 = lat1 + (float)rng_uniform(-0.45, 0.45);
        float lon2 = lon1 + (float)rng_uniform(-0.7, 0.7);
        double exact = bb_distance_m(lat1, lon1, lat2, lon2);
        float fast = bb_distance_fast_m(lat1, lon1, lat2, lon2);

        if (exact > 50e3) {
            continue;
        }
        if (!(fabs(fast - exact) <= 0.005 * exact)) {
            fail_msg("%f,%f - %f,%f: fast %f exact %f", lat1, lon1, lat2, lon2, fast, exact);
        }
    }
    /* short distances keep their relative accuracy too */
    {
        float f = bb_distance_fast_m(52.0907f, 5.1214f, 52.0907f, 5.12155f);
        double e = bb_distance_m(52.0907f, 5.1214f, 52.0907f, 5.12155f);

        assert_true(fabs(f - e) <= 0.005 * e);
    }
    assert_true(fabsf(bb_distance_fast_m(0, 179.9f, 0, -179.9f) - 22239.0f) < 50.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_known),
        cmocka_unit_test(test_encode_prefixes),
        cmocka_unit_test(test_encode_matches_bisection),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_bounds_literal),
        cmocka_unit_test(test_parse_format_roundtrip),
        cmocka_unit_test(test_parse_case_and_rejects),
        cmocka_unit_test(test_parent_contains),
        cmocka_unit_test(test_neighbours_known),
        cmocka_unit_test(test_neighbours_touch),
        cmocka_unit_test(test_cover_radius_zero),
        cmocka_unit_test(test_cover_edges),
        cmocka_unit_test(test_cover_property_nl),
        cmocka_unit_test(test_cover_property_world),
        cmocka_unit_test(test_cover_large_radii),
        cmocka_unit_test(test_cover_precision_choice),
        cmocka_unit_test(test_cover_huge),
        cmocka_unit_test(test_cover_small_max),
        cmocka_unit_test(test_distance_known),
        cmocka_unit_test(test_distance_fast),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
