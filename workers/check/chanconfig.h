/* The plug-in's configuration as the worker host builds it (chanconfig.c).
 *
 * Threads: the tool's main thread. */
#ifndef BB_CHECK_CHANCONFIG_H
#define BB_CHECK_CHANCONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "buurtbus/channel.h"

/* One option value given on the command line or in --config. */
struct bb_check_kv {
    char *key;
    char *value;
    const char *source; /* "--set" or the file */
};

/* Checks kv against ch's option table and builds what init() reads.
 * Returns NULL with a message in err. */
struct bb_channel_config *bb_chanconfig_new(const struct bb_channel *ch, const char *instance,
                                            const struct bb_check_kv *kv, size_t nkv, char *err,
                                            size_t errlen);
void bb_chanconfig_free(struct bb_channel_config *cfg);

#endif
