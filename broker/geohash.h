/* Geohash cells and distances, for the routing index.
 *
 * A cell is a uint64: the geohash bits right-aligned, shifted left by 4,
 * with the precision (1..12 characters) in the low 4 bits:
 *
 *     cell = (bits << 4) | precision,   bits has 5 * precision bits
 *
 * so the parent of a cell at a coarser precision is a shift away, and cells
 * of different precisions never compare equal. Standard geohash alphabet
 * ("0123456789bcdefghjkmnpqrstuvwxyz"), longitude bit first.
 *
 * Pure functions, no allocation, safe from any thread. */
#ifndef BB_GEOHASH_H
#define BB_GEOHASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BB_GEOHASH_MAX_PRECISION 12

typedef uint64_t bb_cell;

struct bb_box {
    double lat_min, lat_max, lon_min, lon_max;
};

/* Cell of (lat, lon) at precision 1..12. lat in [-90, 90], lon in [-180, 180]
 * (the caller validates; lon 180 maps to the last cell). */
bb_cell bb_geohash_encode(double lat, double lon, unsigned precision);
unsigned bb_cell_precision(bb_cell c);
/* The cell containing c at a coarser (or equal) precision. */
bb_cell bb_cell_parent(bb_cell c, unsigned precision);
/* True if inner lies within outer (outer coarser or equal). */
bool bb_cell_contains(bb_cell outer, bb_cell inner);
void bb_cell_bounds(bb_cell c, struct bb_box *box);
void bb_cell_center(bb_cell c, double *lat, double *lon);

/* Parses a geohash string of 1..12 characters (case-insensitive). Returns 0
 * or BB_EINVAL (empty, too long, or a character outside the alphabet). */
int bb_geohash_parse(const char *s, size_t len, bb_cell *out);
/* Writes the NUL-terminated string of c into buf (>= 13 bytes); returns its length. */
size_t bb_geohash_format(bb_cell c, char *buf);

/* The up to 8 cells around c at the same precision, in the order N, NE, E,
 * SE, S, SW, W, NW. Longitude wraps at +-180; at the poles the missing ones
 * are left out. Returns how many were written. */
unsigned bb_cell_neighbours(bb_cell c, bb_cell out[8]);

/* Covers the circle (lat, lon, radius_m) with cells of a single precision:
 * the finest precision at which the cells intersecting the circle number at
 * most max_cells. Writes them to out (room for max_cells) and returns how
 * many; every point within radius_m of the centre lies in one of them.
 * That always succeeds with max_cells >= 32, and with max_cells >= 8 for any
 * circle that does not contain a pole (a circle whose centre sits on a cell
 * corner needs 4 at every precision). When no precision fits, the result is
 * the max_cells precision-1 cells nearest the centre: an incomplete cover. */
unsigned bb_geohash_cover_circle(double lat, double lon, double radius_m, unsigned max_cells,
                                 bb_cell *out);

/* Great-circle distance in metres (haversine, mean Earth radius 6371008.8 m). */
double bb_distance_m(double lat1, double lon1, double lat2, double lon2);
/* Fast equirectangular approximation in metres for short distances (< 50 km),
 * within 0.5 % of bb_distance_m there; what the router uses per candidate. */
float bb_distance_fast_m(float lat1, float lon1, float lat2, float lon2);

#endif
