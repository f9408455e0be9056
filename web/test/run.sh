#!/usr/bin/env bash
# Builds and tests the map page: unit tests of the pure modules and the socket, then the
# browser end-to-end check against the real server. Works on a fresh machine with Node.js 20
# and npm:
#   - installs Chromium from Debian when /usr/bin/chromium is missing;
#   - runs `npm ci` in web/ when node_modules is missing;
#   - builds the server with cargo unless BEACON_BIN names a binary to test.
# Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
web="$(dirname "$here")"
root="$(dirname "$web")"

step() { printf '\n== %s\n' "$*"; }

if [ ! -x /usr/bin/chromium ]; then
  step "installing Chromium"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium
fi

cd "$web"
if [ ! -d node_modules ]; then
  step "npm ci"
  npm ci --no-audit --no-fund
fi

step "building web/dist"
npm run build

step "unit tests"
node --test test/

if [ -z "${BEACON_BIN:-}" ]; then
  step "building the server"
  (cd "$root" && cargo build --bin beacon)
fi

step "end-to-end"
node test/e2e.mjs
