#!/usr/bin/env bash
# Set up trimtab on a fresh Debian machine: system data packages, a virtual environment in
# .venv, torch (CPU) and the package with its examples and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_UPDATED=""
apt_install() {
    [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq && APT_UPDATED=1; }
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Fashion-MNIST for the fashion-cnn example comes from Debian.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    apt_install dataset-fashion-mnist
fi
# Chromium for the report's browser test (tests/report/test_report_browser.py, driven by Playwright
# with this browser: Playwright's own browser download is not used). Optional: without it that test
# is skipped, so a machine where apt cannot install it still sets up.
if ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium || echo "warning: could not install Debian's chromium; the report's browser test will be skipped" >&2
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, pinned: this version is a local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
$PIP install -q -e ".[examples,dev]"
# foolbox is only needed for its 20 labelled ImageNet photos; its own dependencies are not.
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('foolbox')" 2>/dev/null || $PIP install -q --no-deps foolbox
