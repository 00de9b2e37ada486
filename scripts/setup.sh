#!/usr/bin/env bash
# Sets up everything lk_ablate needs on a Debian machine, idempotently:
#   - Debian packages (when root): Fashion-MNIST, FFCV's build libraries, SLURM + munge for the tests
#   - .venv/ in the repo root with lk_ablate and all extras, reinstalled only when pyproject.toml, the lock or this
#     script change. On CPython 3.11 / Linux x86-64 it installs requirements-lock.txt, the exact versions the
#     README's numbers were made with (docs/reproducibility.md); elsewhere pyproject.toml's ranges, with a warning.
#     LK_ABLATE_NO_LOCK=1 installs the ranges everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="dataset-fashion-mnist libopencv-dev libturbojpeg0-dev pkg-config slurm-wlm munge"
missing=()
if command -v dpkg >/dev/null 2>&1; then
  for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] not root: please install the Debian packages ${missing[*]} (FFCV needs the -dev ones to build)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.lk_ablate-installed
LOCK=requirements-lock.txt
want=$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -d' ' -f1)
# The lock holds CPython 3.11 wheels for Linux x86-64 (torch's CUDA build and its nvidia-* libraries among them).
use_lock=$(.venv/bin/python -c 'import platform, sys; print(int(sys.version_info[:2] == (3, 11)
    and sys.platform == "linux" and platform.machine() == "x86_64"))')
if [ -n "${LK_ABLATE_NO_LOCK:-}" ]; then use_lock=0; fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing lk_ablate and its dependencies into .venv (first time: a few minutes)"
  if [ "$use_lock" = 1 ]; then
    .venv/bin/python -m pip install -q 'pip==26.3'
    .venv/bin/python -m pip install -q -r "$LOCK"
    # lk_ablate itself: everything it needs is in the lock already
    .venv/bin/python -m pip install -q --no-deps -e '.[all,dev]'
    .venv/bin/python -m pip check
  else
    echo "[setup] note: $LOCK is for CPython 3.11 on Linux x86-64 ($(.venv/bin/python --version), $(uname -m) here" \
         "or LK_ABLATE_NO_LOCK set): installing pyproject.toml's version ranges; numbers may differ from the" \
         "README's in single images (docs/reproducibility.md)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[all,dev]'
  fi
  echo "$want" > "$stamp"
else
  echo "[setup] .venv is up to date"
fi
