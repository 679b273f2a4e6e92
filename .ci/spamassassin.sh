#!/usr/bin/env bash
# Install SpamAssassin for the deliverability tests (tests/core/compliance/test_spamassassin.py).
#
# Debian's `spamassassin` package ships its rules, so `spamassassin -L -t` (local rules only, no
# network tests) works straight after installing: no sa-update and no spamd are needed.
# Idempotent: nothing is installed when the command is already there.
set -euo pipefail

if command -v spamassassin >/dev/null 2>&1; then
    echo "spamassassin: $(spamassassin -V | head -1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends spamassassin
echo "spamassassin: $(spamassassin -V | head -1)"
