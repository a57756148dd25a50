#!/usr/bin/env bash
# Load benchmark against real peers, on this machine, in one run (see bench/load.py).
#
#   bench/http.sh [--duration 10] [--connections 1,4,16] [--write BENCHMARKS.md]
#
# Installs what is missing (wrk and nginx from Debian; thumbor into a virtualenv and
# ipx with npm, both under target/bench-peers), builds progimage in release mode, and
# runs bench/load.py with the arguments given. Reads the photos from ../shared/corpus
# unless --corpus says otherwise.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/target/bench-peers"
mkdir -p "$peers"

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq wrk nginx
fi

if [ ! -x "$peers/thumbor/bin/thumbor" ]; then
    python3 -m venv "$peers/thumbor"
    "$peers/thumbor/bin/pip" install --quiet 'thumbor==7.8.0'
fi

if [ ! -x "$peers/ipx/node_modules/.bin/ipx" ]; then
    mkdir -p "$peers/ipx"
    (cd "$peers/ipx" && npm init -y >/dev/null && npm install --silent 'ipx@3.1.1')
fi

(cd "$root" && cargo build --release --bin progimage)
exec python3 "$root/bench/load.py" --peers "$peers" "$@"
