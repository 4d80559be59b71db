#!/usr/bin/env bash
# Installs the Debian 12 packages buurtbus needs to build, test and run,
# when they are missing. Sourced by deploy/quickstart.sh and tests/run.sh.
# Needs root (or sudo) only when something is missing.
set -euo pipefail

BB_PACKAGES=(
  build-essential cmake pkg-config
  libevent-dev libhiredis-dev libprotobuf-c-dev protobuf-c-compiler libzstd-dev
  libck-dev libjson-c-dev libcmocka-dev libcurl4-openssl-dev libssl-dev
  redis-server redis-tools tzdata curl python3
  python3-h2 python3-cryptography libnghttp2-dev openssl help2man
  libsystemd-dev python3-yaml
)

bb_install_deps() {
  local missing=()
  for p in "${BB_PACKAGES[@]}" "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "installing: ${missing[*]}" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  bb_install_deps "$@"
fi
