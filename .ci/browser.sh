#!/usr/bin/env bash
# Install what the web interface's browser tests need (tests/integration/test_ui_browser.py):
# Debian's Chromium (Playwright drives it through executable_path; Playwright never downloads a
# browser here) and axe-core from npm for the accessibility audit, in /var/tmp/postwise-axe.
# Idempotent: nothing is installed when it is there already.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v chromium >/dev/null 2>&1; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
echo "browser: $(chromium --version 2>/dev/null | head -1)"

AXE_DIR=/var/tmp/postwise-axe
if [ ! -f "$AXE_DIR/node_modules/axe-core/axe.min.js" ]; then
    mkdir -p "$AXE_DIR"
    (cd "$AXE_DIR" && npm install --no-audit --no-fund --silent axe-core@4 >/dev/null)
fi
echo "axe-core: $(node -p "require('$AXE_DIR/node_modules/axe-core/package.json').version")"
