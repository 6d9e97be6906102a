#!/usr/bin/env bash
# Set up trimtab on a fresh Debian machine: system data packages, a virtual environment in
# .venv, torch (CPU) and the package with its examples and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fashion-MNIST for the fashion-cnn example comes from Debian.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
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
