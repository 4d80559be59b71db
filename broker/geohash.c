/* Geohash cells, circle covers and distances for the routing index.
 *
 * Everything here is a pure function of its arguments: no allocation, no
 * globals written, no locale, so it is safe to call from any thread. */
#include "geohash.h"

#include <math.h>

#include "bb_err.h"

#define EARTH_R 6371008.8
#define PI 3.14159265358979323846
#define RAD (PI / 180.0)
#define QBITS 30 /* bits per axis at precision 12 */
#define QMAX (1u << QBITS)

/* Padding, in degrees, of the circle's bounding box before it is turned into cell indices. It
 * absorbs rounding in asin() and in the +-360 unwrapping at the antimeridian, so a point
 * exactly on the box edge cannot land in a row or column we did not look at. 1e-9 deg is
 * about 0.1 mm; the exact distance test then drops the extra cells again. */
#define BOX_PAD 1e-9

static const char alphabet[32] = "0123456789bcdefghjkmnpqrstuvwxyz";

/* 'a'..'z' to their 5-bit values, -1 for the four letters geohash leaves out. */
static const signed char letter_value[26] = {
    -1, 10, 11, 12, 13, 14, 15, 16, -1, 17, 18, -1, 19,
    20, -1, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
};

/* Precisions outside 1..12 can only come from a corrupt cell; clamp rather than shift by a
 * negative amount. 0 stays 0 and means "the whole world". */
static unsigned prec_of(bb_cell c)
{
    unsigned p = (unsigned)(c & 15);

    return p > BB_GEOHASH_MAX_PRECISION ? BB_GEOHASH_MAX_PRECISION : p;
}

static uint64_t spread(uint32_t v)
{
    uint64_t x = v;

    x = (x | (x << 16)) & 0x0000ffff0000ffffull;
    x = (x | (x << 8)) & 0x00ff00ff00ff00ffull;
    x = (x | (x << 4)) & 0x0f0f0f0f0f0f0f0full;
    x = (x | (x << 2)) & 0x3333333333333333ull;
    x = (x | (x << 1)) & 0x5555555555555555ull;
    return x;
}

static uint32_t compact(uint64_t x)
{
    x &= 0x5555555555555555ull;
    x = (x | (x >> 1)) & 0x3333333333333333ull;
    x = (x | (x >> 2)) & 0x0f0f0f0f0f0f0f0full;
    x = (x | (x >> 4)) & 0x00ff00ff00ff00ffull;
    x = (x | (x >> 8)) & 0x0000ffff0000ffffull;
    x = (x | (x >> 16)) & 0x00000000ffffffffull;
    return (uint32_t)x;
}

/* Fraction t in [0, 1] of an axis to a QBITS-bit index. floor(t * 2^30) >> k equals
 * floor(t * 2^(30 - k)) exactly (scaling by a power of two does not round), which is what
 * lets the cover code index rows and columns at any precision consistently with encode.
 * The negated comparison also sends NaN to 0 instead of into an undefined conversion. */
static uint32_t quantise(double t)
{
    double q = t * (double)QMAX;

    if (!(q >= 0.0)) {
        return 0;
    }
    if (q >= (double)QMAX) {
        return QMAX - 1;
    }
    return (uint32_t)q;
}

/* Axis indices of a cell: geohash gives longitude the odd bit when 5 * p is odd. */
static void cell_indices(bb_cell c, uint32_t *lat_idx, uint32_t *lon_idx, unsigned *nlat,
                         unsigned *nlon)
{
    unsigned n = 5 * prec_of(c);
    /* Mask so stray bits above 5 * p in a corrupt cell cannot leak into the indices. */
    uint64_t b60 = ((c >> 4) & ((1ull << n) - 1)) << (60 - n);

    *nlat = n / 2;
    *nlon = n - n / 2;
    *lat_idx = compact(b60) >> (QBITS - *nlat);
    *lon_idx = compact(b60 >> 1) >> (QBITS - *nlon);
}

static bb_cell cell_from_indices(uint32_t lat_idx, uint32_t lon_idx, unsigned p)
{
    unsigned n = 5 * p;
    uint32_t latq = lat_idx << (QBITS - n / 2);
    uint32_t lonq = lon_idx << (QBITS - (n - n / 2));
    uint64_t b60 = (spread(lonq) << 1) | spread(latq);

    return ((b60 >> (60 - n)) << 4) | p;
}

bb_cell bb_geohash_encode(double lat, double lon, unsigned precision)
{
    uint64_t b60;

    if (precision < 1) {
        precision = 1;
    } else if (precision > BB_GEOHASH_MAX_PRECISION) {
        precision = BB_GEOHASH_MAX_PRECISION;
    }
    b60 = (spread(quantise((lon + 180.0) / 360.0)) << 1) | spread(quantise((lat + 90.0) / 180.0));
    return ((b60 >> (60 - 5 * precision)) << 4) | precision;
}

unsigned bb_cell_precision(bb_cell c)
{
    return (unsigned)(c & 15);
}

bb_cell bb_cell_parent(bb_cell c, unsigned precision)
{
    unsigned p = prec_of(c);

    /* A "parent" finer than c does not exist; c itself is the closest honest answer. */
    if (precision >= p) {
        return c;
    }
    return ((c >> 4) >> (5 * (p - precision))) << 4 | precision;
}

bool bb_cell_contains(bb_cell outer, bb_cell inner)
{
    unsigned po = prec_of(outer);

    return po <= prec_of(inner) && bb_cell_parent(inner, po) == outer;
}

void bb_cell_bounds(bb_cell c, struct bb_box *box)
{
    uint32_t lat_idx, lon_idx;
    unsigned nlat, nlon;
    double h, w;

    cell_indices(c, &lat_idx, &lon_idx, &nlat, &nlon);
    h = 180.0 / (double)(1u << nlat);
    w = 360.0 / (double)(1u << nlon);
    box->lat_min = lat_idx * h - 90.0;
    box->lat_max = (lat_idx + 1) * h - 90.0;
    box->lon_min = lon_idx * w - 180.0;
    box->lon_max = (lon_idx + 1) * w - 180.0;
}

void bb_cell_center(bb_cell c, double *lat, double *lon)
{
    struct bb_box b;

    bb_cell_bounds(c, &b);
    *lat = (b.lat_min + b.lat_max) / 2.0;
    *lon = (b.lon_min + b.lon_max) / 2.0;
}

int bb_geohash_parse(const char *s, size_t len, bb_cell *out)
{
    uint64_t bits = 0;
    size_t i;

    if (s == NULL || out == NULL || len < 1 || len > BB_GEOHASH_MAX_PRECISION) {
        return BB_EINVAL;
    }
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        int v;

        if (ch >= '0' && ch <= '9') {
            v = ch - '0';
        } else if (ch >= 'a' && ch <= 'z') {
            v = letter_value[ch - 'a'];
        } else if (ch >= 'A' && ch <= 'Z') {
            v = letter_value[ch - 'A'];
        } else {
            v = -1;
        }
        if (v < 0) {
            return BB_EINVAL;
        }
        bits = (bits << 5) | (uint64_t)v;
    }
    *out = (bits << 4) | len;
    return 0;
}

size_t bb_geohash_format(bb_cell c, char *buf)
{
    unsigned p = prec_of(c);
    uint64_t bits = c >> 4;
    unsigned i;

    for (i = 0; i < p; i++) {
        buf[i] = alphabet[(bits >> (5 * (p - 1 - i))) & 31];
    }
    buf[p] = '\0';
    return p;
}

unsigned bb_cell_neighbours(bb_cell c, bb_cell out[8])
{
    static const int dir[8][2] = {
        {1, 0}, {1, 1}, {0, 1}, {-1, 1}, {-1, 0}, {-1, -1}, {0, -1}, {1, -1},
    };
    uint32_t lat_idx, lon_idx;
    unsigned nlat, nlon, p = prec_of(c), n = 0, i;

    if (p == 0) {
        return 0;
    }
    cell_indices(c, &lat_idx, &lon_idx, &nlat, &nlon);
    for (i = 0; i < 8; i++) {
        int64_t la = (int64_t)lat_idx + dir[i][0];
        uint32_t lo = (uint32_t)((int64_t)lon_idx + dir[i][1]) & ((1u << nlon) - 1);

        /* Geohash rows do not continue over the pole; there is simply nothing there. */
        if (la < 0 || la >= ((int64_t)1 << nlat)) {
            continue;
        }
        out[n++] = cell_from_indices((uint32_t)la, lo, p);
    }
    return n;
}

/* ---- circle cover ----
 *
 * The test for "cell intersects circle" is the exact spherical minimum distance from the centre
 * to the cell's lat/lon box, in haversine form (hav(d) = sin^2(d/2)) because that stays
 * accurate for centimetre-sized cells, where comparing cosines would not. Clamping the centre
 * into the box is not enough on a sphere: the point of a meridian edge closest to the centre
 * lies poleward of the centre's latitude, so clamping would miss cells the circle just grazes.
 *
 * For a meridian at longitude offset dl, the closest point of its great circle is at the
 * "foot" latitude atan2(sin phi, cos phi cos dl), at cross-track distance asin(cos phi sin dl).
 * If the foot falls inside the row's latitude band that is the minimum; otherwise the distance
 * along the meridian is monotone over the band (or has its maximum inside it), so the nearer
 * of the two corners is. */

struct circle {
    double lat, lon;         /* centre, degrees */
    double sin_phi, cos_phi; /* of the centre latitude */
    double hav_max;          /* hav(radius) plus rounding slack */
    double lat_lo, lat_hi;   /* padded bounding box, degrees */
    double lon_lo, lon_hi;   /* may run past +-180; indices wrap */
    bool all_lon;            /* the circle holds a pole: every column */
};

/* A row edge (a parallel) as seen from the centre. */
struct edge {
    double sin_e, cos_e;
    double hav_de; /* hav(phi - e) */
};

/* A column as seen from the centre, for its nearer meridian edge (dl = 0 if the centre's
 * longitude is inside the column). */
struct column {
    uint32_t idx;
    double cos_dl;
    double hav_dl;
    double foot_x;   /* cos phi cos dl: with sin phi, the direction of the foot latitude */
    double hav_perp; /* hav of the cross-track distance to the meridian */
};

#define COL_CACHE 64

static double wrap180(double x)
{
    while (x > 180.0) {
        x -= 360.0;
    }
    while (x <= -180.0) {
        x += 360.0;
    }
    return x;
}

static double hav(double x)
{
    double s = sin(x / 2.0);

    return s * s;
}

static void make_edge(const struct circle *k, double e_deg, struct edge *e)
{
    double r = e_deg * RAD;

    e->sin_e = sin(r);
    e->cos_e = cos(r);
    e->hav_de = hav((k->lat - e_deg) * RAD);
}

static void make_column(const struct circle *k, uint32_t idx, double w, struct column *col)
{
    double lon_min = idx * w - 180.0;
    double d0 = wrap180(k->lon - lon_min);
    double dl, sh, ch, s;

    col->idx = idx;
    if (d0 >= 0.0 && d0 <= w) {
        dl = 0.0;
    } else {
        double d1 = fabs(wrap180(k->lon - (lon_min + w)));

        dl = fabs(d0) < d1 ? fabs(d0) : d1;
    }
    sh = sin(dl * RAD / 2.0);
    ch = cos(dl * RAD / 2.0);
    col->hav_dl = sh * sh;
    col->cos_dl = 1.0 - 2.0 * sh * sh;
    col->foot_x = k->cos_phi * col->cos_dl;
    s = k->cos_phi * 2.0 * sh * ch;
    col->hav_perp = s * s / (2.0 * (1.0 + sqrt(fmax(0.0, 1.0 - s * s))));
}

/* hav of the minimum distance from the centre to the cell (row between edges lo/hi, col). */
static double cell_hav(const struct circle *k, const struct edge *lo, const struct edge *hi,
                       const struct column *col)
{
    double ha, hb;

    /* sign(sin(foot - e)) without atan2: (foot_x, sin phi) points at the foot latitude. */
    if (col->cos_dl > 0.0 && k->sin_phi * lo->cos_e - col->foot_x * lo->sin_e >= 0.0 &&
        k->sin_phi * hi->cos_e - col->foot_x * hi->sin_e <= 0.0) {
        return col->hav_perp;
    }
    ha = lo->hav_de + k->cos_phi * lo->cos_e * col->hav_dl;
    hb = hi->hav_de + k->cos_phi * hi->cos_e * col->hav_dl;
    return ha < hb ? ha : hb;
}

static int64_t axis_index(double t, unsigned nbits)
{
    return (int64_t)floor(t * (double)((int64_t)1 << nbits));
}

/* Counts the cells of precision p that intersect the circle, writing up to cap of them to
 * out (and their hav distances to dist, if not NULL). Stops and returns cap + 1 as soon as
 * there are more than cap. */
static unsigned cover_at(const struct circle *k, unsigned p, unsigned cap, bb_cell *out,
                         double *dist)
{
    unsigned n = 5 * p, nlat = n / 2, nlon = n - n / 2, count = 0;
    int64_t lat_cells = (int64_t)1 << nlat, lon_cells = (int64_t)1 << nlon;
    double h = 180.0 / (double)lat_cells, w = 360.0 / (double)lon_cells;
    int64_t i0, i1, j0, ncols, i, j;
    struct column cache[COL_CACHE];
    struct edge lo, hi;

    i0 = axis_index((k->lat_lo + 90.0) / 180.0, nlat);
    i1 = axis_index((k->lat_hi + 90.0) / 180.0, nlat);
    i0 = i0 < 0 ? 0 : i0;
    i1 = i1 >= lat_cells ? lat_cells - 1 : i1;
    if (k->all_lon) {
        j0 = 0;
        ncols = lon_cells;
    } else {
        j0 = axis_index((k->lon_lo + 180.0) / 360.0, nlon);
        ncols = axis_index((k->lon_hi + 180.0) / 360.0, nlon) - j0 + 1;
        if (ncols >= lon_cells) {
            j0 = 0;
            ncols = lon_cells;
        }
    }
    /* Every row and column of the unpadded box meets the circle (along the centre meridian,
     * resp. the widest parallel), and padding adds at most one each side: more than cap + 2
     * means more than cap cells without looking at any of them. */
    if (i1 - i0 + 1 > (int64_t)cap + 2 || ncols > (int64_t)cap + 2) {
        return cap + 1;
    }
    for (j = 0; j < ncols && j < COL_CACHE; j++) {
        make_column(k, (uint32_t)((j0 + j) & (lon_cells - 1)), w, &cache[j]);
    }
    make_edge(k, i0 * h - 90.0, &lo);
    for (i = i0; i <= i1; i++) {
        make_edge(k, (i + 1) * h - 90.0, &hi);
        for (j = 0; j < ncols; j++) {
            struct column tmp;
            const struct column *col = &cache[j];
            double d;

            if (j >= COL_CACHE) {
                make_column(k, (uint32_t)((j0 + j) & (lon_cells - 1)), w, &tmp);
                col = &tmp;
            }
            d = cell_hav(k, &lo, &hi, col);
            if (d > k->hav_max) {
                continue;
            }
            if (count == cap) {
                return cap + 1;
            }
            if (dist != NULL) {
                dist[count] = d;
            }
            out[count++] = cell_from_indices((uint32_t)i, col->idx, p);
        }
        lo = hi;
    }
    return count;
}

/* What happens when even precision 1 has more than max_cells cells (a circle of thousands of
 * km, a pole with max_cells < 8, or max_cells < 4 on a corner): the max_cells precision-1
 * cells nearest the centre are returned, the centre's own cell first. The cover is then
 * incomplete, and the caller cannot tell from the return value alone; with max_cells >= 32
 * (the whole precision-1 grid) this never happens. */
static unsigned cover_capped(const struct circle *k, unsigned max_cells, bb_cell *out)
{
    bb_cell cells[32];
    double dist[32];
    unsigned n = cover_at(k, 1, 32, cells, dist), i, j;

    for (i = 0; i < max_cells && i < n; i++) {
        unsigned best = i;

        for (j = i + 1; j < n; j++) {
            if (dist[j] < dist[best]) {
                best = j;
            }
        }
        out[i] = cells[best];
        cells[best] = cells[i];
        dist[best] = dist[i];
    }
    return i;
}

/* max_cells < 4 needs no special case: most small circles still fit at some precision, and
 * the ones that cannot (a centre on a corner shared by four cells at every precision, a pole)
 * end up in cover_capped() with the cells nearest the centre. */
unsigned bb_geohash_cover_circle(double lat, double lon, double radius_m, unsigned max_cells,
                                 bb_cell *out)
{
    struct circle k;
    double theta, pad_deg, sp, cp;
    unsigned p;

    if (max_cells == 0 || isnan(lat) || isnan(lon)) {
        return 0;
    }
    lat = fmin(fmax(lat, -90.0), 90.0);
    lon = fmin(fmax(lon, -180.0), 180.0);
    /* Radius 0 (or negative, or NaN) is the centre alone, which lies in exactly one cell even
     * when it sits on a cell corner that four closed boxes share. */
    if (!(radius_m > 0.0)) {
        out[0] = bb_geohash_encode(lat, lon, BB_GEOHASH_MAX_PRECISION);
        return 1;
    }
    /* Beyond half the circumference the circle is everything. */
    theta = radius_m / EARTH_R;
    theta = theta > PI ? PI : theta;

    sp = sin(lat * RAD);
    cp = cos(lat * RAD);
    k.lat = lat;
    k.lon = lon;
    k.sin_phi = sp;
    k.cos_phi = cp;
    /* Relative slack for rounding in hav(); absolute slack (~1 mm) so radius 0 still matches
     * its own cell's edges when the centre sits exactly on one. */
    k.hav_max = hav(theta) * (1.0 + 1e-9) + 1e-20;

    pad_deg = theta / RAD + BOX_PAD;
    k.lat_lo = lat - pad_deg;
    k.lat_hi = lat + pad_deg;
    /* Decided on the unpadded cap: cover_at() relies on every column really meeting the
     * circle when all_lon is set, which is only true if the pole is inside. */
    k.all_lon = lat + theta / RAD >= 90.0 || lat - theta / RAD <= -90.0;
    if (!k.all_lon) {
        /* Longitude half-width of a cap that does not hold a pole. */
        double r = sin(theta) / cp;

        if (r >= 1.0) {
            k.all_lon = true;
        } else {
            double half = asin(r) / RAD + BOX_PAD;

            k.lon_lo = lon - half;
            k.lon_hi = lon + half;
        }
    }

    /* The count can only shrink with coarser precision (every intersecting cell has an
     * intersecting parent), so the first precision that fits is the finest. */
    for (p = BB_GEOHASH_MAX_PRECISION; p >= 1; p--) {
        unsigned n = cover_at(&k, p, max_cells, out, NULL);

        if (n <= max_cells) {
            return n;
        }
    }
    return cover_capped(&k, max_cells, out);
}

double bb_distance_m(double lat1, double lon1, double lat2, double lon2)
{
    double p1 = lat1 * RAD, p2 = lat2 * RAD;
    double a = hav(p2 - p1) + cos(p1) * cos(p2) * hav((lon2 - lon1) * RAD);

    /* Rounding can push a just past 1 for antipodal points. */
    return 2.0 * EARTH_R * asin(sqrt(fmin(1.0, fmax(0.0, a))));
}

float bb_distance_fast_m(float lat1, float lon1, float lat2, float lon2)
{
    const float rad = (float)RAD;
    /* Subtract first: for nearby points the float difference is exact, so short distances
     * keep their relative accuracy. */
    float dlat = lat2 - lat1;
    float dlon = lon2 - lon1;
    float x, y;

    if (dlon > 180.0f) {
        dlon -= 360.0f;
    } else if (dlon < -180.0f) {
        dlon += 360.0f;
    }
    x = dlon * rad * cosf((lat1 + lat2) * 0.5f * rad);
    y = dlat * rad;
    return (float)EARTH_R * sqrtf(x * x + y * y);
}
