#!/usr/bin/env bash
# System packages the tests need: Debian's Chromium for the browser tests (never a
# downloaded browser build). Idempotent; a no-op when chromium is already installed.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version
