/* Fuzz target: buurtbusctl's JSON input (broker/ctl/json.h) — a stream of
 * JSON values (JSON Lines), each mapped as a directory line, a report and a
 * status update. What maps is checked as the tool then checks it
 * (bb_store_check, bb_validate_report/_status) and must survive a protobuf
 * round trip: packed, unpacked, packed again to the same bytes.
 *
 * Threads: libFuzzer's one thread (the arena belongs to it). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "bb_err.h"
#include "fuzz_common.h"
#include "json.h"
#include "snapshot.h"
#include "validate.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_VALUES 64 /* per input, to keep one input quick */

static struct bb_jarena *arena;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    arena = bb_jarena_new();
    if (!arena) {
        fuzz_fail("bb_jarena_new");
    }
    return 0;
}

/* Packs, unpacks and packs again; the two encodings must be the same bytes. */
#define ROUND_TRIP(type, prefix, msg)                                                              \
    do {                                                                                           \
        size_t len = prefix##__get_packed_size(msg);                                               \
        uint8_t *a = malloc(len ? len : 1), *b = malloc(len ? len : 1);                            \
        if (!a || !b) {                                                                            \
            fuzz_fail("out of memory");                                                            \
        }                                                                                          \
        if (prefix##__pack(msg, a) != len) {                                                       \
            fuzz_fail(#prefix ": packed size");                                                    \
        }                                                                                          \
        type *back = prefix##__unpack(NULL, len, a);                                               \
        if (!back) {                                                                               \
            fuzz_fail(#prefix ": what was packed does not unpack");                                \
        }                                                                                          \
        if (prefix##__get_packed_size(back) != len || prefix##__pack(back, b) != len ||            \
            memcmp(a, b, len) != 0) {                                                              \
            fuzz_fail(#prefix ": not the same after a round trip");                                \
        }                                                                                          \
        prefix##__free_unpacked(back, NULL);                                                       \
        free(a);                                                                                   \
        free(b);                                                                                   \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    char err[512];
    for (int i = 0; i < MAX_VALUES; i++) {
        struct json_object *obj = NULL;
        if (bb_json_parse_next((const char *)data, size, &off, &obj, err, sizeof(err)) != BB_OK) {
            (void)bb_json_line_of((const char *)data, off);
            break;
        }
        if (!obj) {
            break;
        }
        Bb__DirectoryEvent *ev;
        Bb__Report *rep;
        Bb__ReportStatus *st;
        bb_jarena_reset(arena);
        if (bb_json_directory_event(arena, obj, &ev, err, sizeof(err)) == BB_OK) {
            (void)bb_store_check(ev);
            ROUND_TRIP(Bb__DirectoryEvent, bb__directory_event, ev);
        }
        bb_jarena_reset(arena);
        if (bb_json_report(arena, obj, 1767225600000, &rep, err, sizeof(err)) == BB_OK) {
            (void)bb_validate_report(rep, &fuzz_limits);
            ROUND_TRIP(Bb__Report, bb__report, rep);
        }
        bb_jarena_reset(arena);
        if (bb_json_status(arena, obj, 1767225600000, &st, err, sizeof(err)) == BB_OK) {
            (void)bb_validate_status(st, &fuzz_limits);
            ROUND_TRIP(Bb__ReportStatus, bb__report_status, st);
        }
        json_object_put(obj);
    }
    /* One value on its own, as bb_json_parse takes it. */
    struct json_object *obj = NULL;
    if (bb_json_parse((const char *)data, size, &obj, err, sizeof(err)) == BB_OK) {
        json_object_put(obj);
    }
    return 0;
}
