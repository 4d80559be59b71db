/* What the fuzz targets and the seed generator share: a small directory to
 * route against, a zstd dictionary built the same way every time (so seed
 * batches name the dictionary the fuzzers hold), the broker's input limits,
 * sample reports, and the worker's checks on a bb:out entry.
 *
 * Threads: libFuzzer runs each target on one thread; everything here is used
 * from it alone. */
#ifndef BB_FUZZ_COMMON_H
#define BB_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "delivery.pb-c.h"
#include "directory.pb-c.h"
#include "report.pb-c.h"
#include "validate.h"

struct bb_dir;
struct bb_zdict;
struct bb_zdec;

/* The id the fuzzers' dictionary carries (written into its header). */
#define FUZZ_DICT_ID 0x0b0b0f01u
/* The worker's default cap on a decompressed notification. */
#define FUZZ_MAX_OUT (256 * 1024)

/* The broker's defaults (broker/options.c): max_text 4kb, max_media 8, max_url 2kb. */
extern const struct bb_limits fuzz_limits;

/* A directory of a few users and groups around 's-Hertogenbosch: watch
 * areas, two groups (one by membership, one by area), a mute and a follow
 * of report "r-seed-1". Aborts if the index refuses one of its events. */
struct bb_dir *fuzz_dir_new(void);
/* The same events, in order, for seeds: returns how many (at most cap). */
size_t fuzz_dir_events(Bb__DirectoryEvent **out, size_t cap);

/* The dictionary with id FUZZ_DICT_ID, from notifications of sample
 * reports. Aborts if zstd refuses it. The caller holds one reference. */
struct bb_zdict *fuzz_dict_new(void);

/* Sample report i (0..FUZZ_REPORTS-1), valid for the broker. The strings
 * are static; r borrows them and m (room for 2 media). */
#define FUZZ_REPORTS 8
void fuzz_report_sample(unsigned i, Bb__Report *r, Bb__Media *m, Bb__Media **mp);
/* Sample status update i (0..FUZZ_STATUSES-1). */
#define FUZZ_STATUSES 4
void fuzz_status_sample(unsigned i, Bb__ReportStatus *s);

/* The worker host's checks on one bb:out entry (workers/host/stream.c):
 * decode, notification key, dictionary id, decompression with dict when
 * the frame names FUZZ_DICT_ID (else none), Notification decoding, UTF-8 of every
 * string, a delivery id per recipient. NULL when the worker would deliver
 * it, else the dead-letter reason. */
const char *fuzz_worker_take(struct bb_zdec *z, const struct bb_zdict *dict, const uint8_t *p,
                             size_t n);
/* The frame + Notification half of it, on a bare zstd frame. */
const char *fuzz_worker_decode(struct bb_zdec *z, const struct bb_zdict *dict, const uint8_t *p,
                               size_t n, const char *key, int channel, const uint64_t *recipients,
                               size_t nrecipients);

/* Aborts with a message (the fuzzer reports the input as a crash). */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
