/* The plug-in's configuration exactly as the worker host builds it: the
 * given values go through the host's own bb_plugin_config_new
 * (workers/host/plugin.c, compiled into the tool), so a value the tool
 * accepts is one the worker accepts.
 *
 * Threads: the tool's main thread. */
#include <stdlib.h>

#include "chanconfig.h"
#include "host.h"

struct bb_channel_config *bb_chanconfig_new(const struct bb_channel *ch, const char *instance,
                                            const struct bb_check_kv *kv, size_t nkv, char *err,
                                            size_t errlen)
{
    struct bb_chan_kv *hkv = calloc(nkv ? nkv : 1, sizeof(*hkv));
    if (!hkv) {
        return NULL;
    }
    for (size_t i = 0; i < nkv; i++) {
        hkv[i] = (struct bb_chan_kv){kv[i].key, kv[i].value, kv[i].source, 0};
    }
    struct bb_chan_conf conf = {.instance = (char *)instance, .kv = hkv, .nkv = nkv};
    struct bb_channel_config *cfg = bb_plugin_config_new(ch, &conf, NULL, err, errlen);
    free(hkv);
    return cfg;
}

void bb_chanconfig_free(struct bb_channel_config *cfg)
{
    bb_plugin_config_free(cfg);
}
