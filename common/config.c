/* Table-driven configuration files; see config.h for the format.
 *
 * Not thread-safe on a given target: fill a config on one thread (at start,
 * or on reload into a fresh struct that is then swapped in), then share it
 * read-only. The option table is only read. The parse helpers are pure and
 * may be called from any thread.
 *
 * Details the header leaves open, decided here:
 * - '#' starts a comment at the start of a line or after whitespace, so an
 *   unquoted value may contain '#' ("a#b"); quote values with spaces.
 * - Option names are matched exactly (case-sensitive). Later lines override
 *   earlier ones. A UTF-8 BOM and CRLF line ends are accepted.
 * - Units are case-insensitive. Durations and sizes are whole numbers and
 *   never negative; every multiplication is overflow-checked.
 * - Strings may not contain control characters other than tab, so that
 *   bb_config_dump always prints a valid file.
 * - A relative SECRET_FILE path in a file is relative to that file's
 *   directory; from bb_config_set or a default it is relative to the working
 *   directory. The first line must be non-empty and at most SECRET_MAX bytes.
 *   Secrets are wiped (explicit_bzero) before they are freed.
 * - bb_config_defaults treats the target as uninitialised: it zeroes every
 *   option field first and never frees. bb_config_set/_load_file free the
 *   strings they replace. On error the target may be partly updated, but it
 *   is always safe to pass to bb_config_free. */

#include "config.h"

#include <getopt.h>

#include "bb_err.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

enum {
    LINE_MAX_LEN = 64 * 1024,
    SECRET_MAX = 4096,
    NAME_MAX_LEN = 64, /* for "did you mean"; longer names simply get no hint */
};

/* Where a value came from, for error messages: "path:line: ", "path: " or "". */
struct where {
    const char *path;
    unsigned line;
    const char *dir; /* base for relative secret file paths, or NULL */
};

static void errf(char *err, size_t errlen, const struct where *w, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void errf(char *err, size_t errlen, const struct where *w, const char *fmt, ...)
{
    va_list ap;
    int n = 0;

    if (err == NULL || errlen == 0) {
        return;
    }
    if (w != NULL && w->path != NULL) {
        if (w->line > 0) {
            n = snprintf(err, errlen, "%s:%u: ", w->path, w->line);
        } else {
            n = snprintf(err, errlen, "%s: ", w->path);
        }
        if (n < 0) {
            n = 0;
        }
        if ((size_t)n >= errlen) {
            return;
        }
    }
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static void *field(void *target, const struct bb_opt *o)
{
    return (char *)target + o->offset;
}

static const void *field_const(const void *target, const struct bb_opt *o)
{
    return (const char *)target + o->offset;
}

static void secret_free(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* ---- number parsing ---------------------------------------------------- */

/* ASCII only, whatever the locale. */
static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

struct unit {
    const char *suffix;
    int64_t mult;
};

static const struct unit duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}, {"d", 86400 * 1000},
};

static const struct unit byte_units[] = {
    {"", 1},
    {"k", 1000},
    {"kb", 1024},
    {"m", 1000 * 1000},
    {"mb", 1024 * 1024},
    {"g", 1000 * 1000 * 1000},
    {"gb", 1024 * 1024 * 1024},
};

/* Parses a non-negative whole number followed by one of units. Returns 0,
 * BB_EINVAL (syntax) or BB_ERANGE (does not fit int64_t). */
static int parse_units(const char *s, const struct unit *units, size_t nunits, int64_t *out)
{
    int64_t v = 0;
    const char *p = s;

    if (s == NULL || !is_digit(*p)) {
        return BB_EINVAL;
    }
    for (; is_digit(*p); p++) {
        int d = *p - '0';
        if (v > (INT64_MAX - d) / 10) {
            /* keep scanning: "99999999999999999999xyz" is a syntax error */
            while (is_digit(*p)) {
                p++;
            }
            for (size_t i = 0; i < nunits; i++) {
                if (strcasecmp(p, units[i].suffix) == 0) {
                    return BB_ERANGE;
                }
            }
            return BB_EINVAL;
        }
        v = v * 10 + d;
    }
    for (size_t i = 0; i < nunits; i++) {
        if (strcasecmp(p, units[i].suffix) == 0) {
            if (__builtin_mul_overflow(v, units[i].mult, out)) {
                return BB_ERANGE;
            }
            return 0;
        }
    }
    return BB_EINVAL;
}

/* Parses an optionally negative decimal integer. Returns 0, BB_EINVAL or BB_ERANGE. */
static int parse_int(const char *s, int64_t *out)
{
    const char *p = s;
    bool neg = false;
    uint64_t v = 0, limit;

    if (s == NULL) {
        return BB_EINVAL;
    }
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (!is_digit(*p)) {
        return BB_EINVAL;
    }
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; is_digit(*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (limit - d) / 10) {
            while (is_digit(*p)) {
                p++;
            }
            return *p == '\0' ? BB_ERANGE : BB_EINVAL;
        }
        v = v * 10 + d;
    }
    if (*p != '\0') {
        return BB_EINVAL;
    }
    if (neg) {
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        *out = (int64_t)v;
    }
    return 0;
}

int bb_parse_duration_ms(const char *s, int64_t *out)
{
    int64_t v;

    if (out == NULL || parse_units(s, duration_units, NELEM(duration_units), &v) != 0) {
        return BB_EINVAL;
    }
    *out = v;
    return 0;
}

int bb_parse_bytes(const char *s, int64_t *out)
{
    int64_t v;

    if (out == NULL || parse_units(s, byte_units, NELEM(byte_units), &v) != 0) {
        return BB_EINVAL;
    }
    *out = v;
    return 0;
}

int bb_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};

    if (s == NULL || out == NULL) {
        return BB_EINVAL;
    }
    for (size_t i = 0; i < NELEM(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return BB_EINVAL;
}

/* ---- formatting (dump and error messages) ------------------------------ */

/* Writes v with the largest unit that represents it exactly (base: the
 * suffix for a unit of 1; 0 is written bare). */
static void format_units(char *buf, size_t cap, int64_t v, const struct unit *units, size_t nunits,
                         const char *base)
{
    const char *suffix = v != 0 ? base : "";
    int64_t best = 1;

    if (v > 0) {
        for (size_t i = 0; i < nunits; i++) {
            if (units[i].mult > best && v % units[i].mult == 0) {
                best = units[i].mult;
                suffix = units[i].suffix;
            }
        }
    }
    snprintf(buf, cap, "%" PRId64 "%s", v / best, suffix);
}

static void format_number(char *buf, size_t cap, enum bb_opt_type type, int64_t v)
{
    if (type == BB_OPT_DURATION_MS) {
        format_units(buf, cap, v, duration_units, NELEM(duration_units), "ms");
    } else if (type == BB_OPT_BYTES) {
        format_units(buf, cap, v, byte_units, NELEM(byte_units), "");
    } else {
        snprintf(buf, cap, "%" PRId64, v);
    }
}

/* ---- secret files ------------------------------------------------------ */

/* Reads the first line of path (relative to dir unless absolute) into a new
 * string. Never puts the file's contents into err. */
static int secret_read(const struct bb_opt *o, const char *path, const struct where *w, char **out,
                       char *err, size_t errlen)
{
    char full[4096];
    char buf[SECRET_MAX + 1];
    const char *name = path;
    struct stat st;
    size_t len = 0;
    char *nl;
    int fd, rc = BB_ECONFIG;

    if (path[0] == '\0') {
        errf(err, errlen, w, "%s: expected the name of a file holding the secret", o->name);
        return BB_ECONFIG;
    }
    if (path[0] != '/' && w != NULL && w->dir != NULL) {
        int n = snprintf(full, sizeof(full), "%s/%s", w->dir, path);
        if (n < 0 || (size_t)n >= sizeof(full)) {
            errf(err, errlen, w, "%s: file name too long", o->name);
            return BB_ECONFIG;
        }
        name = full;
    }
    fd = open(name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        errf(err, errlen, w, "%s: cannot open secret file '%s': %s", o->name, name,
             strerror(errno));
        return BB_ECONFIG;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        errf(err, errlen, w, "%s: secret file '%s' is not a regular file", o->name, name);
        goto close_fd;
    }
    while (len < sizeof(buf) - 1) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            errf(err, errlen, w, "%s: cannot read secret file '%s': %s", o->name, name,
                 strerror(errno));
            goto wipe_buf;
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
        if (memchr(buf, '\n', len) != NULL) {
            break;
        }
    }
    buf[len] = '\0';
    nl = memchr(buf, '\n', len);
    if (nl == NULL && len == sizeof(buf) - 1) {
        errf(err, errlen, w, "%s: first line of secret file '%s' is longer than %d bytes", o->name,
             name, SECRET_MAX);
        goto wipe_buf;
    }
    if (nl != NULL) {
        *nl = '\0';
        len = (size_t)(nl - buf);
    }
    if (len > 0 && buf[len - 1] == '\r') {
        buf[--len] = '\0';
    }
    if (strlen(buf) != len) {
        errf(err, errlen, w, "%s: secret file '%s' contains a NUL byte", o->name, name);
        goto wipe_buf;
    }
    if (len == 0) {
        errf(err, errlen, w, "%s: secret file '%s' is empty", o->name, name);
        goto wipe_buf;
    }
    *out = strdup(buf);
    if (*out == NULL) {
        errf(err, errlen, w, "%s: out of memory", o->name);
        goto wipe_buf;
    }
    rc = 0;
wipe_buf:
    explicit_bzero(buf, sizeof(buf));
close_fd:
    close(fd);
    return rc;
}

/* ---- applying one value ------------------------------------------------ */

static bool has_control_chars(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c == 0x7F) {
            return true;
        }
    }
    return false;
}

static int check_bounds(const struct bb_opt *o, int64_t v, const struct where *w, char *err,
                        size_t errlen)
{
    char sv[32], smin[32], smax[32];

    if ((o->min == 0 && o->max == 0) || (v >= o->min && v <= o->max)) {
        return 0;
    }
    format_number(sv, sizeof(sv), o->type, v);
    format_number(smin, sizeof(smin), o->type, o->min);
    format_number(smax, sizeof(smax), o->type, o->max);
    errf(err, errlen, w, "%s: %s is out of range, expected %s to %s", o->name, sv, smin, smax);
    return BB_ECONFIG;
}

static int opt_apply(const struct bb_opt *o, void *target, const char *value, const struct where *w,
                     char *err, size_t errlen)
{
    int64_t v;
    int rc, b;
    char *s;

    switch (o->type) {
    case BB_OPT_INT:
        rc = parse_int(value, &v);
        if (rc == BB_ERANGE) {
            errf(err, errlen, w, "%s: '%s' does not fit in 64 bits", o->name, value);
            return BB_ECONFIG;
        }
        if (rc != 0) {
            errf(err, errlen, w, "%s: expected an integer, got '%s'", o->name, value);
            return BB_ECONFIG;
        }
        if (check_bounds(o, v, w, err, errlen) != 0) {
            return BB_ECONFIG;
        }
        *(int64_t *)field(target, o) = v;
        return 0;
    case BB_OPT_DURATION_MS:
    case BB_OPT_BYTES:
        if (o->type == BB_OPT_DURATION_MS) {
            rc = parse_units(value, duration_units, NELEM(duration_units), &v);
        } else {
            rc = parse_units(value, byte_units, NELEM(byte_units), &v);
        }
        if (rc == BB_ERANGE) {
            errf(err, errlen, w, "%s: '%s' is too large", o->name, value);
            return BB_ECONFIG;
        }
        if (rc != 0 && value[0] == '-') {
            errf(err, errlen, w, "%s: must not be negative, got '%s'", o->name, value);
            return BB_ECONFIG;
        }
        if (rc != 0 && o->type == BB_OPT_DURATION_MS) {
            errf(err, errlen, w, "%s: expected a duration like 500ms or 5s, got '%s'", o->name,
                 value);
            return BB_ECONFIG;
        }
        if (rc != 0) {
            errf(err, errlen, w, "%s: expected a size like 64kb or 16mb, got '%s'", o->name, value);
            return BB_ECONFIG;
        }
        if (check_bounds(o, v, w, err, errlen) != 0) {
            return BB_ECONFIG;
        }
        *(int64_t *)field(target, o) = v;
        return 0;
    case BB_OPT_BOOL:
        if (bb_parse_bool(value, &b) != 0) {
            errf(err, errlen, w, "%s: expected yes or no, got '%s'", o->name, value);
            return BB_ECONFIG;
        }
        *(bool *)field(target, o) = b != 0;
        return 0;
    case BB_OPT_STRING:
        if (has_control_chars(value)) {
            errf(err, errlen, w, "%s: control characters are not allowed", o->name);
            return BB_ECONFIG;
        }
        s = strdup(value);
        if (s == NULL) {
            errf(err, errlen, w, "%s: out of memory", o->name);
            return BB_ECONFIG;
        }
        free(*(char **)field(target, o));
        *(char **)field(target, o) = s;
        return 0;
    case BB_OPT_SECRET_FILE:
        if (secret_read(o, value, w, &s, err, errlen) != 0) {
            return BB_ECONFIG;
        }
        secret_free(*(char **)field(target, o));
        *(char **)field(target, o) = s;
        return 0;
    }
    errf(err, errlen, w, "%s: unknown option type %d", o->name, (int)o->type);
    return BB_ECONFIG;
}

/* ---- option lookup ----------------------------------------------------- */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[NAME_MAX_LEN + 1];

    if (la > NAME_MAX_LEN || lb > NAME_MAX_LEN) {
        return SIZE_MAX;
    }
    for (size_t j = 0; j <= lb; j++) {
        row[j] = j;
    }
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) {
                best = up + 1;
            }
            if (row[j - 1] + 1 < best) {
                best = row[j - 1] + 1;
            }
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static const struct bb_opt *opt_find(const struct bb_opt *opts, size_t n, const char *name,
                                     const struct where *w, char *err, size_t errlen)
{
    const struct bb_opt *near = NULL;
    size_t near_d = 3; /* suggest only names at most 2 edits away */

    for (size_t i = 0; i < n; i++) {
        if (strcmp(opts[i].name, name) == 0) {
            return &opts[i];
        }
    }
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(name, opts[i].name);
        if (d < near_d) {
            near_d = d;
            near = &opts[i];
        }
    }
    if (near != NULL) {
        errf(err, errlen, w, "unknown option '%s' (did you mean '%s'?)", name, near->name);
    } else {
        errf(err, errlen, w, "unknown option '%s'", name);
    }
    return NULL;
}

/* ---- public API -------------------------------------------------------- */

int bb_config_defaults(const struct bb_opt *opts, size_t n, void *target, char *err, size_t errlen)
{
    struct where w = {.path = "built-in default"};

    if (opts == NULL || target == NULL) {
        errf(err, errlen, NULL, "no option table or target");
        return BB_ECONFIG;
    }
    for (size_t i = 0; i < n; i++) {
        const struct bb_opt *o = &opts[i];

        if (o->name == NULL || o->name[0] == '\0') {
            errf(err, errlen, NULL, "option %zu has no name", i);
            return BB_ECONFIG;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(opts[j].name, o->name) == 0) {
                errf(err, errlen, NULL, "option '%s' is defined twice", o->name);
                return BB_ECONFIG;
            }
        }
        switch (o->type) {
        case BB_OPT_INT:
        case BB_OPT_DURATION_MS:
        case BB_OPT_BYTES:
            *(int64_t *)field(target, o) = 0;
            break;
        case BB_OPT_BOOL:
            *(bool *)field(target, o) = false;
            break;
        case BB_OPT_STRING:
        case BB_OPT_SECRET_FILE:
            *(char **)field(target, o) = NULL;
            break;
        default:
            errf(err, errlen, NULL, "option '%s' has unknown type %d", o->name, (int)o->type);
            return BB_ECONFIG;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (opts[i].def != NULL && opt_apply(&opts[i], target, opts[i].def, &w, err, errlen)) {
            return BB_ECONFIG;
        }
    }
    return 0;
}

int bb_config_set(const struct bb_opt *opts, size_t n, void *target, const char *name,
                  const char *value, char *err, size_t errlen)
{
    const struct bb_opt *o;

    if (opts == NULL || target == NULL || name == NULL || value == NULL) {
        errf(err, errlen, NULL, "missing option name or value");
        return BB_ECONFIG;
    }
    o = opt_find(opts, n, name, NULL, err, errlen);
    if (o == NULL) {
        return BB_ECONFIG;
    }
    return opt_apply(o, target, value, NULL, err, errlen);
}

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' ||
           c == '-' || c == '.';
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Splits one line in place. Returns 1 with *name and *value set, 0 for a
 * blank or comment line, or -1 with *why set. */
static int line_split(char *line, char **name, char **value, const char **why)
{
    char *p = line, *q, *end;
    bool blank_before;
    char sep;

    while (is_blank(*p)) {
        p++;
    }
    if (*p == '\0' || *p == '#') {
        return 0;
    }
    *name = p;
    while (is_name_char(*p)) {
        p++;
    }
    if (p == *name) {
        *why = "expected an option name";
        return -1;
    }
    sep = *p;
    if (sep != '\0' && sep != '=' && !is_blank(sep)) {
        *why = "invalid character in option name";
        return -1;
    }
    *p = '\0';
    if (sep != '\0') {
        p++;
    }
    blank_before = is_blank(sep);
    while (is_blank(*p)) {
        p++;
        blank_before = true;
    }
    if (sep != '=' && *p == '=') {
        p++;
        blank_before = false;
        while (is_blank(*p)) {
            p++;
            blank_before = true;
        }
    }
    if (*p == '\0' || (*p == '#' && blank_before)) {
        *why = "missing value";
        return -2;
    }
    if (*p == '"') {
        *value = q = ++p;
        for (;;) {
            if (*p == '\0') {
                *why = "unterminated quoted value";
                return -1;
            }
            if (*p == '"') {
                break;
            }
            if (*p == '\\') {
                if (p[1] != '"' && p[1] != '\\') {
                    *why = "unknown escape in quoted value (only \\\" and \\\\ are allowed)";
                    return -1;
                }
                p++;
            }
            *q++ = *p++;
        }
        end = p + 1;
    } else {
        *value = p;
        while (*p != '\0' && !is_blank(*p)) {
            p++;
        }
        q = end = p;
    }
    while (is_blank(*end)) {
        end++;
    }
    if (*end != '\0' && *end != '#') {
        *why = "unexpected text after the value (quote values that contain spaces)";
        return -1;
    }
    *q = '\0';
    return 1;
}

int bb_config_load_file(const struct bb_opt *opts, size_t n, void *target, const char *path,
                        char *err, size_t errlen)
{
    if (opts == NULL || target == NULL || path == NULL) {
        errf(err, errlen, NULL, "no option table, target or path");
        return BB_ECONFIG;
    }
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        struct where w = {.path = path};
        errf(err, errlen, &w, "cannot open: %s", strerror(errno));
        return BB_ECONFIG;
    }
    int rc = bb_config_load_stream(opts, n, target, f, path, err, errlen);
    fclose(f);
    return rc;
}

int bb_config_load_stream(const struct bb_opt *opts, size_t n, void *target, FILE *f,
                          const char *path, char *err, size_t errlen)
{
    struct where w = {.path = path};
    char *line = NULL, *dir = NULL, *slash;
    size_t linecap = 0;
    ssize_t len;
    int rc = BB_ECONFIG;

    if (opts == NULL || target == NULL || path == NULL || f == NULL) {
        errf(err, errlen, NULL, "no option table, target, path or stream");
        return BB_ECONFIG;
    }
    dir = strdup(path);
    if (dir == NULL) {
        errf(err, errlen, &w, "out of memory");
        return BB_ECONFIG;
    }
    slash = strrchr(dir, '/');
    if (slash == NULL) {
        w.dir = NULL;
    } else {
        if (slash == dir) {
            slash[1] = '\0';
        } else {
            *slash = '\0';
        }
        w.dir = dir;
    }

    errno = 0;
    while ((len = getline(&line, &linecap, f)) >= 0) {
        char *p = line, *name = NULL, *value = NULL;
        const char *why = NULL;
        const struct bb_opt *o;
        int split;

        w.line++;
        if (len > LINE_MAX_LEN) {
            errf(err, errlen, &w, "line longer than %d bytes", LINE_MAX_LEN);
            goto free_buffers;
        }
        if (strlen(line) != (size_t)len) {
            errf(err, errlen, &w, "NUL byte in line");
            goto free_buffers;
        }
        if (len > 0 && line[len - 1] == '\n') {
            line[--len] = '\0';
        }
        if (len > 0 && line[len - 1] == '\r') {
            line[--len] = '\0';
        }
        if (w.line == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0) {
            p += 3;
        }
        split = line_split(p, &name, &value, &why);
        if (split == 0) {
            continue;
        }
        if (split == -2) {
            errf(err, errlen, &w, "%s: %s", name, why);
            goto free_buffers;
        }
        if (split < 0) {
            errf(err, errlen, &w, "%s", why);
            goto free_buffers;
        }
        o = opt_find(opts, n, name, &w, err, errlen);
        if (o == NULL) {
            goto free_buffers;
        }
        if (opt_apply(o, target, value, &w, err, errlen) != 0) {
            goto free_buffers;
        }
    }
    if (ferror(f)) {
        w.line = 0;
        errf(err, errlen, &w, "read error: %s", strerror(errno));
        goto free_buffers;
    }
    rc = 0;
free_buffers:
    if (line != NULL) { /* a plain string option may still hold a credential */
        explicit_bzero(line, linecap);
    }
    free(line);
    free(dir);
    return rc;
}

static void dump_quoted(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\') {
            fputc('\\', out);
        }
        fputc(*s, out);
    }
    fputc('"', out);
}

size_t bb_config_diff(const struct bb_opt *opts, size_t n, const void *a, const void *b,
                      void (*fn)(const struct bb_opt *o, void *arg), void *arg)
{
    size_t changed = 0;
    for (size_t i = 0; i < n; i++) {
        const struct bb_opt *o = &opts[i];
        const void *fa = field_const(a, o), *fb = field_const(b, o);
        bool same;
        switch (o->type) {
        case BB_OPT_BOOL:
            same = *(const bool *)fa == *(const bool *)fb;
            break;
        case BB_OPT_STRING:
        case BB_OPT_SECRET_FILE: {
            const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
            same = (!sa && !sb) || (sa && sb && strcmp(sa, sb) == 0);
            break;
        }
        default:
            same = *(const int64_t *)fa == *(const int64_t *)fb;
            break;
        }
        if (!same) {
            changed++;
            if (fn) {
                fn(o, arg);
            }
        }
    }
    return changed;
}

void bb_config_dump(const struct bb_opt *opts, size_t n, const void *target, FILE *out)
{
    char num[32];

    if (opts == NULL || target == NULL || out == NULL) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct bb_opt *o = &opts[i];
        const void *f = field_const(target, o);

        if (o->help != NULL) {
            fputs("# ", out);
            for (const char *h = o->help; *h != '\0'; h++) {
                fputc(*h == '\n' || *h == '\r' ? ' ' : *h, out);
            }
            fputc('\n', out);
        }
        switch (o->type) {
        case BB_OPT_INT:
        case BB_OPT_DURATION_MS:
        case BB_OPT_BYTES:
            format_number(num, sizeof(num), o->type, *(const int64_t *)f);
            fprintf(out, "%s %s\n", o->name, num);
            break;
        case BB_OPT_BOOL:
            fprintf(out, "%s %s\n", o->name, *(const bool *)f ? "yes" : "no");
            break;
        case BB_OPT_STRING:
            if (*(char *const *)f == NULL) {
                fprintf(out, "# %s (not set)\n", o->name);
            } else {
                fprintf(out, "%s ", o->name);
                dump_quoted(out, *(char *const *)f);
                fputc('\n', out);
            }
            break;
        case BB_OPT_SECRET_FILE:
            /* The file name is not kept, only its contents: leave it commented out. */
            fprintf(out, "# %s %s\n", o->name,
                    *(char *const *)f == NULL ? "(not set)" : "<hidden>");
            break;
        }
        fputc('\n', out);
    }
}

void bb_config_free(const struct bb_opt *opts, size_t n, void *target)
{
    if (opts == NULL || target == NULL) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char **s = field(target, &opts[i]);

        if (opts[i].type == BB_OPT_STRING) {
            free(*s);
            *s = NULL;
        } else if (opts[i].type == BB_OPT_SECRET_FILE) {
            secret_free(*s);
            *s = NULL;
        }
    }
}

int bb_cmdline_parse(int argc, char **argv, struct bb_cmdline *cl)
{
    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"set", required_argument, NULL, 's'},
                                             {"check-config", no_argument, NULL, 'k'},
                                             {"dump-config", no_argument, NULL, 'd'},
                                             {"version", no_argument, NULL, 'v'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    memset(cl, 0, sizeof(*cl));
    cl->sets = calloc((size_t)argc + 1, sizeof(*cl->sets));
    if (!cl->sets) {
        return BB_ENOMEM;
    }
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            cl->config = optarg;
            break;
        case 's':
            cl->sets[cl->nsets++] = optarg;
            break;
        case 'k':
            cl->check_only = true;
            break;
        case 'd':
            cl->dump = true;
            break;
        case 'v':
            cl->version = true;
            break;
        case 'h':
            cl->help = true;
            break;
        default:
            return BB_EINVAL;
        }
    }
    return optind == argc ? BB_OK : BB_EINVAL;
}

void bb_cmdline_free(struct bb_cmdline *cl)
{
    free(cl->sets);
    cl->sets = NULL;
}

int bb_config_apply_sets(const struct bb_opt *opts, size_t n, void *target, const char *const *sets,
                         size_t nsets, char *err, size_t errlen)
{
    for (size_t i = 0; i < nsets; i++) {
        const char *eq = strchr(sets[i], '=');
        char name[128];
        if (!eq || (size_t)(eq - sets[i]) >= sizeof(name)) {
            snprintf(err, errlen, "--set expects NAME=VALUE, got '%s'", sets[i]);
            return BB_ECONFIG;
        }
        memcpy(name, sets[i], (size_t)(eq - sets[i]));
        name[eq - sets[i]] = '\0';
        char why[384];
        if (bb_config_set(opts, n, target, name, eq + 1, why, sizeof(why)) != BB_OK) {
            snprintf(err, errlen, "--set %s: %s", name, why);
            return BB_ECONFIG;
        }
    }
    return BB_OK;
}
