/* The wire codec shared by broker and workers: zstd frames with trained
 * dictionaries, and deterministic delivery ids.
 *
 * Frames always carry a content checksum and the dictionary id (0 = none).
 * Dictionaries are stored in Redis at bb:zdict:{id}; the id is the one
 * zstd writes into the dictionary header. */
#ifndef BB_WIRE_H
#define BB_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A trained dictionary, ready for both directions. Immutable after
 * creation, so it can be shared by any number of threads; reference-counted
 * (atomic), the last bb_zdict_unref frees it. */
struct bb_zdict;

/* Copies dict. level: compression level used with it (e.g. 3). Returns NULL
 * if the bytes are not a zstd dictionary or memory is short. */
struct bb_zdict *bb_zdict_new(const void *dict, size_t len, int level);
struct bb_zdict *bb_zdict_ref(struct bb_zdict *d);
void bb_zdict_unref(struct bb_zdict *d); /* NULL is a no-op */
uint32_t bb_zdict_id(const struct bb_zdict *d);
const void *bb_zdict_bytes(const struct bb_zdict *d, size_t *len);

/* Trains a dictionary from samples laid end to end in samples (sizes[i]
 * each). Writes at most cap bytes to dict, sets *len. Returns 0, BB_EINVAL
 * (too few or too small samples: zstd wants a few hundred) or BB_ENOMEM. */
int bb_zdict_train(const void *samples, const size_t *sizes, unsigned nsamples, void *dict,
                   size_t cap, size_t *len);

/* Compression context: one per thread (not shareable). */
struct bb_zenc;
struct bb_zenc *bb_zenc_new(int level);
void bb_zenc_free(struct bb_zenc *z); /* NULL is a no-op */
/* Worst-case compressed size of n bytes. */
size_t bb_zbound(size_t n);
/* Compresses src into dst (cap >= bb_zbound(n) always suffices) with dict
 * (NULL: no dictionary). Sets *outlen. Returns 0, BB_ETOOBIG if cap is too
 * small, BB_EIO on a zstd error. */
int bb_zenc_compress(struct bb_zenc *z, const struct bb_zdict *dict, const void *src, size_t n,
                     void *dst, size_t cap, size_t *outlen);

/* Decompression context: one per thread. max_out caps the decompressed size
 * it will ever produce (hostile frames). */
struct bb_zdec;
struct bb_zdec *bb_zdec_new(size_t max_out);
void bb_zdec_free(struct bb_zdec *z); /* NULL is a no-op */
/* The dictionary id a frame names (0: none), or 0 for a malformed frame. */
uint32_t bb_zframe_dict_id(const void *src, size_t n);
/* Decompresses one frame with dict (must match the frame's id; NULL if the
 * frame names none). *out points into the context's buffer, valid until the
 * next call. Returns 0; BB_EINVAL for a corrupt frame, a checksum mismatch
 * or a wrong/missing dictionary; BB_ETOOBIG past max_out. */
int bb_zdec_decompress(struct bb_zdec *z, const struct bb_zdict *dict, const void *src, size_t n,
                       const uint8_t **out, size_t *outlen);

/* Delivery ids: "{notification_key}:{channel}:{recipient}", e.g.
 * "r:abc:1:1001". Writes a NUL-terminated id into buf; returns its length,
 * or 0 if cap is too small. */
size_t bb_delivery_id(char *buf, size_t cap, const char *notification_key, int channel,
                      uint64_t recipient);

/* UTF-8 validation (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
bool bb_utf8_is_valid(const char *s, size_t n);

#endif
