#!/usr/bin/env bash
# Make ./.venv usable: reuse it when it is there, else build the locked environment.
# The ~7 GB install lives in a cache keyed by the hash of requirements.lock, so clones on one machine
# (and CI after a session) share it; a fresh machine builds it from nothing. The project itself is
# installed editable into it from this clone, which registers MeCo's llm-foundry entry points.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
lock=requirements.lock
# Keyed by the lock alone: editing pyproject.toml (entry points, metadata) must not rebuild 7 GB.
key=$( (python3.11 --version; cat "$lock") | sha256sum | cut -c1-16)
cache=${MECO_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meco-venv}
target="$cache/py311-$key"
stamp="$target/.meco-complete"
# pip's find-links warnings about absent local mirrors are noise; real errors still show (and fail).
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

if [ ! -f "$stamp" ]; then
  echo "[venv] building the locked environment in $target (about 7 GB, a few minutes; done once per lock)"
  start=$(date +%s)
  # Built in place; the stamp is written last, so an interrupted build is started over.
  rm -rf "$target"
  mkdir -p "$cache"
  python3.11 -m venv "$target"
  "$target/bin/python" -m pip install -q --upgrade "pip==26.3" "setuptools==80.9.0" wheel 2>&1 | quiet
  # --no-deps over a complete lock: exactly the tested versions, no resolver run.
  "$target/bin/python" -m pip install -q --no-deps -r "$lock" 2>&1 | quiet
  "$target/bin/python" -m pip check
  echo "[venv] built in $(( $(date +%s) - start ))s, $(du -sh "$target" | cut -f1)"
  touch "$stamp"
fi

if [ -L .venv ] || [ ! -e .venv ]; then
  ln -sfn "$target" .venv
fi

# (Re)install this clone editable when the venv points at another clone or the entry points changed.
marker="$target/.meco-project"
want="$here $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
  log=$(mktemp)
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >"$log" 2>&1 || { cat "$log"; exit 1; }
  rm -f "$log"
  echo "$want" > "$marker"
fi
