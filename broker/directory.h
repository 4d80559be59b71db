/* The routing index: users, groups, geohash cells, mutes and follows, in
 * memory, read by every router thread while one writer keeps it current.
 *
 * Threads: exactly one writer thread (the broker's I/O thread; a tool's
 * main thread) calls bb_dir_apply, bb_dir_reclaim and bb_dir_free. Any
 * number of reader threads call the lookup functions between
 * bb_dir_read_begin and bb_dir_read_end on their own bb_dir_reader; they
 * take no lock and never wait for the writer.
 *
 * Publication: every object a reader can reach is immutable once
 * published, or is an array of pointers swapped with a release store.
 * The writer changes something by building a new copy and publishing it;
 * the old copy is retired through Concurrency Kit epochs (ck_epoch) and
 * freed once no reader section that could see it is still open. A reader
 * section sees each object either before or after a change, never half of
 * one; one event's changes to several objects may be seen one by one.
 *
 * The index holds no contact addresses and no names of members: workers
 * resolve those from Redis at send time. */
#ifndef BB_DIRECTORY_H
#define BB_DIRECTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "geohash.h"

struct Bb__DirectoryEvent;
struct Bb__User;
struct Bb__Group;

/* Internal channel bits (bit n-1 for Bb__Channel n). */
enum {
    BB_CH_PUSH = 1u << 0,
    BB_CH_EMAIL = 1u << 1,
    BB_CH_INBOX = 1u << 2,
    BB_CH_DIGEST = 1u << 3,
    BB_CH_SOCIAL = 1u << 4,
    BB_CH_LOUD = BB_CH_PUSH | BB_CH_EMAIL, /* what quiet hours and the hourly cap hold back */
};
#define BB_CHANNELS 5

#define BB_CATEGORY_MAX 15 /* categories are bits of a uint16_t */
#define BB_SOURCE_MAX 7    /* sources are bits of a uint8_t */
#define BB_ZONES_MAX 255
#define BB_LOCALES_MAX 32

/* One user, 32 bytes. Published inside copy-on-write chunks of the user
 * table: readers see a whole record or its previous version. */
struct bb_user {
    uint64_t id; /* 0: free slot */
    float lat, lon;
    uint16_t radius_m;   /* personal watch area; 0: none */
    uint16_t categories; /* bit c set: category c wanted */
    uint8_t chan[3];     /* channel bits for urgency 1 (informational) .. 3 (in progress) */
    uint8_t min_urgency; /* 1..3 */
    uint16_t quiet_from; /* local minute of day; from == to: no quiet hours */
    uint16_t quiet_to;
    uint8_t tz;           /* index into the zone table */
    uint8_t locale;       /* index into the locale table */
    uint8_t max_per_hour; /* loud notifications per hour; 0: no cap */
    uint8_t flags;
};

/* An immutable array of slots (users or groups), sorted ascending. */
struct bb_slots {
    uint32_t n;
    uint32_t cap; /* room for v; > n only while the index is built without readers */
    uint32_t v[];
};

/* A group. The record is replaced on upsert; members and muted_by are
 * swapped in place with release stores (read them with bb_group_members). */
struct bb_group {
    uint64_t id;
    uint16_t categories; /* policy: bit c set = category admitted */
    uint8_t sources;     /* policy: bit s set = source admitted */
    uint8_t min_urgency;
    uint8_t precision; /* geohash precision of the location readers see */
    bool public_posting;
    uint32_t ncells;
    bb_cell *cells; /* its area */
    char *name;
    struct bb_slots *members;  /* user slots */
    struct bb_slots *muted_by; /* user slots who muted this group; may be NULL */
};

/* A geohash cell of the index: the groups whose area holds it and the
 * users whose watch area touches it. */
struct bb_cellent {
    bb_cell code;
    struct bb_slots *groups; /* group slots */
    struct bb_slots *users;  /* user slots */
};

struct bb_dir_params {
    unsigned default_precision; /* location shown when a report has no group (1..12) */
    unsigned watch_max_cells;   /* cells per personal watch area (4..32) */
    unsigned max_radius_m;      /* largest personal watch radius accepted */
};

struct bb_dir_stats {
    size_t users, groups, cells, memberships, watch_cells, mutes, follows;
    size_t bytes_users; /* user records, id map, cap counters, user slots in cells and groups */
    size_t bytes_total; /* everything the index holds */
};

struct bb_dir;
struct bb_dir_reader;

/* --- writer ----------------------------------------------------------------------------- */

struct bb_dir *bb_dir_new(const struct bb_dir_params *params);
void bb_dir_free(struct bb_dir *dir); /* NULL is a no-op; no reader may be active */

/* Applies one change. Returns 0; BB_EINVAL with a machine-readable reason in
 * why (e.g. "bad_location", "unknown_user") when the event cannot apply —
 * the index is then unchanged; BB_ENOMEM. */
int bb_dir_apply(struct bb_dir *dir, const struct Bb__DirectoryEvent *ev, char *why, size_t whylen);
/* Upserts from snapshot records (same checks as the events). */
int bb_dir_upsert_user(struct bb_dir *dir, const struct Bb__User *u, char *why, size_t whylen);
int bb_dir_upsert_group(struct bb_dir *dir, const struct Bb__Group *g, char *why, size_t whylen);
int bb_dir_add_member(struct bb_dir *dir, uint64_t user_id, uint64_t group_id, char *why,
                      size_t whylen);
int bb_dir_add_follow(struct bb_dir *dir, uint64_t user_id, const char *report_id, char *why,
                      size_t whylen);
/* Renumbers users along the geohash curve of their watch-area centres, so
 * that neighbours — who are routed together — sit in neighbouring memory,
 * and trims every list to its size. Only before the first reader exists
 * (after a snapshot load); BB_EINVAL otherwise. */
int bb_dir_compact(struct bb_dir *dir);
/* Frees what readers can no longer see. Never blocks; call it now and then. */
void bb_dir_reclaim(struct bb_dir *dir);
/* Waits until every retired object is freed (readers must make progress). */
void bb_dir_reclaim_all(struct bb_dir *dir);
void bb_dir_stats(const struct bb_dir *dir, struct bb_dir_stats *out);

/* --- readers ---------------------------------------------------------------------------- */

/* One per reader thread, created on the writer's thread before the reader
 * starts. Freeing a reader unregisters it; its memory stays with the
 * directory (ck_epoch keeps every record) and is reused by the next
 * bb_dir_reader_new, so readers may come and go. */
struct bb_dir_reader *bb_dir_reader_new(struct bb_dir *dir);
void bb_dir_reader_free(struct bb_dir_reader *r); /* NULL is a no-op */
void bb_dir_read_begin(struct bb_dir_reader *r);
void bb_dir_read_end(struct bb_dir_reader *r);

/* Lookups; results stay valid until bb_dir_read_end. */
const struct bb_user *bb_dir_user_at(const struct bb_dir *dir, uint32_t slot);
const struct bb_user *bb_dir_user_find(const struct bb_dir *dir, uint64_t id, uint32_t *slot);
const struct bb_group *bb_dir_group_at(const struct bb_dir *dir, uint32_t slot);
const struct bb_group *bb_dir_group_find(const struct bb_dir *dir, uint64_t id, uint32_t *slot);
const struct bb_cellent *bb_dir_cell_find(const struct bb_dir *dir, bb_cell code);
/* Bit p set: some cell of precision p is indexed. */
uint32_t bb_dir_cell_precisions(const struct bb_dir *dir);
/* Users who muted this author; NULL if none. */
const struct bb_slots *bb_dir_muted_author(const struct bb_dir *dir, uint64_t author_id);
/* Users who follow this report; NULL if none. */
const struct bb_slots *bb_dir_followers(const struct bb_dir *dir, const char *report_id);
const struct bb_slots *bb_group_members(const struct bb_group *g);
const struct bb_slots *bb_group_muted_by(const struct bb_group *g);
const struct bb_slots *bb_cell_groups(const struct bb_cellent *c);
const struct bb_slots *bb_cell_users(const struct bb_cellent *c);
bool bb_slots_has(const struct bb_slots *s, uint32_t slot);

/* Per-user hourly counter of loud notifications, shared by all readers
 * (atomic): returns true if one more is within max for the hour "hour"
 * (hours since the epoch) and counts it. */
bool bb_dir_cap_take(const struct bb_dir *dir, uint32_t slot, uint32_t hour, unsigned max);

/* The default location precision (params.default_precision). */
unsigned bb_dir_default_precision(const struct bb_dir *dir);

/* Zones and locales named by the index (tz and locale fields of bb_user). */
const char *bb_dir_locale_name(const struct bb_dir *dir, unsigned idx);
const struct bb_tz *bb_dir_zone(const struct bb_dir *dir, unsigned idx);

#endif
