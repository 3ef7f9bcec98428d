#!/bin/sh
# Installs what eventsrc needs to build, test and benchmark on Debian 12.
# Run as root (or through sudo).
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential cmake pkg-config \
    liblmdb-dev libsodium-dev libjansson-dev libpq-dev libcmocka-dev libsqlite3-dev \
    postgresql postgresql-contrib >/dev/null
echo "install-deps: done"
