#!/usr/bin/env bash
# The system packages of the test suite, in one place: `make test` and
# .ci/run both call this. The report's browser test
# (tests/test_cli.py::test_the_report_in_a_real_browser) drives Debian's
# headless Chromium through chromedriver. Installs them when missing, as
# root or through passwordless sudo; where neither works, stops with one
# line naming the command to run. The test itself never skips.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
PACKAGES="chromium chromium-driver"

if [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "make test needs $PACKAGES for the browser test (missing: $CHROMIUM or $CHROMEDRIVER); run: sudo apt-get install -y $PACKAGES" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs Chromium at $CHROMIUM and chromedriver at $CHROMEDRIVER for the browser test, and this system has no apt-get: install them with its package manager" >&2
    exit 1
fi
echo "installing $PACKAGES (the browser test's system packages)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PACKAGES
