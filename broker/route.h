/* The router: who must hear about a report or a status update, and on
 * which channel. Pure data in, data out: no I/O, no locks.
 *
 * One pass per report gathers candidates from three routes:
 *   (a) members of the report's group, if the group's policy admits it;
 *   (b) groups whose area (geohash cells) holds the point and whose policy
 *       admits the report;
 *   (c) users whose personal watch area (home + radius) holds the point;
 * minus the author and those who muted the author or the report's group
 * (a member who muted an area group is not reached through that group);
 * each user once. Each candidate's preferences then pick the channels:
 * category, minimum urgency, channels by urgency, quiet hours in the
 * user's zone (non-urgent loud channels move to the digest; in progress
 * passes) and an hourly cap (over it, to the digest; in progress passes).
 * Quiet hours and the cap's hour use the report's own time, so a
 * redelivered report is routed the same way; the cap counter is the one
 * piece of state that can differ (see docs/routing.md).
 *
 * Threads: a bb_router belongs to one thread; any number of routers may run
 * on one directory at once. */
#ifndef BB_ROUTE_H
#define BB_ROUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "directory.h"

struct Bb__Report;
struct Bb__ReportStatus;

enum bb_route_kind {
    BB_ROUTE_GROUP = 1,    /* (a) member of the report's group */
    BB_ROUTE_AREA = 2,     /* (b) member of a group whose area holds the point */
    BB_ROUTE_WATCH = 3,    /* (c) personal watch area */
    BB_ROUTE_REPORTER = 4, /* status update: wrote the report */
    BB_ROUTE_FOLLOWER = 5, /* status update: follows the report */
};

/* Why a candidate was (not) notified. */
enum bb_verdict {
    BB_V_NOTIFIED = 0,
    BB_V_AUTHOR,          /* wrote it */
    BB_V_MUTED_AUTHOR,    /* muted the author */
    BB_V_MUTED_GROUP,     /* muted the group it came through */
    BB_V_POLICY_CATEGORY, /* the group's policy excludes the category */
    BB_V_POLICY_URGENCY,  /* ... is below the group's minimum urgency */
    BB_V_POLICY_SOURCE,   /* ... excludes the source */
    BB_V_OUTSIDE_RADIUS,  /* near, but outside the personal watch radius */
    BB_V_PREF_CATEGORY,   /* the person's preferences exclude the category */
    BB_V_PREF_URGENCY,    /* ... below the person's minimum urgency */
    BB_V_NO_CHANNEL,      /* the person chose no channel for this urgency */
    BB_V_COUNT
};

/* Notes on a notified candidate. */
enum { BB_NOTE_QUIET = 1, BB_NOTE_CAPPED = 2 };

const char *bb_route_kind_name(int kind);
const char *bb_verdict_name(int verdict);
const char *bb_channel_name(unsigned bit_index); /* 0 = push .. 4 = social */

/* One line of an explanation (route explain). */
struct bb_explain_line {
    uint64_t user_id;  /* 0 for a group-level line */
    uint64_t group_id; /* the group it came through, if any */
    uint8_t route;     /* enum bb_route_kind */
    uint8_t verdict;   /* enum bb_verdict */
    uint8_t channels;  /* BB_CH_* bits, when notified */
    uint8_t notes;     /* BB_NOTE_* */
};

struct bb_explain {
    struct bb_explain_line *lines;
    uint32_t n, cap;
    bool oom; /* lines were dropped for lack of memory */
};

void bb_explain_reset(struct bb_explain *ex);
void bb_explain_free(struct bb_explain *ex);

/* Recipients of one (channel, locale): user ids, in the order found. */
struct bb_rlist {
    uint64_t *ids;
    uint32_t n, cap;
};

struct bb_route_result {
    struct bb_rlist lists[BB_CHANNELS][BB_LOCALES_MAX]; /* [channel bit][locale index] */
    uint32_t used[BB_CHANNELS];                         /* bit l: lists[c][l] non-empty */
    struct bb_rlist social;                             /* group ids with public posting */
    uint64_t decisions;                                 /* candidates considered */
    uint32_t recipients;                                /* distinct users notified */
    uint32_t deliveries;                                /* (user, channel) pairs */
    uint8_t precision;                                  /* location precision to show */
    char group_name[128];                               /* the report's group, if any */
};

struct bb_router;

struct bb_router *bb_router_new(struct bb_dir *dir);
void bb_router_free(struct bb_router *r); /* NULL is a no-op */

/* Routes a validated report; ex (may be NULL) receives an explanation.
 * The result stays valid until the next call on r. Returns 0, BB_ENOTFOUND
 * when the report names a group the directory does not know, or BB_ENOMEM. */
int bb_route_report(struct bb_router *r, const struct Bb__Report *rep, struct bb_explain *ex,
                    const struct bb_route_result **out);
/* Routes a status update to the reporter and the report's followers. */
int bb_route_status(struct bb_router *r, const struct Bb__ReportStatus *st, struct bb_explain *ex,
                    const struct bb_route_result **out);

#endif
