/* The directory in Redis: the writer side (bb_store_*: every change becomes
 * its key writes plus one XADD to bb:directory, in one MULTI/EXEC) and the
 * reader side (bb_snapshot_load: every key into a struct bb_dir, then
 * bb_snapshot_replay for the stream tail). The key layout is the contract
 * app backends follow; it is described in docs/contracts.md.
 *
 * Threads: hiredis' synchronous API. A redisContext, and a bb_store_batch
 * made on it, belong to one thread at a time. bb_snapshot_load and
 * bb_snapshot_replay write to the bb_dir, so they run on the directory's
 * single writer thread (see directory.h). */
#ifndef BB_SNAPSHOT_H
#define BB_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct bb_dir;
struct Bb__DirectoryEvent;

#define BB_KEY_DIRECTORY "bb:directory"
#define BB_STREAM_ID_MAX 48 /* "18446744073709551615-18446744073709551615" and the NUL */

/* ---- connection -------------------------------------------------------------------------- */

/* Connects to addr: "host:port", "host" (port 6379), "[v6addr]:port", or a
 * unix socket path (anything with a '/'). timeout_ms bounds the connect and
 * then every command (0: no command timeout). password (may be NULL or "":
 * no AUTH) is sent with AUTH, as the ACL user `user` when that is neither
 * NULL nor "" (else as the default user). Returns a context the caller
 * frees with redisFree, or NULL with the reason in err (never the password). */
redisContext *bb_redis_connect(const char *addr, const char *user, const char *password,
                               int timeout_ms, char *err, size_t errlen);

/* ---- writer: events into keys and bb:directory ------------------------------------------- */

/* Checks an event on its own, without Redis: ids present, coordinates,
 * enums and quiet hours in range, cells parse, report ids valid, UTF-8.
 * Returns NULL or a static machine-readable reason ("missing_field:id",
 * "bad_location", "bad_cell", ...), the same words bb_dir_apply uses. */
const char *bb_store_check(const struct Bb__DirectoryEvent *ev);

/* Applies one change: checks it (bb_store_check, then against Redis: a
 * membership, follow, mute, preferences change needs the user, a
 * membership and a group mute need the group), writes the keys and XADDs
 * the event, in one MULTI/EXEC. Read-modify-write of the user record
 * (preferences, mute, unmute) runs under WATCH and is retried when another
 * client changed the user in between. Returns 0; BB_EINVAL with the reason
 * in err when the event was refused (nothing written); BB_RETRY when the
 * WATCH kept failing; BB_EIO with a message on a Redis error. */
int bb_store_apply(redisContext *c, const struct Bb__DirectoryEvent *ev, char *err, size_t errlen);

/* Called for an event refused during a flush, once the rest of its chunk
 * is written. tag: the caller's number for it (a line number); reason:
 * machine-readable, borrowed for the call. */
typedef void bb_store_reject_fn(void *arg, uint64_t tag, const char *reason);

struct bb_store_stats {
    uint64_t applied;  /* events written with their XADD */
    uint64_t rejected; /* refused by a check, locally or against Redis */
    uint64_t retries;  /* chunks redone after a failed WATCH */
    uint64_t chunks;   /* MULTI/EXEC blocks */
};

/* Bulk loading: events are queued (packed at once) and written chunk by
 * chunk, each chunk one round trip of pipelined reads under WATCH and one
 * MULTI/EXEC with every change's keys and XADD, in the order added. An
 * erase_user or delete_group is a chunk of its own. The result is the same
 * as bb_store_apply event by event; only a chunk is atomic, not the load. */
struct bb_store_batch;

/* chunk: events per MULTI/EXEC (0: 512). on_reject may be NULL. c is
 * borrowed and must outlive the batch. */
struct bb_store_batch *bb_store_batch_new(redisContext *c, unsigned chunk,
                                          bb_store_reject_fn *on_reject, void *arg);
void bb_store_batch_free(struct bb_store_batch *b); /* NULL is a no-op; drops what is queued */
/* Queues ev (copied). Returns 0; BB_EINVAL with the reason in err if ev
 * fails bb_store_check (not queued, counted as rejected); or the error of a
 * flush it triggered. */
int bb_store_batch_add(struct bb_store_batch *b, const struct Bb__DirectoryEvent *ev, uint64_t tag,
                       char *err, size_t errlen);
/* Writes everything queued. Returns 0, BB_RETRY or BB_EIO (message in
 * err); after an error the queue is dropped and earlier chunks stay
 * written. */
int bb_store_batch_flush(struct bb_store_batch *b, char *err, size_t errlen);
void bb_store_batch_stats(const struct bb_store_batch *b, struct bb_store_stats *out);

/* ---- reader: keys into a bb_dir ---------------------------------------------------------- */

struct bb_snapshot_stats {
    uint64_t users, groups, memberships, follows;                 /* loaded */
    uint64_t bad_users, bad_groups, bad_memberships, bad_follows; /* skipped, each logged */
    uint64_t commands;                                            /* sent to Redis */
    double seconds;
};

/* Loads the directory into dir (normally fresh). First records the id of
 * the last bb:directory entry in last_id ("0-0" if the stream is empty; at
 * least BB_STREAM_ID_MAX bytes), then SSCANs bb:groups, bb:users and
 * bb:follows and fetches the records and sets in pipelined chunks of 1000:
 * groups, then users (their muted groups must exist), then memberships,
 * then follows. A record that is missing, does not decode or that the index
 * refuses is skipped with a warning and counted in st (may be NULL). The
 * load is not atomic: replaying bb:directory after last_id
 * (bb_snapshot_replay) brings dir to the state of the stream's end. Returns
 * 0, BB_EIO with a message on a Redis error, BB_ENOMEM. */
int bb_snapshot_load(redisContext *c, struct bb_dir *dir, char *last_id, size_t last_id_len,
                     struct bb_snapshot_stats *st, char *err, size_t errlen);

/* Applies every bb:directory entry after last_id to dir, in order, and
 * moves last_id to the last one read. Entries that do not decode or that
 * the index refuses are skipped with a warning (counted in *skipped). The
 * broker tails the stream itself; this is for tools and tests. Returns 0,
 * BB_EINVAL (last_id is not a stream id), BB_EIO, BB_ENOMEM. applied and
 * skipped may be NULL. */
int bb_snapshot_replay(redisContext *c, struct bb_dir *dir, char *last_id, size_t last_id_len,
                       uint64_t *applied, uint64_t *skipped, char *err, size_t errlen);

#endif
