#!/bin/sh
# make-acl.sh: writes the Redis aclfile for buurtbus from users.acl.in and
# one password file per user. Only SHA-256 hashes of the passwords reach the
# aclfile; the passwords never appear on a command line (they go through
# pipes) and are never printed.
#
#   make-acl.sh [-n] [-t TEMPLATE] SECRETS_DIR OUT
#
# SECRETS_DIR holds broker.password, worker.password, ctl.password,
# app.password and, optionally, admin.password (the buurtbus-admin user is
# left out without it). Each file's first line is the password, as the
# programs read it (redis_password_file, buurtbusctl --password-file): a
# trailing CR/LF is not part of it.
#   -n           first create the missing password files (32 random bytes,
#                base64; mode 0600) for broker, worker, ctl and app
#   -t TEMPLATE  another template (default: users.acl.in next to this script)
# OUT is written with mode 0640 (a temporary file renamed over it), so a
# running Redis never reads half a file. Install it where redis.conf's
# aclfile points, then ACL LOAD (or restart Redis). See README.md.
set -eu

usage() {
    echo "usage: make-acl.sh [-n] [-t TEMPLATE] SECRETS_DIR OUT" >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
template=$here/users.acl.in
create=0
while getopts nt: opt; do
    case $opt in
    n) create=1 ;;
    t) template=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || usage
secrets=$1
out=$2
[ -d "$secrets" ] || { echo "make-acl.sh: $secrets: not a directory" >&2; exit 1; }
[ -r "$template" ] || { echo "make-acl.sh: $template: cannot read" >&2; exit 1; }

umask 077
if [ "$create" = 1 ]; then
    for who in broker worker ctl app; do
        f=$secrets/$who.password
        if [ ! -e "$f" ]; then
            head -c 32 /dev/urandom | base64 | tr -d '\n=' >"$f"
            echo >>"$f"
            echo "make-acl.sh: created $f" >&2
        fi
    done
fi

# The #<sha256> rule for a password file, on stdout; empty if the file is
# missing and the user optional.
hash_rule() {
    f=$secrets/$1.password
    if [ ! -e "$f" ]; then
        [ "$2" = optional ] && return 0
        echo "make-acl.sh: $f: missing (create it, or run with -n)" >&2
        return 1
    fi
    [ -r "$f" ] || { echo "make-acl.sh: $f: cannot read" >&2; return 1; }
    # The first line without CR/LF, never through argv.
    n=$(head -n 1 "$f" | tr -d '\r\n' | wc -c)
    if [ "$n" -lt 16 ]; then
        echo "make-acl.sh: $f: the password is shorter than 16 bytes" >&2
        return 1
    fi
    if head -n 1 "$f" | tr -d '\r\n' | grep -q '[[:space:]]'; then
        echo "make-acl.sh: $f: the password holds white space" >&2
        return 1
    fi
    h=$(head -n 1 "$f" | tr -d '\r\n' | sha256sum | cut -c1-64)
    echo "#$h"
}

broker=$(hash_rule broker required)
worker=$(hash_rule worker required)
ctl=$(hash_rule ctl required)
app=$(hash_rule app required)
admin=$(hash_rule admin optional)

tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# Comments and blank lines out; indented lines joined to the user line
# above; placeholders replaced; a user whose hash is empty (admin without
# its file) left out.
awk '
    function flush() {
        if (line != "") print line
        line = ""
    }
    /^[ \t]*#/ || /^[ \t]*$/ { next }
    /^[ \t]/ { sub(/^[ \t]+/, ""); line = line " " $0; next }
    { flush(); line = $0 }
    END { flush() }
' "$template" | awk -v broker="$broker" -v worker="$worker" -v ctl="$ctl" -v app="$app" \
    -v admin="$admin" '
    {
        line = $0; skip = 0
        n = split("BROKER WORKER CTL APP ADMIN", names, " ")
        vals["BROKER"] = broker; vals["WORKER"] = worker; vals["CTL"] = ctl
        vals["APP"] = app; vals["ADMIN"] = admin
        for (i = 1; i <= n; i++) {
            p = "@" names[i] "@"
            if (index(line, p) == 0) continue
            if (vals[names[i]] == "") { skip = 1; break }
            gsub(p, vals[names[i]], line)
        }
        if (skip) next
        if (line ~ /@[A-Z]+@/) {
            print "make-acl.sh: unknown placeholder in: " line > "/dev/stderr"
            exit 1
        }
        print line
    }
' >"$tmp"
chmod 0640 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "make-acl.sh: wrote $out ($(wc -l <"$out") users)" >&2
