/* Fuzz target: geohash parsing and the cell arithmetic behind the routing
 * index (broker/geohash.h). The whole input is parsed as a geohash; then a
 * length byte picks a prefix to parse and round-trip (format, bounds,
 * centre, parents, neighbours), and the bytes after it are read as
 * latitude, longitude and radius (any doubles: NaN, infinities, huge) and a
 * cell budget for bb_geohash_cover_circle and the distance functions.
 *
 * Threads: libFuzzer's one thread (the functions are pure). */
#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "fuzz_common.h"
#include "geohash.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void round_trip(const char *s, size_t len)
{
    bb_cell c;
    if (bb_geohash_parse(s, len, &c) != BB_OK) {
        return;
    }
    unsigned p = bb_cell_precision(c);
    if (p != len || p < 1 || p > BB_GEOHASH_MAX_PRECISION) {
        fuzz_fail("parse of %zu characters gave precision %u", len, p);
    }
    char buf[16];
    if (bb_geohash_format(c, buf) != len) {
        fuzz_fail("format length");
    }
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != tolower((unsigned char)s[i])) {
            fuzz_fail("format(parse(%.*s)) = %s", (int)len, s, buf);
        }
    }
    struct bb_box box;
    bb_cell_bounds(c, &box);
    if (!(box.lat_min < box.lat_max && box.lon_min < box.lon_max && box.lat_min >= -90 &&
          box.lat_max <= 90 && box.lon_min >= -180 && box.lon_max <= 180)) {
        fuzz_fail("bounds of %s", buf);
    }
    double lat, lon;
    bb_cell_center(c, &lat, &lon);
    if (bb_geohash_encode(lat, lon, p) != c) {
        fuzz_fail("encode(centre of %s) is another cell", buf);
    }
    for (unsigned q = 1; q <= p; q++) {
        if (!bb_cell_contains(bb_cell_parent(c, q), c)) {
            fuzz_fail("parent %u of %s does not contain it", q, buf);
        }
    }
    bb_cell nb[8];
    unsigned n = bb_cell_neighbours(c, nb);
    if (n > 8) {
        fuzz_fail("%u neighbours", n);
    }
    for (unsigned i = 0; i < n; i++) {
        char nbuf[16];
        bb_cell back;
        if (nb[i] == c || bb_cell_precision(nb[i]) != p) {
            fuzz_fail("neighbour %u of %s", i, buf);
        }
        size_t nl = bb_geohash_format(nb[i], nbuf);
        if (bb_geohash_parse(nbuf, nl, &back) != BB_OK || back != nb[i]) {
            fuzz_fail("neighbour %s of %s does not round-trip", nbuf, buf);
        }
    }
}

static double take_double(const uint8_t **p, size_t *left)
{
    uint8_t b[8] = {0};
    size_t n = *left < 8 ? *left : 8;
    memcpy(b, *p, n);
    *p += n;
    *left -= n;
    double v;
    memcpy(&v, b, sizeof(v));
    return v;
}

static void cover(const uint8_t *p, size_t left)
{
    unsigned max_cells = left ? p[0] % 64 : 8;
    if (left) {
        p++, left--;
    }
    double lat = take_double(&p, &left);
    double lon = take_double(&p, &left);
    double radius = take_double(&p, &left);
    bb_cell out[64];
    unsigned n = bb_geohash_cover_circle(lat, lon, radius, max_cells, out);
    if (n > max_cells) {
        fuzz_fail("cover_circle wrote %u cells for a budget of %u", n, max_cells);
    }
    for (unsigned i = 1; i < n; i++) {
        if (bb_cell_precision(out[i]) != bb_cell_precision(out[0])) {
            fuzz_fail("cover_circle mixed precisions");
        }
    }
    bool sane = isfinite(lat) && isfinite(lon) && fabs(lat) <= 90 && fabs(lon) <= 180 &&
                isfinite(radius) && radius >= 0 && radius <= 1e6;
    if (sane && max_cells >= 32) {
        if (n == 0) {
            fuzz_fail("cover_circle(%.17g, %.17g, %.17g, %u) is empty", lat, lon, radius,
                      max_cells);
        }
        bb_cell centre = bb_geohash_encode(lat, lon, bb_cell_precision(out[0]));
        bool found = false;
        for (unsigned i = 0; i < n && !found; i++) {
            found = out[i] == centre;
        }
        if (!found) {
            fuzz_fail("cover_circle(%.17g, %.17g, %.17g, %u) misses the centre", lat, lon, radius,
                      max_cells);
        }
    }
    if (sane) {
        (void)bb_distance_m(lat, lon, -lat, lon + (lon > 0 ? -1 : 1));
        (void)bb_distance_fast_m((float)lat, (float)lon, (float)lat, (float)lon);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bb_cell c;
    (void)bb_geohash_parse((const char *)data, size, &c);
    if (size == 0) {
        return 0;
    }
    size_t len = data[0] & 15;
    if (len > size - 1) {
        len = size - 1;
    }
    /* An exact-size copy, so ASan sees any read past len. */
    char *s = malloc(len ? len : 1);
    if (!s) {
        return 0;
    }
    memcpy(s, data + 1, len);
    round_trip(s, len);
    free(s);
    cover(data + 1 + len, size - 1 - len);
    return 0;
}
