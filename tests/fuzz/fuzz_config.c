/* Fuzz target: configuration files (common/config.h) — the input as a file
 * read by bb_config_load_file against a table of every option type, against
 * the broker's own table (broker/options.c) and through the worker's loader
 * with its channel.<instance>.<key> sections (workers/host/options.c); then
 * as a NAME=VALUE override (bb_config_set), and raw through
 * bb_parse_duration_ms, bb_parse_bytes and bb_parse_bool.
 *
 * Secret-file options open the file their value names, relative to the
 * config file's directory. So that no input reaches outside a directory of
 * our own, every '/' of the input becomes '_' before use (no absolute path,
 * no path through a subdirectory), the config file lives in a fresh
 * temporary directory that holds one secret and one subdirectory,
 * overrides never name the secret-file option, and the worker's loader —
 * which reads through a memfd, so its relative secrets resolve in
 * /proc/self/fd — is skipped for inputs naming a password_file.
 *
 * Threads: libFuzzer's one thread. */
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bb_err.h"
#include "config.h"
#include "fuzz_common.h"
#include "host.h"
#include "internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct every {
    int64_t count, limit, timeout_ms, size, big;
    bool enabled, verbose;
    char *name, *path, *secret;
};

#define OPT(name, type, field, def, min, max)                                                      \
    {                                                                                              \
        name, type, offsetof(struct every, field), def, min, max, name                             \
    }
static const struct bb_opt every_opts[] = {
    OPT("count", BB_OPT_INT, count, "16", 1, 10000),
    OPT("limit", BB_OPT_INT, limit, NULL, 0, 0),
    OPT("enabled", BB_OPT_BOOL, enabled, "yes", 0, 0),
    OPT("verbose", BB_OPT_BOOL, verbose, NULL, 0, 0),
    OPT("name", BB_OPT_STRING, name, "", 0, 0),
    OPT("path", BB_OPT_STRING, path, NULL, 0, 0),
    OPT("timeout", BB_OPT_DURATION_MS, timeout_ms, "5s", 10, 3600000),
    OPT("size", BB_OPT_BYTES, size, "64kb", 1024, 1073741824),
    OPT("big", BB_OPT_BYTES, big, NULL, 0, 0),
    OPT("secret_file", BB_OPT_SECRET_FILE, secret, NULL, 0, 0),
};
static const size_t every_n = sizeof(every_opts) / sizeof(every_opts[0]);

static char dir_path[PATH_MAX], conf_path[PATH_MAX + 16], secret_path[PATH_MAX + 16],
    sub_path[PATH_MAX + 16];
static FILE *devnull;

static void cleanup(void)
{
    unlink(conf_path);
    unlink(secret_path);
    rmdir(sub_path);
    rmdir(dir_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char tmpl[] = "/tmp/bb-fuzz-config.XXXXXX";
    char *dir = mkdtemp(tmpl);
    if (!dir) {
        fuzz_fail("temporary directory");
    }
    snprintf(dir_path, sizeof(dir_path), "%s", dir);
    snprintf(conf_path, sizeof(conf_path), "%s/fuzz.conf", dir);
    snprintf(secret_path, sizeof(secret_path), "%s/secret", dir);
    snprintf(sub_path, sizeof(sub_path), "%s/sub", dir);
    atexit(cleanup);
    FILE *f = fopen(secret_path, "w");
    if (!f || fputs("s3cr3t\nsecond line\n", f) < 0 || fclose(f) != 0 ||
        mkdir(sub_path, 0700) != 0) {
        fuzz_fail("temporary files");
    }
    devnull = fopen("/dev/null", "w");
    if (!devnull) {
        fuzz_fail("/dev/null");
    }
    return 0;
}

static void write_conf(const char *text, size_t len)
{
    int fd = open(conf_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fuzz_fail("open %s", conf_path);
    }
    while (len > 0) {
        ssize_t w = write(fd, text, len);
        if (w <= 0) {
            fuzz_fail("write %s", conf_path);
        }
        text += w;
        len -= (size_t)w;
    }
    close(fd);
}

static void tables(const char *text)
{
    char err[512];
    struct every e;
    memset(&e, 0, sizeof(e));
    if (bb_config_defaults(every_opts, every_n, &e, err, sizeof(err)) != BB_OK) {
        fuzz_fail("defaults: %s", err);
    }
    if (bb_config_load_file(every_opts, every_n, &e, conf_path, err, sizeof(err)) == BB_OK) {
        if (e.count < 1 || e.count > 10000 || e.timeout_ms < 10 || e.timeout_ms > 3600000 ||
            e.size < 1024 || e.size > 1073741824) {
            fuzz_fail("a value outside its bounds was accepted");
        }
        bb_config_dump(every_opts, every_n, &e, devnull);
    } else if (!err[0]) {
        fuzz_fail("an error without a message");
    }
    /* The first line as an override (not of the secret: it would name a file in the
     * current directory). */
    char name[64], value[256];
    const char *eq = strchr(text, '=');
    if (eq && (size_t)(eq - text) < sizeof(name)) {
        snprintf(name, sizeof(name), "%.*s", (int)(eq - text), text);
        snprintf(value, sizeof(value), "%.*s", (int)strcspn(eq + 1, "\n"), eq + 1);
        if (strcmp(name, "secret_file") != 0) {
            (void)bb_config_set(every_opts, every_n, &e, name, value, err, sizeof(err));
        }
    }
    bb_config_free(every_opts, every_n, &e);

    struct bb_broker_config bc;
    memset(&bc, 0, sizeof(bc));
    if (bb_config_defaults(bb_broker_opts, bb_broker_nopts, &bc, err, sizeof(err)) != BB_OK) {
        fuzz_fail("broker defaults: %s", err);
    }
    (void)bb_config_load_file(bb_broker_opts, bb_broker_nopts, &bc, conf_path, err, sizeof(err));
    bb_config_free(bb_broker_opts, bb_broker_nopts, &bc);

    if (!strstr(text, "password_file")) {
        struct bb_worker_config wc;
        (void)bb_worker_config_load(&wc, conf_path, NULL, 0, err, sizeof(err));
        bb_worker_config_free(&wc);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) {
        return 0;
    }
    memcpy(text, data, size);
    text[size] = '\0';
    for (size_t i = 0; i < size; i++) {
        if (text[i] == '/') {
            text[i] = '_';
        }
    }
    write_conf(text, size);
    tables(text);

    int64_t v;
    int b;
    if (bb_parse_duration_ms(text, &v) == BB_OK && v < 0) {
        fuzz_fail("negative duration %lld from '%s'", (long long)v, text);
    }
    if (bb_parse_bytes(text, &v) == BB_OK && v < 0) {
        fuzz_fail("negative size %lld from '%s'", (long long)v, text);
    }
    if (bb_parse_bool(text, &b) == BB_OK && b != 0 && b != 1) {
        fuzz_fail("bool %d", b);
    }
    free(text);
    return 0;
}
