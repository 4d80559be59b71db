/* From a routing result to stream entries: the Notification is encoded and
 * compressed once per (report, locale) — once more, stripped, for public
 * channels — and DeliveryBatch entries of at most batch_size recipients
 * carry it to bb:out:{channel}. Pure: no I/O.
 *
 * Threads: a bb_encoder belongs to one thread (it owns a zstd context). */
#ifndef BB_OUTPUT_H
#define BB_OUTPUT_H

#include <stddef.h>
#include <stdint.h>

#include "route.h"

struct bb_zdict;
struct Bb__Report;
struct Bb__ReportStatus;

/* Output streams, indexed by channel bit (BB_CH_* bit index). */
const char *bb_out_stream(unsigned channel_index); /* "bb:out:push", ... */

struct bb_out_entry {
    uint8_t channel;   /* bit index: 0 push .. 4 social */
    uint32_t off, len; /* the encoded DeliveryBatch in bb_out.buf */
    uint32_t recipients;
};

/* The encoded output of one report. Owned by whoever holds it; reused. */
struct bb_out {
    uint8_t *buf;
    size_t len, cap;
    struct bb_out_entry *e;
    uint32_t n, ecap;
    uint32_t deliveries;
    size_t raw_bytes, zstd_bytes; /* notification sizes before/after compression */
};

void bb_out_reset(struct bb_out *o);
void bb_out_free(struct bb_out *o);

struct bb_encoder;

/* level: zstd level; batch_size: recipients per entry (1..10000). */
struct bb_encoder *bb_encoder_new(int level, unsigned batch_size);
void bb_encoder_free(struct bb_encoder *e); /* NULL is a no-op */
/* Uses dict (a reference is taken; NULL: no dictionary) from now on. */
void bb_encoder_set_dict(struct bb_encoder *e, struct bb_zdict *dict);

/* Appends the batches for a routed report (or status update) to out.
 * source_time_ms: when the entry entered its stream. Returns 0 or BB_ENOMEM
 * / BB_EIO (compression failed). */
int bb_encode_report(struct bb_encoder *e, const struct bb_dir *dir, const struct Bb__Report *rep,
                     const struct bb_route_result *res, int64_t source_time_ms, struct bb_out *out);
int bb_encode_status(struct bb_encoder *e, const struct bb_dir *dir,
                     const struct Bb__ReportStatus *st, const struct bb_route_result *res,
                     int64_t source_time_ms, struct bb_out *out);

/* Fills n with what readers of rep are shown (locale "nl"); n borrows from
 * rep, group_name and cell (>= 16 bytes, receives the coarsened geohash). */
struct Bb__Notification;
void bb_notification_from_report(struct Bb__Notification *n, const struct Bb__Report *rep,
                                 const char *group_name, unsigned precision, char cell[16]);

/* The short localised title of a category or status ("Inbraak", "Burglary"). */
const char *bb_title_category(const char *locale, int category);
const char *bb_title_status(const char *locale, int status);

#endif
