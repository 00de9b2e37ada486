#!/usr/bin/env bash
# Sets up everything lk_ablate needs on a Debian machine, idempotently:
#   - Debian packages (when root): Fashion-MNIST, FFCV's build libraries, SLURM + munge for the tests
#   - .venv/ in the repo root with lk_ablate and all extras, reinstalled only when pyproject.toml changes
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
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing lk_ablate and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[all,dev]'
  echo "$want" > "$stamp"
else
  echo "[setup] .venv is up to date"
fi
