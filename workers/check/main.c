/* buurtbus-plugin-check: the conformance harness a channel plug-in author
 * runs against their bb-channel-<name>.so. It plays the worker host (and,
 * for http(), the provider), runs the plug-in through every part of the
 * ABI contract and prints one line per check. See README.md.
 *
 * Exit: 0 every check passed or was skipped, 1 a check failed, 2 usage.
 *
 * Threads: one; the main thread runs the event loop every callback of the
 * plug-in runs on. */
#include <event2/event.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "log.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: buurtbus-plugin-check [options] path/to/bb-channel-<name>.so\n"
               "\n"
               "Loads a buurtbus channel plug-in and checks it against the plug-in ABI:\n"
               "the table, its options, init(), format() on generated deliveries, send()\n"
               "against scripted provider answers, destroy() and the host allocator balance.\n"
               "\n"
               "  -s, --set NAME=VALUE   a plug-in option (repeatable); secret-file options name\n"
               "                         a file whose first line the plug-in gets\n"
               "  -c, --config FILE      plug-in options, one 'name value' per line (also\n"
               "                         'channel.<inst>.name value' lines of a worker config)\n"
               "  -i, --instance NAME    the channel instance name init() sees (default: the\n"
               "                         plug-in's name)\n"
               "      --contact F=VALUE  a contact field of the generated deliveries (email,\n"
               "                         push_token, push_platform, locale, screen_name,\n"
               "                         unsubscribe_url, endpoint); F=@file reads it from a file\n"
               "      --fixture URL=STATUS:BODY  http() requests to URLs starting with URL get\n"
               "                         this answer, not the script's (e.g. an OAuth token\n"
               "                         endpoint); BODY may be @file (repeatable)\n"
               "      --redis HOST:PORT  run redis() commands on this server (else each fails\n"
               "                         with a NULL reply and the live redis check is skipped)\n"
               "      --live             run curl() transfers for real, against the endpoint\n"
               "                         options you --set (else they fail to connect)\n"
               "      --timeout MS       how long to wait for done() (default 3000)\n"
               "      --batch N          sends in flight at once for BB_CAP_BATCH (default 200)\n"
               "      --json             the report as JSON\n"
               "  -h, --help             this text\n"
               "\n"
               "Exit status: 0 all checks ok or skipped, 1 a check failed, 2 usage error.\n"
               "For full leak checking build this tool and the plug-in with -fsanitize=address.\n");
}

/* Complains about a bad argument; the usage error exit status. */
static int bad(const char *what)
{
    fprintf(stderr, "buurtbus-plugin-check: %s\n", what);
    return 2;
}

/* Parses the command line into o, ho, *json and the fixtures; 0, 2 (usage)
 * or -1 (--help printed). */
static int parse(int argc, char **argv, struct bb_check_opts *o, struct bb_check_host_opts *ho,
                 bool *json, const char **sets, const char **fixtures, size_t *nfixtures)
{
    static const struct option longopts[] = {
        {"set", required_argument, NULL, 's'},      {"config", required_argument, NULL, 'c'},
        {"instance", required_argument, NULL, 'i'}, {"redis", required_argument, NULL, 'r'},
        {"live", no_argument, NULL, 'l'},           {"timeout", required_argument, NULL, 't'},
        {"batch", required_argument, NULL, 'b'},    {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},           {"contact", required_argument, NULL, 'C'},
        {"fixture", required_argument, NULL, 'F'},  {NULL, 0, NULL, 0},
    };
    int c;
    char *end, *eq;
    long n;
    while ((c = getopt_long(argc, argv, "s:c:i:h", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (!strchr(optarg, '=') || optarg[0] == '=') {
                return bad("--set wants NAME=VALUE");
            }
            sets[o->nsets++] = optarg;
            break;
        case 'c':
            o->config = optarg;
            break;
        case 'i':
            o->instance = optarg;
            break;
        case 'r':
            ho->redis = optarg;
            break;
        case 'l':
            ho->live = true;
            break;
        case 't':
            o->timeout_ms = strtol(optarg, &end, 10);
            if (*end || o->timeout_ms <= 0) {
                return bad("--timeout wants milliseconds");
            }
            break;
        case 'b':
            n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 2000) {
                return bad("--batch wants 1..2000");
            }
            o->batch = (unsigned)n;
            break;
        case 'j':
            *json = true;
            break;
        case 'F':
            fixtures[(*nfixtures)++] = optarg; /* taken once the host is up */
            break;
        case 'C':
            eq = strchr(optarg, '=');
            if (eq) {
                *eq = '\0';
            }
            if (!eq || bb_cases_set_contact(optarg, eq + 1) != 0) {
                return bad("--contact wants FIELD=VALUE or FIELD=@file, FIELD one of email, "
                           "push_token, push_platform, locale, screen_name, unsubscribe_url, "
                           "endpoint");
            }
            break;
        case 'h':
            usage(stdout);
            return -1;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    o->path = argv[optind];
    return 0;
}

int main(int argc, char **argv)
{
    struct bb_check_opts o = {.timeout_ms = 3000, .batch = 200};
    struct bb_check_host_opts ho = {0};
    bool json = false;
    struct event_base *base = NULL;
    bool host_up = false;
    int rc = 2;
    const char **sets = calloc((size_t)argc + 1, sizeof(*sets));
    const char **fixtures = calloc((size_t)argc + 1, sizeof(*fixtures));
    size_t nfixtures = 0;
    if (!sets || !fixtures) {
        goto out;
    }
    o.sets = sets;
    int p = parse(argc, argv, &o, &ho, &json, sets, fixtures, &nfixtures);
    if (p != 0) {
        rc = p < 0 ? 0 : p;
        goto out;
    }

    bb_log_init("buurtbus-plugin-check", BB_LOG_DEBUG);
    base = event_base_new();
    if (!base) {
        rc = bad("no event base");
        goto out;
    }
    /* The name shown in log lines: the file's, as the host loads it. */
    const char *file = strrchr(o.path, '/') ? strrchr(o.path, '/') + 1 : o.path;
    char name[128];
    snprintf(name, sizeof(name), "%s", file);
    if (strncmp(name, "bb-channel-", 11) == 0) {
        memmove(name, name + 11, strlen(name + 11) + 1);
    }
    name[strcspn(name, ".")] = '\0';
    ho.plugin_name = name;
    char err[512];
    if (bb_check_host_init(base, &ho, err, sizeof(err)) != 0) {
        rc = bad(err);
        goto out;
    }
    host_up = true;
    for (size_t i = 0; i < nfixtures; i++) {
        if (bb_check_host_add_fixture(fixtures[i]) != 0) {
            rc = bad("--fixture wants URL-PREFIX=STATUS:BODY or URL-PREFIX=STATUS:@file");
            goto out;
        }
    }
    bb_check_catch_crashes(json, o.path);
    bb_check_run(base, &o);
    rc = bb_check_report(json, o.path);

out:
    if (host_up) {
        bb_check_host_shutdown();
    }
    bb_cases_free();
    if (base) {
        event_base_free(base);
    }
    free(fixtures);
    free(sets);
    return rc;
}
