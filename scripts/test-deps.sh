#!/usr/bin/env bash
# System packages the build and the tests need, from Debian (idempotent, no-ops when present):
#   node  — Node.js + npm, to build the JupyterLab extension during `pip install` (any run)
#   chromium — Debian's Chromium for the browser tests (never a downloaded browser build)
# `bash scripts/test-deps.sh node` installs only Node (what `make install` needs).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
updated=""
apt_install() {
  if [ -z "$updated" ]; then $SUDO apt-get update -qq; updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
echo "node $(node --version), npm $(npm --version)"
if [ "${1:-all}" = "node" ]; then exit 0; fi
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
/usr/bin/chromium --version
