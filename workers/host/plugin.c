/* Loading channel plug-ins: dlopen, the version handshake, and the
 * plug-in's configuration checked against its option table.
 *
 * Threads: main thread, before the loop starts. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bb_err.h"
#include "config.h"
#include "host.h"
#include "log.h"

int bb_plugin_load(struct bb_plugin *p, const char *dir, const char *name, char *err, size_t errlen)
{
    char path[1024];
    memset(p, 0, sizeof(*p));
    if (strchr(name, '/') || strstr(name, "..")) {
        snprintf(err, errlen, "plug-in name '%s' must not contain a path", name);
        return BB_ECONFIG;
    }
    snprintf(path, sizeof(path), "%s/bb-channel-%s.so", dir, name);
    p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        snprintf(err, errlen, "cannot load plug-in %s: %s", path, dlerror());
        return BB_ECONFIG;
    }
    bb_channel_entry_fn *entry;
    *(void **)&entry = dlsym(p->dl, "bb_channel_entry");
    if (!entry) {
        snprintf(err, errlen, "%s: no bb_channel_entry symbol (not a buurtbus plug-in)", path);
        goto close;
    }
    const struct bb_channel *ch = entry(BB_CHANNEL_ABI_VERSION);
    if (!ch) {
        snprintf(err, errlen, "%s: refuses host ABI version %d", path, BB_CHANNEL_ABI_VERSION);
        goto close;
    }
    if (ch->abi_version != BB_CHANNEL_ABI_VERSION) {
        snprintf(err, errlen, "%s: built for ABI version %u, this host speaks %d", path,
                 ch->abi_version, BB_CHANNEL_ABI_VERSION);
        goto close;
    }
    if (ch->struct_size < offsetof(struct bb_channel, reserved)) {
        snprintf(err, errlen, "%s: struct bb_channel too small (%u bytes, need %zu)", path,
                 ch->struct_size, offsetof(struct bb_channel, reserved));
        goto close;
    }
    if (!ch->name || strcmp(ch->name, name) != 0 || !ch->init || !ch->send || !ch->destroy) {
        snprintf(err, errlen, "%s: table incomplete or named '%s'", path,
                 ch->name ? ch->name : "(null)");
        goto close;
    }
    p->ch = ch;
    bb_info("plug-in loaded", "name=%s abi=%u caps=0x%x", name, ch->abi_version, ch->caps);
    return BB_OK;

close:
    dlclose(p->dl);
    p->dl = NULL;
    return BB_ECONFIG;
}

void bb_plugin_unload(struct bb_plugin *p)
{
    if (p->dl) {
        dlclose(p->dl);
    }
    p->dl = NULL;
    p->ch = NULL;
}

/* ---- a plug-in's configuration ----------------------------------------------------------- */

struct plugin_config {
    struct bb_channel_config pub;
    size_t n;
    const char **names; /* borrowed from the plug-in's table */
    char **values;      /* owned */
    int64_t *ints;
};

static const char *cfg_value(const struct bb_channel_config *cfg, const char *name)
{
    const struct plugin_config *pc = cfg->opaque;
    for (size_t i = 0; name && i < pc->n; i++) {
        if (strcmp(pc->names[i], name) == 0) {
            return pc->values[i];
        }
    }
    return NULL;
}

static int64_t cfg_integer(const struct bb_channel_config *cfg, const char *name)
{
    const struct plugin_config *pc = cfg->opaque;
    for (size_t i = 0; name && i < pc->n; i++) {
        if (strcmp(pc->names[i], name) == 0) {
            return pc->ints[i];
        }
    }
    return 0;
}

static char *read_secret(const char *path, char *err, size_t errlen, const char *what)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    char line[4096] = "";
    if (!fgets(line, sizeof(line), f)) {
        line[0] = '\0';
    }
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    char *s = strdup(line);
    explicit_bzero(line, sizeof(line));
    return s;
}

/* Checks one value against its type; sets *iv for numbers. */
static int check_value(const struct bb_channel_option *o, const char *v, int64_t *iv)
{
    int b;
    char *end;
    switch (o->type) {
    case BB_OPTION_INT:
        errno = 0;
        *iv = strtoll(v, &end, 10);
        return errno || end == v || *end ? BB_EINVAL : BB_OK;
    case BB_OPTION_BOOL:
        if (bb_parse_bool(v, &b) != BB_OK) {
            return BB_EINVAL;
        }
        *iv = b;
        return BB_OK;
    case BB_OPTION_DURATION_MS:
        return bb_parse_duration_ms(v, iv);
    default:
        return BB_OK;
    }
}

/* conf's key k as ch's option name: the key, or with a prefix what follows
 * "<prefix>."; NULL if the key is not ch's. */
static const char *own_key(const struct bb_chan_conf *conf, size_t k, const char *prefix)
{
    const char *key = conf->kv[k].key;
    if (!prefix) {
        return key;
    }
    size_t n = strlen(prefix);
    return strncmp(key, prefix, n) == 0 && key[n] == '.' ? key + n + 1 : NULL;
}

struct bb_channel_config *bb_plugin_config_new(const struct bb_channel *ch,
                                               const struct bb_chan_conf *conf,
                                               const char *prefix, char *err, size_t errlen)
{
    size_t n = 0;
    while (ch->options && ch->options[n].name) {
        n++;
    }
    struct plugin_config *pc = calloc(1, sizeof(*pc));
    if (!pc) {
        goto nomem;
    }
    pc->n = n;
    pc->names = calloc(n + 1, sizeof(*pc->names));
    pc->values = calloc(n + 1, sizeof(*pc->values));
    pc->ints = calloc(n + 1, sizeof(*pc->ints));
    if (!pc->names || !pc->values || !pc->ints) {
        goto nomem;
    }
    /* Every key given must be one the plug-in knows. */
    for (size_t k = 0; k < conf->nkv; k++) {
        const char *key = own_key(conf, k, prefix);
        bool known = key == NULL;
        for (size_t i = 0; key && i < n; i++) {
            known = known || strcmp(ch->options[i].name, key) == 0;
        }
        if (!known) {
            snprintf(err, errlen, "%s:%d: channel.%s.%s: plug-in %s has no option '%s'",
                     conf->kv[k].source, conf->kv[k].line, conf->instance, conf->kv[k].key,
                     ch->name, conf->kv[k].key);
            goto fail;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct bb_channel_option *o = &ch->options[i];
        const char *v = o->def;
        for (size_t k = 0; k < conf->nkv; k++) {
            const char *key = own_key(conf, k, prefix);
            if (key && strcmp(key, o->name) == 0) {
                v = conf->kv[k].value; /* the last line wins */
            }
        }
        pc->names[i] = o->name;
        if (!v) {
            snprintf(err, errlen, "channel.%s.%s: required (%s)", conf->instance, o->name,
                     o->help ? o->help : "no help");
            goto fail;
        }
        if (check_value(o, v, &pc->ints[i]) != BB_OK) {
            snprintf(err, errlen, "channel.%s.%s: bad value '%s' (%s)", conf->instance, o->name, v,
                     o->type == BB_OPTION_INT    ? "expected an integer"
                     : o->type == BB_OPTION_BOOL ? "expected yes or no"
                                                 : "expected a duration like 500ms or 5s");
            goto fail;
        }
        if (o->type == BB_OPTION_SECRET_FILE && v[0]) {
            char what[256];
            snprintf(what, sizeof(what), "channel.%s.%s", conf->instance, o->name);
            pc->values[i] = read_secret(v, err, errlen, what);
            if (!pc->values[i]) {
                goto fail;
            }
        } else {
            pc->values[i] = strdup(v);
            if (!pc->values[i]) {
                goto nomem;
            }
        }
    }
    pc->pub.struct_size = sizeof(pc->pub);
    pc->pub.instance = conf->instance;
    pc->pub.value = cfg_value;
    pc->pub.integer = cfg_integer;
    pc->pub.opaque = pc;
    return &pc->pub;

nomem:
    snprintf(err, errlen, "out of memory");
fail:
    if (pc) {
        bb_plugin_config_free(&pc->pub);
    }
    return NULL;
}

void bb_plugin_config_free(struct bb_channel_config *cfg)
{
    if (!cfg) {
        return;
    }
    struct plugin_config *pc = (struct plugin_config *)cfg;
    for (size_t i = 0; pc->values && i < pc->n; i++) {
        if (pc->values[i]) {
            explicit_bzero(pc->values[i], strlen(pc->values[i]));
            free(pc->values[i]);
        }
    }
    free(pc->values);
    free(pc->names);
    free(pc->ints);
    free(pc);
}
