/* A synthetic population of residents, their neighbourhood-watch groups and reports, built in
 * memory for benchmarks: deterministic for a seed, shaped after the field research (see
 * shared/DESIGN.md, "What the field research says").
 *
 * Residents live in the neighbourhoods of six Dutch towns (pg_areas: approximate centres, a
 * share of the town's residents and a spread each; towns weighted by population). Each has a
 * usage intensity as the field research found (39 % less than monthly, 16 % three times a week
 * or more); report authors are drawn by it. Sorting them along the geohash curve puts neighbours
 * next to each other; cutting that order into runs gives groups that are compact on the map:
 *   - every resident's first group is a street or neighbourhood group (20..1,000 people),
 *   - residents in two or more groups (56 %) also belong to their district (1,100..5,000),
 *   - the 3rd..13th groups are street groups of neighbours a few hundred to 20,000 places
 *     further along the curve,
 * with 1 group for 44 %, 2 for 38 %, 3 for 13 % and 4..13 for 5 %. A group's area is the
 * fewest geohash cells holding 95 % of the residents it was cut from, at the finest precision
 * that needs at most 4 (street), 8 (neighbourhood) or 24 (district) cells.
 * Most residents also watch a circle around their home (200..1,000 m). Preferences are mostly
 * the defaults, with a share of quiet hours, e-mail readers, narrow interests and hourly caps.
 * With town_groups (off by default), every town also gets one group of all its residents
 * (police and municipality reports only, no cells: it is reached by posting in it, never as an
 * area), appended after the others; it uses no randomness, so the rest of the population is the
 * same with or without it.
 *
 * Not thread-safe; the population is immutable once built. */
#ifndef BB_BENCH_POPGEN_H
#define BB_BENCH_POPGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "geohash.h"

struct bb_dir;
struct Bb__Report;
struct Bb__Media;

#define PG_MAX_CELLS 24
#define PG_MAX_GROUPS_PER_USER 13

struct pg_town {
    const char *name;
    double lat, lon;
    double weight;  /* residents, thousands */
    double sigma_m; /* spread around the centre */
};

extern const struct pg_town pg_towns[];
extern const unsigned pg_ntowns;

/* A neighbourhood of a town: residents are placed around its centre. */
struct pg_area {
    unsigned town; /* index into pg_towns */
    const char *name;
    double lat, lon;
    double weight;  /* percent of the town's residents */
    double sigma_m; /* spread around the centre */
};

extern const struct pg_area pg_areas[];
extern const unsigned pg_nareas;

struct pg_params {
    uint64_t seed;
    uint32_t users;
    unsigned watch_percent; /* residents with a personal watch area */
    unsigned radius_min_m, radius_max_m;
    bool town_groups; /* one extra group per town holding all its residents (PG_TOWN) */
};

/* Preference profiles (pg_user.prefs). */
enum pg_prefs {
    PG_PREFS_DEFAULT = 0,
    PG_PREFS_QUIET,  /* quiet hours 23:00-07:00 */
    PG_PREFS_EMAIL,  /* recent by e-mail + inbox, informational to the digest */
    PG_PREFS_NARROW, /* burglary, suspicious person/vehicle, fire; recent and up */
    PG_PREFS_CAPPED, /* at most 4 loud notifications an hour */
};

/* Group kinds and policies (pg_group.kind, .policy). */
enum pg_kind { PG_STREET = 0, PG_NEIGHBOURHOOD, PG_DISTRICT, PG_TOWN };
enum pg_policy {
    PG_POLICY_OPEN = 0,
    PG_POLICY_POLICE,    /* only police and municipality reports */
    PG_POLICY_HETERDAAD, /* only reports in progress */
    PG_POLICY_BURGLARY,  /* only burglary, suspicious person/vehicle, fire */
};

/* A resident; user id = index + 1. */
struct pg_user {
    float lat, lon;
    uint16_t radius_m; /* 0: no personal watch area */
    uint8_t town;
    uint8_t locale; /* 0 nl, 1 en, 2 de */
    uint8_t prefs;  /* enum pg_prefs */
    uint8_t ngroups;
    uint8_t activity; /* 0 less than monthly (39 %), 1 (45 %), 2 three times a week+ (16 %) */
    uint32_t muted;   /* 0, or the user id of a neighbour whose reports they muted */
};

/* A group; group id = index + 1. */
struct pg_group {
    uint32_t first, n; /* its members: pop->members[first .. first + n) */
    uint8_t kind;      /* enum pg_kind */
    uint8_t policy;    /* enum pg_policy */
    uint8_t precision; /* of its cells */
    uint8_t ncells;
    bool public_posting;
    bb_cell cells[PG_MAX_CELLS];
};

struct pg_pop {
    struct pg_params params;
    struct pg_user *users;
    uint32_t nusers;
    struct pg_group *groups;
    uint32_t ngroups;
    uint32_t *members; /* user indexes, by group, ascending within a group */
    size_t nmembers;
    uint32_t *ugroups; /* group indexes, by user: ugroups[ufirst[u] .. ufirst[u + 1]) */
    uint32_t *ufirst;
    uint32_t *zorder;                          /* user indexes along the geohash curve */
    uint32_t hist[PG_MAX_GROUPS_PER_USER + 1]; /* residents by number of groups (no town group) */
    uint32_t nkind[4];                         /* groups by kind */
    uint32_t town_group[8];                    /* with town_groups: group index by town */
};

void pg_params_default(struct pg_params *p);
/* Builds the population. Returns 0 or BB_ENOMEM. */
int pg_generate(const struct pg_params *p, struct pg_pop *pop);
void pg_free(struct pg_pop *pop); /* frees what pop holds; pop itself is the caller's */

/* Hands the population to emit as directory changes, in the order a store or an index wants
 * them: group upserts, user upserts, then memberships (one member_add each). Residents go by id
 * (spread over the map, as a snapshot read from Redis comes) or, with zorder, along the geohash
 * curve, so that neighbours get neighbouring slots in an index. ev and everything it points to
 * are borrowed for the call. Stops at the first error emit returns. */
struct Bb__DirectoryEvent;
typedef int (*pg_emit_fn)(void *arg, const struct Bb__DirectoryEvent *ev, char *why, size_t whylen);
int pg_emit(const struct pg_pop *pop, bool zorder, pg_emit_fn emit, void *arg, char *why,
            size_t whylen);

/* pg_emit into bb_dir_apply: loads the population into dir (best without readers yet, so
 * writes go in place). Returns 0 or the first error (why says which). */
int pg_load(const struct pg_pop *pop, struct bb_dir *dir, bool zorder, char *why, size_t whylen);

/* A report and the memory its strings live in. */
struct pg_report {
    struct Bb__Report *rep;
    char id[32];
    char text[256];
    char name[24];
    char url[64];
};

/* Fills r with a report by a random resident near home, sometimes in one of their groups,
 * dated time_ms. rng: the caller's state (seed it as you like). r->rep must point to storage
 * for a Bb__Report; the media item lives in media. */
void pg_report(const struct pg_pop *pop, uint64_t *rng, uint64_t seq, int64_t time_ms,
               struct pg_report *r, struct Bb__Media *media, struct Bb__Media **media_list);

/* Directory churn for the benchmarks: a stream of changes as an app backend would write them —
 * leaves (member_remove of one of a resident's groups), joins (member_add: a resident who left
 * comes back, so the population stays about the same) and preference changes (one of the
 * profiles above) in the proportions 40:40:20. A join when nobody has left is a leave. */
enum pg_churn_kind { PG_CHURN_JOIN = 0, PG_CHURN_LEAVE, PG_CHURN_PREFS };
struct pg_churn;
struct pg_churn *pg_churn_new(const struct pg_pop *pop, uint64_t seed); /* NULL: out of memory */
/* The next change into *ev (borrowed until the next call); returns its enum pg_churn_kind. */
int pg_churn_next(struct pg_churn *c, const struct Bb__DirectoryEvent **ev);
void pg_churn_free(struct pg_churn *c);

/* Random helpers shared with the benchmarks (splitmix64). */
uint64_t pg_rand(uint64_t *state);
double pg_uniform(uint64_t *state); /* [0, 1) */

#endif
